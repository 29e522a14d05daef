//! FIFO plumbing: containerd's stdio FIFOs of one process on one side, the agent's stdio
//! streams (one connection per stream, one for both directions of a terminal) on the other.
//!
//! - stdout/stderr FIFOs are opened read-write (Linux): opening never blocks, and a
//!   containerd restart (reader gone for a while) does not break the copy;
//! - the stdin FIFO is opened read-only in a blocking thread: that open waits for
//!   containerd's writer, and EOF then really means the writer closed. [`ProcessIo::shutdown`]
//!   releases an open that is still waiting by opening the FIFO for writing itself;
//! - output streams are always attached, to a FIFO or to a sink: the agent keeps unread
//!   output in the guest and the process would block once that buffer is full.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_sandbox::{ProcessRef, Sandbox, SandboxError, StreamKind};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// containerd's FIFOs of one process (`None`: not wanted) and its terminal mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub terminal: bool,
}

#[derive(Debug, Error)]
pub enum StdioError {
    #[error("cannot open the FIFO {path}")]
    Fifo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach the {stream:?} stream")]
    Agent {
        stream: StreamKind,
        #[source]
        source: SandboxError,
    },
}

/// Opens the agent's end of one stream of one process.
#[async_trait]
pub trait StreamOpener: Send + Sync {
    async fn open(&self, stream: StreamKind) -> Result<UnixStream, StdioError>;
}

/// The real opener: a process in a sandbox.
pub struct SandboxStreams<'a> {
    pub sandbox: &'a Sandbox,
    pub process: ProcessRef,
}

#[async_trait]
impl StreamOpener for SandboxStreams<'_> {
    async fn open(&self, stream: StreamKind) -> Result<UnixStream, StdioError> {
        self.sandbox
            .open_stdio(&self.process, stream)
            .await
            .map_err(|source| StdioError::Agent { stream, source })
    }
}

/// The running copies of one process.
#[derive(Debug)]
pub struct ProcessIo {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    stdin_path: Option<PathBuf>,
}

/// Attaches every stream of a process and starts copying. On error nothing keeps running.
pub async fn connect(
    paths: &StdioPaths,
    opener: &dyn StreamOpener,
) -> Result<ProcessIo, StdioError> {
    let mut io = ProcessIo {
        outputs: Vec::new(),
        stdin: None,
        stdin_path: paths.stdin.clone(),
    };
    let result = connect_into(&mut io, paths, opener).await;
    match result {
        Ok(()) => Ok(io),
        Err(e) => {
            io.shutdown();
            Err(e)
        }
    }
}

async fn connect_into(
    io: &mut ProcessIo,
    paths: &StdioPaths,
    opener: &dyn StreamOpener,
) -> Result<(), StdioError> {
    if paths.terminal {
        let tty = opener.open(StreamKind::Tty).await?;
        let (from_guest, to_guest) = tty.into_split();
        let out = open_output(paths.stdout.as_deref())?;
        io.outputs.push(tokio::spawn(copy_out(from_guest, out)));
        if let Some(path) = &paths.stdin {
            // A terminal's input ends with CloseIO (^D in the guest), not by closing the
            // connection: keep the write half open after the FIFO's EOF.
            io.stdin = Some(tokio::spawn(copy_in(path.clone(), to_guest, false)));
        }
        return Ok(());
    }
    if let Some(path) = &paths.stdin {
        let stream = opener.open(StreamKind::Stdin).await?;
        io.stdin = Some(tokio::spawn(copy_in(path.clone(), stream, true)));
    }
    for (kind, path) in [
        (StreamKind::Stdout, &paths.stdout),
        (StreamKind::Stderr, &paths.stderr),
    ] {
        let stream = opener.open(kind).await?;
        let out = open_output(path.as_deref())?;
        io.outputs.push(tokio::spawn(copy_out(stream, out)));
    }
    Ok(())
}

type Output = Box<dyn AsyncWrite + Send + Unpin>;

fn open_output(path: Option<&Path>) -> Result<Output, StdioError> {
    match path {
        None => Ok(Box::new(tokio::io::sink())),
        Some(path) => pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(path)
            .map(|s| Box::new(s) as Output)
            .map_err(|source| StdioError::Fifo {
                path: path.to_path_buf(),
                source,
            }),
    }
}

