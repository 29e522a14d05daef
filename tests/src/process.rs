//! Running a child (a VMM or QEMU) under a deadline: either to completion
//! with captured output ([`run_with_timeout`]) or watched line by line with
//! timestamps ([`WatchedChild`]), e.g. to time a boot marker on the serial
//! console.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors from running a child.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The child could not be started.
    #[error("cannot spawn {program}")]
    Spawn {
        /// Program name.
        program: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for or killing the child failed.
    #[error("cannot wait for the child")]
    Wait(#[source] std::io::Error),
    /// SIGKILL did not end the child in time: a thread is stuck in the kernel.
    #[error("pid {pid} did not end within {limit:?} of SIGKILL; its threads:\n{threads}")]
    Unkillable {
        /// The child.
        pid: u32,
        /// How long it was given.
        limit: Duration,
        /// [`thread_report`] of the child.
        threads: String,
    },
}

/// One line per thread of `pid`: name, state, kernel wait channel and kernel stack (the
/// stack needs root). What to look at when a VMM neither answers nor dies; none of it
/// takes the process's memory lock, so it works when `/proc/PID/smaps` would block.
pub fn thread_report(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("  (no /proc/{pid}/task)");
    };
    let mut out = String::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let get = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = get("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        let stack: Vec<String> = get("stack")
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l).to_string())
            .collect();
        out.push_str(&format!(
            "  tid {} {} state {state} wchan {} stack [{}]\n",
            task.file_name().to_string_lossy(),
            get("comm").trim(),
            get("wchan").trim(),
            stack.join(" < ")
        ));
    }
    out
}

/// Result of [`run_with_timeout`].
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status; `None` when the child was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Everything the child wrote to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything the child wrote to stderr (lossy UTF-8).
    pub stderr: String,
    /// Whether the deadline passed and the child was killed.
    pub timed_out: bool,
    /// Time from spawn to exit (or kill).
    pub elapsed: Duration,
}

impl RunOutput {
    /// The exit code, if the child exited normally before the deadline.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured; kills it
/// (SIGKILL) when `timeout` passes.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<RunOutput, ProcessError> {
    let start = Instant::now();
    let mut child = spawn_piped(cmd)?;
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let (status, timed_out) = wait_deadline(&mut child, start + timeout)?;
    Ok(RunOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
        elapsed: start.elapsed(),
    })
}

