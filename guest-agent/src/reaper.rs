//! Child reaping for PID 1 (and for a subreaper in tests).
//!
//! One thread reaps every child, ours and orphans alike, and routes the exit
//! status of each registered pid to its waiters through a watch channel.
//! libcontainer waits for its own helper process (`waitpid(intermediate)`)
//! while it builds a container, so reaping must not race with it: container
//! creation holds a [`SpawnGuard`], and the reaper only reaps while holding the
//! same lock. The pids a build produces are registered before the guard is
//! dropped, so no exit of ours is ever reaped unregistered.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_protocol::types::{ExitStatus, ProcessExit};
use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// Receives the exit of one process: `None` while it runs.
pub type ExitReceiver = watch::Receiver<Option<ProcessExit>>;

#[derive(Default)]
struct Table {
    waiters: HashMap<Pid, watch::Sender<Option<ProcessExit>>>,
}

pub struct Reaper {
    /// Held while reaping and while libcontainer forks and waits.
    reap_lock: Mutex<()>,
    table: Mutex<Table>,
    /// Wakes the thread when it idles with no children at all.
    children_appeared: Condvar,
}

/// Holds off reaping; see the module documentation.
pub struct SpawnGuard<'a> {
    reaper: &'a Reaper,
    _lock: MutexGuard<'a, ()>,
}

impl SpawnGuard<'_> {
    /// Routes the exit of `pid` to the returned receiver.
    pub fn register(&self, pid: Pid) -> ExitReceiver {
        let (tx, rx) = watch::channel(None);
        lock(&self.reaper.table).waiters.insert(pid, tx);
        rx
    }
}

impl Drop for SpawnGuard<'_> {
    fn drop(&mut self) {
        self.reaper.children_appeared.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();

/// The process-wide reaper; starts its thread on first use.
pub fn global() -> Arc<Reaper> {
    REAPER
        .get_or_init(|| {
            let reaper = Arc::new(Reaper {
                reap_lock: Mutex::new(()),
                table: Mutex::new(Table::default()),
                children_appeared: Condvar::new(),
            });
            let r = Arc::clone(&reaper);
            // Without this a test process (not PID 1) would lose the
            // container processes libcontainer re-parents away from it.
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                warn!("cannot become child subreaper: {e}");
            }
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || r.run())
                .map_err(|e| warn!("cannot start reaper thread: {e}"))
                .ok();
            reaper
        })
        .clone()
}

impl Reaper {
    /// Blocks reaping until the guard is dropped.
    pub fn spawn_guard(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            reaper: self,
            _lock: lock(&self.reap_lock),
        }
    }

    fn run(&self) {
        loop {
            // Wait for a zombie without reaping it, so that a libcontainer
            // build in progress can still reap its own helper.
            match waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL,
            ) {
                Ok(_) => self.reap_all(),
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    // No children: sleep until a build registers some (or
                    // an orphan shows up, caught by the timeout).
                    let guard = lock(&self.reap_lock);
                    let _ = self
                        .children_appeared
                        .wait_timeout(guard, Duration::from_millis(500));
                }
                Err(e) => {
                    warn!("waitid failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn reap_all(&self) {
        let _guard = lock(&self.reap_lock);
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitpid failed: {e}");
                    return;
                }
                Ok(s) => s,
            };
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid, ExitStatus::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, ExitStatus::Signal(sig as i32)),
                // Stops and ptrace events are not exits.
                _ => continue,
            };
            self.deliver(pid, exit);
        }
    }

    fn deliver(&self, pid: Pid, status: ExitStatus) {
        let exit = ProcessExit {
            status,
            exited_at_unix_nanos: now_unix_nanos(),
        };
        match lock(&self.table).waiters.remove(&pid) {
            Some(tx) => {
                debug!("process {pid} exited with status {}", status.as_status());
                tx.send_replace(Some(exit));
            }
            None => debug!("reaped orphan {pid} (status {})", status.as_status()),
        }
    }
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Waits until the process behind `rx` has exited.
pub async fn wait_exit(mut rx: ExitReceiver) -> Option<ProcessExit> {
    loop {
        if let Some(exit) = *rx.borrow_and_update() {
            return Some(exit);
        }
        // The sender only goes away with the reaper's table entry, which is
        // removed after sending the exit: an error here means no exit ever.
        if rx.changed().await.is_err() {
            return *rx.borrow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{fork, ForkResult};

    fn fork_exit(code: i32, guard: &SpawnGuard<'_>) -> ExitReceiver {
        // SAFETY: the child only calls async-signal-safe functions before
        // exiting.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe { libc::_exit(code) },
            ForkResult::Parent { child } => guard.register(child),
        }
    }

    #[test]
    fn exit_codes_reach_the_registered_waiter_and_orphans_are_reaped() {
        let reaper = global();
        let (a, b) = {
            let guard = reaper.spawn_guard();
            // An unregistered child: reaped and dropped without harm.
            // SAFETY: as above.
            if let ForkResult::Child = unsafe { fork() }.unwrap() {
                unsafe { libc::_exit(0) }
            }
            (fork_exit(3, &guard), fork_exit(7, &guard))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (ea, eb) = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                (wait_exit(a).await, wait_exit(b).await)
            })
            .await
            .expect("exits arrive")
        });
        assert_eq!(ea.unwrap().status, ExitStatus::Code(3));
        assert_eq!(eb.unwrap().status, ExitStatus::Code(7));
    }
}