async fn copy_out(mut from: impl AsyncRead + Unpin, mut to: Output) {
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        log::debug!("output copy ended: {e}");
    }
    let _ = to.flush().await;
}

async fn copy_in(path: PathBuf, mut to: impl AsyncWrite + Unpin, close_after: bool) {
    let opened = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
        })
        .await
    };
    let file = match opened {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            log::warn!("cannot open stdin FIFO {}: {e}", path.display());
            return;
        }
        Err(_) => return,
    };
    let mut from = match pipe::Receiver::from_file(file) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("stdin {} is not a FIFO: {e}", path.display());
            return;
        }
    };
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        log::debug!("stdin copy ended: {e}");
    }
    if close_after {
        let _ = to.shutdown().await;
    }
}

impl ProcessIo {
    /// Waits until the process's output streams have been copied to the end (the agent
    /// closes them when the process and its children closed theirs), at most `limit`.
    /// Returns whether they finished.
    pub async fn wait_output(&mut self, limit: Duration) -> bool {
        let all = async {
            for h in &mut self.outputs {
                let _ = h.await;
            }
        };
        let done = tokio::time::timeout(limit, all).await.is_ok();
        self.outputs.clear();
        done
    }

    /// Waits until stdin has been forwarded to its end (containerd closed its writer), at
    /// most `limit`. Returns whether it has.
    pub async fn wait_stdin(&mut self, limit: Duration) -> bool {
        match &mut self.stdin {
            None => true,
            Some(h) => {
                let done = tokio::time::timeout(limit, h).await.is_ok();
                if done {
                    self.stdin = None;
                }
                done
            }
        }
    }

    /// Stops every copy and releases a stdin FIFO open that still waits for a writer.
    pub fn shutdown(&mut self) {
        for h in self.outputs.drain(..) {
            h.abort();
        }
        if let Some(h) = self.stdin.take() {
            h.abort();
            if let Some(path) = &self.stdin_path {
                release_fifo_reader(path);
            }
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens `path` for writing without blocking and closes it again: a reader blocked in
/// open(2) on the FIFO returns (and then reads EOF). Fails harmlessly (ENXIO) when no
/// reader waits.
fn release_fifo_reader(path: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;

    /// Hands out one end of a socket pair per stream and keeps the other for the test.
    #[derive(Default)]
    struct FakeAgent {
        guest_ends: Mutex<HashMap<&'static str, UnixStream>>,
    }

    fn name(k: StreamKind) -> &'static str {
        match k {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Tty => "tty",
        }
    }

    impl FakeAgent {
        fn take(&self, k: &str) -> UnixStream {
            self.guest_ends.lock().unwrap().remove(k).unwrap()
        }
    }

    #[async_trait]
    impl StreamOpener for FakeAgent {
        async fn open(&self, stream: StreamKind) -> Result<UnixStream, StdioError> {
            let (host, guest) = UnixStream::pair().unwrap();
            self.guest_ends.lock().unwrap().insert(name(stream), guest);
            Ok(host)
        }
    }

    fn mkfifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        p
    }

    /// containerd's side of a FIFO: a reader of an output FIFO.
    async fn read_fifo(path: PathBuf) -> String {
        let mut r = pipe::OpenOptions::new().open_receiver(&path).unwrap();
        let mut buf = Vec::new();
        // The shim's read-write handle never gives EOF: read what is expected.
        let mut chunk = [0u8; 64];
        loop {
            let n = tokio::time::timeout(Duration::from_millis(300), r.read(&mut chunk)).await;
            match n {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        String::from_utf8(buf).unwrap()
    }

    #[tokio::test]
    async fn pipes_copy_all_three_streams_and_stdin_eof_reaches_the_agent() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = StdioPaths {
            stdin: Some(mkfifo(tmp.path(), "in")),
            stdout: Some(mkfifo(tmp.path(), "out")),
            stderr: Some(mkfifo(tmp.path(), "err")),
            terminal: false,
        };
        let agent = FakeAgent::default();
        let mut io = connect(&paths, &agent).await.unwrap();

        // containerd writes stdin and closes it.
        let stdin_path = paths.stdin.clone().unwrap();
        let writer = tokio::task::spawn_blocking(move || {
            std::fs::write(stdin_path, b"hello guest").unwrap();
        });
        let mut guest_stdin = agent.take("stdin");
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(5), guest_stdin.read_to_string(&mut got))
            .await
            .expect("stdin EOF reaches the agent")
            .unwrap();
        assert_eq!(got, "hello guest");
        writer.await.unwrap();

        // The process writes output and exits: the agent closes the streams.
        let out_reader = tokio::spawn(read_fifo(paths.stdout.clone().unwrap()));
        let err_reader = tokio::spawn(read_fifo(paths.stderr.clone().unwrap()));
        let mut guest_out = agent.take("stdout");
        let mut guest_err = agent.take("stderr");
        guest_out.write_all(b"to stdout").await.unwrap();
        guest_err.write_all(b"to stderr").await.unwrap();
        drop(guest_out);
        drop(guest_err);
        assert!(io.wait_output(Duration::from_secs(5)).await);
        assert_eq!(out_reader.await.unwrap(), "to stdout");
        assert_eq!(err_reader.await.unwrap(), "to stderr");
        io.shutdown();
    }

    #[tokio::test]
    async fn a_terminal_uses_one_stream_both_ways() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = StdioPaths {
            stdin: Some(mkfifo(tmp.path(), "in")),
            stdout: Some(mkfifo(tmp.path(), "out")),
            stderr: None,
            terminal: true,
        };
        let agent = FakeAgent::default();
        let mut io = connect(&paths, &agent).await.unwrap();
        assert_eq!(agent.guest_ends.lock().unwrap().len(), 1);
        let mut tty = agent.take("tty");

        let stdin_path = paths.stdin.clone().unwrap();
        let writer = tokio::task::spawn_blocking(move || {
            std::fs::write(stdin_path, b"ls\n").unwrap();
        });
        let mut buf = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), tty.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ls\n");
        writer.await.unwrap();

