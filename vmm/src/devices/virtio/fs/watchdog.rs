//! A deadline for blocking vhost-user requests: if the backend has not answered in time, the
//! socket is shut down, which makes the blocked read return and the request fail.
//!
//! Socket timeouts (SO_RCVTIMEO) do not work here: the `vhost` crate treats the resulting
//! EAGAIN as "retry" and reads again, forever. So one long-lived thread per connection,
//! started with the device (before any seccomp filter is installed), waits for "armed"
//! deadlines over a channel; the request side only sends messages (futex calls). The thread
//! gives up its own capabilities first (it only needs shutdown(2)): capabilities belong to
//! threads, and the VMM's privilege drop comes later, on the main thread.

use std::os::fd::RawFd;
use std::sync::mpsc::{channel, sync_channel, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use crate::seccomp::privileges::{drop_thread_privileges, PrivilegeError};

enum Msg {
    Arm(Instant, &'static str),
    Disarm,
}

/// Owns the watchdog thread of one socket. The thread ends when this is dropped.
pub(super) struct Watchdog {
    tx: Sender<Msg>,
    timeout: Duration,
}

impl Watchdog {
    /// Watch `fd` (which must stay open as long as this lives) with `timeout` per armed span.
    pub(super) fn spawn(fd: RawFd, timeout: Duration) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Msg>();
        let (ready_tx, ready_rx) = sync_channel::<Result<(), PrivilegeError>>(1);
        thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                let dropped = drop_thread_privileges();
                let failed = dropped.is_err();
                let _ = ready_tx.send(dropped);
                if failed {
                    return;
                }
                while let Ok(msg) = rx.recv() {
                    let Msg::Arm(mut deadline, mut what) = msg else {
                        continue;
                    };
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(Msg::Disarm) => break,
                            Ok(Msg::Arm(d, w)) => (deadline, what) = (d, w),
                            Err(RecvTimeoutError::Timeout) => {
                                log::error!(
                                    "vhost-user backend did not answer {what} within \
                                     {timeout:?}; closing the connection"
                                );
                                // SAFETY: shutdown(2) on an fd the owner keeps open while
                                // armed; it only changes the socket's state.
                                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                                break;
                            }
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { tx, timeout }),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("the watchdog thread ended at start")),
        }
    }

    /// Arm the deadline for the requests of `what`, until the returned guard is dropped.
    pub(super) fn guard(&self, what: &'static str) -> WatchdogGuard<'_> {
        // If the thread is gone the send fails; the requests then simply have no deadline.
        let _ = self.tx.send(Msg::Arm(Instant::now() + self.timeout, what));
        WatchdogGuard { tx: &self.tx }
    }
}

/// Disarms the watchdog when dropped.
pub(super) struct WatchdogGuard<'a> {
    tx: &'a Sender<Msg>,
}

impl Drop for WatchdogGuard<'_> {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Disarm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_blocked_read_is_released_at_the_deadline_and_not_before() {
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let dog = Watchdog::spawn(ours.as_raw_fd(), Duration::from_millis(200)).unwrap();
        let start = Instant::now();
        {
            let _g = dog.guard("a test read");
            let mut buf = [0u8; 1];
            // Blocks until the watchdog shuts the socket down: then reads end-of-file.
            assert_eq!(ours.read(&mut buf).unwrap(), 0);
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    /// The `/proc` status of this process's thread named `name` (names are cut to 15 bytes).
    fn thread_status(name: &str) -> Option<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .find(|s| {
                s.lines()
                    .any(|l| l.strip_prefix("Name:").map(str::trim) == Some(name))
            })
    }

    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    }

    /// Checked with or without root: `no_new_privs` is set by the thread itself either way, so
    /// a thread that skipped its drop fails here even when it had nothing to drop. As root the
    /// capability sets start full, so their being empty is checked too.
    #[test]
    fn the_watchdog_thread_gives_up_its_privileges() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let _dog = Watchdog::spawn(ours.as_raw_fd(), Duration::from_secs(1)).unwrap();
        let status = thread_status("vhost-user-watc").expect("the watchdog thread runs");
        assert_eq!(field(&status, "NoNewPrivs:"), "1", "{status}");
        for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            let value = field(&status, set);
            assert!(value.chars().all(|c| c == '0'), "{set} {value}");
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let bounding = field(&status, "CapBnd:");
            assert!(bounding.chars().all(|c| c == '0'), "CapBnd: {bounding}");
        }
        let privileged = crate::seccomp::privileges::threads_with_capabilities();
        assert!(
            !privileged.iter().any(|t| t == "vhost-user-watc"),
            "{privileged:?}"
        );
    }

    #[test]
    fn a_disarmed_watchdog_leaves_the_socket_alone() {
        use std::io::Write;
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let dog = Watchdog::spawn(ours.as_raw_fd(), Duration::from_millis(50)).unwrap();
        drop(dog.guard("quick"));
        thread::sleep(Duration::from_millis(150));
        theirs.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(ours.read(&mut buf).unwrap(), 1, "socket still open");
    }
}