fn spawn_piped(cmd: &mut Command) -> Result<Child, ProcessError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits until the child exits or `deadline` passes (then kills it).
/// Returns the status (None if killed) and whether it was killed.
fn wait_deadline(
    child: &mut Child,
    deadline: Instant,
) -> Result<(Option<ExitStatus>, bool), ProcessError> {
    loop {
        if let Some(status) = child.try_wait().map_err(ProcessError::Wait)? {
            return Ok((Some(status), false));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait().map_err(ProcessError::Wait)?;
            return Ok((None, true));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (the serial console for `--serial stdout`).
    Stdout,
    /// Standard error (VMM logs).
    Stderr,
}

/// One line of child output with the time since spawn it arrived at.
#[derive(Debug, Clone)]
pub struct Line {
    /// Time from spawn to the line's arrival.
    pub at: Duration,
    /// Pipe it came from.
    pub stream: Stream,
    /// Text without the line ending (`\r` stripped, lossy UTF-8).
    pub text: String,
}

/// A running child whose stdout and stderr are read line by line, as they
/// arrive, by two threads. Dropping it kills the child.
pub struct WatchedChild {
    child: Child,
    start: Instant,
    rx: Receiver<Line>,
    seen: Vec<Line>,
}

impl WatchedChild {
    /// Spawns `cmd` (stdin /dev/null) and starts reading its output.
    pub fn spawn(cmd: &mut Command) -> Result<Self, ProcessError> {
        let start = Instant::now();
        let mut child = spawn_piped(cmd)?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            pump(out, Stream::Stdout, start, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(err, Stream::Stderr, start, tx);
        }
        Ok(Self {
            child,
            start,
            rx,
            seen: Vec::new(),
        })
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since spawn.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits up to `timeout` for a stdout line containing `needle`; returns
    /// it (with its arrival time) or None on timeout or end of output.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Option<Line> {
        self.wait_for(timeout, |l| {
            l.stream == Stream::Stdout && l.text.contains(needle)
        })
    }

    /// Waits up to `timeout` for a line matching `pred`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Line) -> bool) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line);
                    if hit {
                        return self.seen.last().cloned();
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits up to `timeout` for the child to exit; kills it at the deadline.
    /// Returns the status, or None if it had to be killed. Output is drained
    /// into [`WatchedChild::lines`].
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let (status, _) = wait_deadline(&mut self.child, Instant::now() + timeout)?;
        self.drain(Duration::from_millis(500));
        Ok(status)
    }

    /// Kills the child (SIGKILL) and reaps it. A child that SIGKILL does not end within
    /// 30 s (a thread stuck in the kernel) is an error describing its threads, not a hang.
    pub fn kill(&mut self) -> Result<(), ProcessError> {
        const LIMIT: Duration = Duration::from_secs(30);
        let _ = self.child.kill();
        let deadline = Instant::now() + LIMIT;
        while self.child.try_wait().map_err(ProcessError::Wait)?.is_none() {
            if Instant::now() >= deadline {
                return Err(ProcessError::Unkillable {
                    pid: self.pid(),
                    limit: LIMIT,
                    threads: thread_report(self.pid()),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.drain(Duration::from_millis(200));
        Ok(())
    }

    /// Lines seen so far.
    pub fn lines(&self) -> &[Line] {
        &self.seen
    }

    /// All output seen so far, one line each, stderr lines prefixed `[stderr] `.
    pub fn transcript(&self) -> String {
        let mut s = String::new();
        for l in &self.seen {
            if l.stream == Stream::Stderr {
                s.push_str("[stderr] ");
            }
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }

    fn drain(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while let Ok(line) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }
}

impl Drop for WatchedChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn pump<R: Read + Send + 'static>(pipe: R, stream: Stream, start: Instant, tx: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                    let line = Line {
                        at: start.elapsed(),
                        stream,
                        text,
                    };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_report_names_each_thread_and_its_state() {
        let report = thread_report(std::process::id());
        assert!(report.lines().count() >= 1, "{report}");
        assert!(report.contains("state "), "{report}");
        assert!(thread_report(u32::MAX).contains("no /proc"));
    }

    #[test]
    fn kill_reaps_a_sleeping_child() {
        let mut child = WatchedChild::spawn(Command::new("sleep").arg("30")).unwrap();
        child.kill().unwrap();
    }

    #[test]
    fn captures_output_and_status() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.timed_out);
    }

    #[test]
    fn kills_at_the_deadline() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(out.timed_out);
        assert!(out.status.is_none());
        assert_eq!(out.stdout, "started\n");
        assert!(out.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn watched_child_times_lines_as_they_arrive() {
        let mut child = WatchedChild::spawn(Command::new("sh").args([
            "-c",
            "echo first; echo log >&2; sleep 0.3; printf 'MARK\\r\\n'; exec sleep 30",
        ]))
        .unwrap();
        let line = child
            .wait_for_stdout("MARK", Duration::from_secs(10))
            .expect("marker");
        assert_eq!(line.text, "MARK");
        assert!(line.at >= Duration::from_millis(250), "{:?}", line.at);
        assert!(child
            .wait_for_stdout("never", Duration::from_millis(50))
            .is_none());
        child.kill().unwrap();
        let t = child.transcript();
        assert!(t.contains("first\n") && t.contains("[stderr] log\n"), "{t}");
    }

    #[test]
    fn wait_exit_reports_status() {
        let mut child =
            WatchedChild::spawn(Command::new("sh").args(["-c", "echo bye; exit 5"])).unwrap();
        let status = child.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(5));
        assert!(child.transcript().contains("bye"));
    }
}