        let out_reader = tokio::spawn(read_fifo(paths.stdout.clone().unwrap()));
        tty.write_all(b"bin etc\r\n").await.unwrap();
        drop(tty);
        assert!(io.wait_output(Duration::from_secs(5)).await);
        assert_eq!(out_reader.await.unwrap(), "bin etc\r\n");
    }

    #[tokio::test]
    async fn output_without_a_fifo_is_drained() {
        let agent = FakeAgent::default();
        let mut io = connect(&StdioPaths::default(), &agent).await.unwrap();
        let mut out = agent.take("stdout");
        // More than a socket buffer: only a reader on the other side lets this finish.
        let big = vec![b'x'; 4 << 20];
        tokio::time::timeout(Duration::from_secs(10), out.write_all(&big))
            .await
            .expect("output is drained")
            .unwrap();
        drop(out);
        drop(agent.take("stderr"));
        assert!(io.wait_output(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn shutdown_releases_a_stdin_fifo_nobody_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let stdin = mkfifo(tmp.path(), "in");
        let paths = StdioPaths {
            stdin: Some(stdin.clone()),
            ..Default::default()
        };
        let agent = FakeAgent::default();
        let mut io = connect(&paths, &agent).await.unwrap();
        // Let the blocking open start waiting for a writer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            threads_in_fifo_open() > 0,
            "the stdin open should be waiting"
        );
        io.shutdown();
        // The blocked open(2) returns and the FIFO is closed again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while threads_in_fifo_open() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a thread still waits in open(2) on the stdin FIFO"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // No reader is left: a non-blocking writer gets ENXIO.
        let err = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&stdin)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENXIO));
    }

    /// Threads of this process blocked opening a FIFO (kernel wait channel).
    fn threads_in_fifo_open() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("wchan"))
                    .is_ok_and(|w| w.trim() == "wait_for_partner")
            })
            .count()
    }

    #[tokio::test]
    async fn a_missing_output_fifo_is_an_error_naming_it() {
        let paths = StdioPaths {
            stdout: Some("/nonexistent/out".into()),
            ..Default::default()
        };
        let agent = FakeAgent::default();
        match connect(&paths, &agent).await {
            Err(StdioError::Fifo { path, .. }) => assert_eq!(path, Path::new("/nonexistent/out")),
            other => panic!("{other:?}"),
        }
    }
}
