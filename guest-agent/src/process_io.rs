//! The agent's side of one process's stdio: pipes (or a pty master) created
//! before the process starts, and attached to host connections later.
//!
//! Output is not read until the host attaches a stream: it waits in the pipe
//! (enlarged to [`PIPE_BUFFER`]) or the pty buffer, and the process blocks when
//! that is full. So nothing written before the host attaches is lost, and a
//! slow host slows the process instead of growing agent memory.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bulkhead_protocol::stdio::{AttachStatus, StreamKind};
use bulkhead_protocol::types::WinSize;
use log::debug;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::fd_stream::FdStream;

/// Requested size of each output pipe: what a process may write before the
/// host attaches without blocking.
pub const PIPE_BUFFER: i32 = 1 << 20;

/// After CloseStdin on an attached stream, input still arriving within this
/// idle time is delivered before the EOF.
const STDIN_DRAIN_IDLE: Duration = Duration::from_millis(100);

/// The ends the container process gets (stdin, stdout, stderr).
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

enum Stdin {
    /// Not requested, or closed.
    Closed,
    /// Write end, waiting for the host to attach.
    Pending(OwnedFd),
    /// A copy task owns the write end; notify it to close.
    Attached,
}

enum Kind {
    Pipes {
        stdin: Stdin,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    Tty {
        master: Arc<OwnedFd>,
        attached: bool,
    },
}

pub struct ProcessIo {
    kind: Mutex<Kind>,
    close_stdin: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn open_dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

impl ProcessIo {
    /// Pipes for a non-tty process; stdin is /dev/null unless requested.
    pub fn pipes(want_stdin: bool) -> io::Result<(Self, ChildStdio)> {
        let (stdin_child, stdin) = if want_stdin {
            let (r, w) = pipe()?;
            (r, Stdin::Pending(w))
        } else {
            (open_dev_null()?, Stdin::Closed)
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&out_r, &err_r] {
            // Best effort: the default 64 KiB still works, just blocks sooner.
            // SAFETY: fcntl on an fd we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BUFFER) };
        }
        let io = ProcessIo {
            kind: Mutex::new(Kind::Pipes {
                stdin,
                stdout: Some(out_r),
                stderr: Some(err_r),
            }),
            close_stdin: Arc::new(Notify::new()),
        };
        Ok((
            io,
            ChildStdio {
                stdin: stdin_child,
                stdout: out_w,
                stderr: err_w,
            },
        ))
    }

    /// A tty process: everything goes through the pty master.
    pub fn tty(master: OwnedFd) -> Self {
        ProcessIo {
            kind: Mutex::new(Kind::Tty {
                master: Arc::new(master),
                attached: false,
            }),
            close_stdin: Arc::new(Notify::new()),
        }
    }

    /// Reserves the process stream `stream` for one connection; each stream
    /// can be claimed once. Run the claim with [`Claim::spawn`].
    pub fn claim(&self, stream: StreamKind) -> Result<Claim, AttachStatus> {
        let mut kind = lock(&self.kind);
        match (&mut *kind, stream) {
            (Kind::Pipes { stdout, .. }, StreamKind::Stdout) => {
                let fd = stdout.take().ok_or(AttachStatus::Unavailable)?;
                Ok(Claim::Output(fd, "stdout"))
            }
            (Kind::Pipes { stderr, .. }, StreamKind::Stderr) => {
                let fd = stderr.take().ok_or(AttachStatus::Unavailable)?;
                Ok(Claim::Output(fd, "stderr"))
            }
            (Kind::Pipes { stdin, .. }, StreamKind::Stdin) => {
                let Stdin::Pending(fd) = std::mem::replace(stdin, Stdin::Attached) else {
                    return Err(AttachStatus::Unavailable);
                };
                Ok(Claim::Stdin(fd, Arc::clone(&self.close_stdin)))
            }
            (Kind::Tty { master, attached }, StreamKind::Tty) if !*attached => {
                *attached = true;
                Ok(Claim::Tty(Arc::clone(master)))
            }
            _ => Err(AttachStatus::Unavailable),
        }
    }

    /// EOF on the process's stdin. Pipes: the write end closes (after input
    /// already sent on an attached stream). Tty: the terminal's EOF
    /// character (^D) is written, which ends input for a canonical-mode reader.
    pub fn close_stdin(&self) -> io::Result<()> {
        let mut kind = lock(&self.kind);
        match &mut *kind {
            Kind::Pipes { stdin, .. } => {
                if let Stdin::Attached = stdin {
                    self.close_stdin.notify_one();
                }
                *stdin = Stdin::Closed;
                Ok(())
            }
            Kind::Tty { master, .. } => {
                let eof = [4u8];
                // SAFETY: writes one byte from a valid buffer.
                let n = unsafe { libc::write(master.as_raw_fd(), eof.as_ptr().cast(), 1) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Resizes the terminal; `Ok(false)` when the process has no tty.
    pub fn resize(&self, size: WinSize) -> io::Result<bool> {
        let kind = lock(&self.kind);
        let Kind::Tty { master, .. } = &*kind else {
            return Ok(false);
        };
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
}

/// A process stream reserved for one host connection.
pub enum Claim {
    Output(OwnedFd, &'static str),
    Stdin(OwnedFd, Arc<Notify>),
    Tty(Arc<OwnedFd>),
}

impl Claim {
    /// Copies between `conn` and the process in the background until either
    /// side ends. Call from inside the runtime.
    pub fn spawn<S>(self, conn: S) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Claim::Output(fd, what) => spawn_output(fd, conn, what),
            Claim::Stdin(fd, close) => spawn_stdin(fd, conn, close),
            Claim::Tty(master) => spawn_tty(master, conn),
        }
    }
}

fn spawn_output<S>(fd: OwnedFd, mut conn: S, what: &'static str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut src = FdStream::new(Arc::new(fd))?;
    tokio::spawn(async move {
        match tokio::io::copy(&mut src, &mut conn).await {
            Ok(n) => debug!("{what}: copied {n} bytes, process side closed"),
            Err(e) => debug!("{what}: copy ended: {e}"),
        }
        let _ = conn.shutdown().await;
    });
    Ok(())
}

fn spawn_stdin<S>(fd: OwnedFd, mut conn: S, close: Arc<Notify>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut dst = FdStream::new(Arc::new(fd))?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut closing = false;
        loop {
            let read = if closing {
                match tokio::time::timeout(STDIN_DRAIN_IDLE, conn.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_idle) => break,
                }
            } else {
                tokio::select! {
                    r = conn.read(&mut buf) => r,
                    _ = close.notified() => { closing = true; continue; }
                }
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Err(e) = dst.write_all(&buf[..n]).await {
                debug!("stdin: process side closed: {e}");
                break;
            }
        }
        // Dropping `dst` closes the write end: the process reads EOF.
    });
    Ok(())
}

fn spawn_tty<S>(master: Arc<OwnedFd>, mut conn: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut pty = FdStream::new(master)?;
    tokio::spawn(async move {
        match tokio::io::copy_bidirectional(&mut conn, &mut pty).await {
            Ok((i, o)) => debug!("tty: {i} bytes in, {o} bytes out"),
            Err(e) => debug!("tty: copy ended: {e}"),
        }
        let _ = conn.shutdown().await;
    });
    Ok(())
}
