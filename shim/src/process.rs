//! One process as containerd sees it (a container's init or an exec): its status, pid,
//! stdio and exit. The pid containerd gets is a host pid, the VMM's, as Kata reports it:
//! containerd and its clients act on task pids on the host (`/proc/<pid>`, signals), and a
//! pid the guest reports names some unrelated host process; the guest's pid is only kept
//! for logs. The exit is recorded once, whoever notices it first (the agent's
//! WaitProcess answer, or the VM going away), and every waiter sees the same one.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bulkhead_sandbox::ProcessRef;
use tokio::sync::watch;

use crate::stdio::{ProcessIo, StdioPaths};

/// Exit status given to processes that die with their VM (128 + SIGKILL).
pub const VM_GONE_EXIT_STATUS: u32 = 137;
/// How long an exit waits for the process's output to be copied before it is reported.
pub const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created (init: before Start; exec: before its Start).
    Created,
    Running,
    Stopped,
    /// Reported for the init of a paused container (the process record stays Running).
    Paused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    /// An exit as the agent reports it; its time is the guest's clock (0 or less: unknown,
    /// now is used).
    pub fn from_guest(status: u32, unix_nanos: i64) -> Self {
        let at = if unix_nanos <= 0 {
            SystemTime::now()
        } else {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_nanos as u64)
        };
        Exit { status, at }
    }

    /// The exit of a process that went down with its VM.
    pub fn vm_gone() -> Self {
        Exit {
            status: VM_GONE_EXIT_STATUS,
            at: SystemTime::now(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    status: Status,
    /// In the guest, as the agent reports it: logs only.
    guest_pid: u32,
    /// The stdio streams are attached.
    io_ready: bool,
    /// CloseIO came before the streams were attached: close stdin once they are.
    stdin_close_deferred: bool,
}

/// A process of this shim.
#[derive(Debug)]
pub struct Process {
    pub process: ProcessRef,
    pub stdio: StdioPaths,
    /// The OCI process JSON of an exec that is not started yet.
    pub exec_spec: Option<Vec<u8>>,
    /// The host pid reported for it: its VMM's.
    task_pid: u32,
    inner: Mutex<Inner>,
    exit: watch::Sender<Option<Exit>>,
    io: tokio::sync::Mutex<Option<ProcessIo>>,
}

impl Process {
    /// A process of the VM whose VMM is host process `vmm_pid`.
    pub fn new(
        process: ProcessRef,
        stdio: StdioPaths,
        exec_spec: Option<Vec<u8>>,
        vmm_pid: u32,
    ) -> Self {
        Process {
            process,
            stdio,
            exec_spec,
            task_pid: vmm_pid,
            inner: Mutex::new(Inner {
                status: Status::Created,
                guest_pid: 0,
                io_ready: false,
                stdin_close_deferred: false,
            }),
            exit: watch::channel(None).0,
            io: tokio::sync::Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        if self.exit.borrow().is_some() {
            return Status::Stopped;
        }
        self.lock().status
    }

    /// The pid containerd gets (for the task, its events, State and Pids): the VMM's.
    pub fn pid(&self) -> u32 {
        self.task_pid
    }

    /// The pid in the guest, for logs: never reported to containerd.
    pub fn guest_pid(&self) -> u32 {
        self.lock().guest_pid
    }

    pub fn set_guest_pid(&self, pid: u32) {
        self.lock().guest_pid = pid;
    }

    /// Marks the process running (unless it already exited).
    pub fn set_running(&self) {
        let mut inner = self.lock();
        if inner.status == Status::Created {
            inner.status = Status::Running;
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Records the exit; `true` only for the first call (the one that reports it).
    pub fn record_exit(&self, exit: Exit) -> bool {
        let mut first = false;
        self.exit.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit);
                first = true;
            }
            first
        });
        if first {
            self.lock().status = Status::Stopped;
        }
        first
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: unreachable while `self` is borrowed.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Keeps the attached stdio. Returns whether a CloseIO arrived before: the caller
    /// closes stdin now.
    pub async fn set_io(&self, io: ProcessIo) -> bool {
        *self.io.lock().await = Some(io);
        let mut inner = self.lock();
        inner.io_ready = true;
        std::mem::take(&mut inner.stdin_close_deferred)
    }

    /// CloseIO: `true` when stdin can be closed now; `false` when the streams are not
    /// attached yet (an exec between Exec and Start) and the close waits for them.
    pub fn request_stdin_close(&self) -> bool {
        let mut inner = self.lock();
        if inner.io_ready {
            true
        } else {
            inner.stdin_close_deferred = true;
            false
        }
    }

    /// Lets the output copies finish (bounded), then stops the stdio copies.
    pub async fn finish_io(&self, limit: Duration) {
        let mut io = self.io.lock().await;
        if let Some(mut pio) = io.take() {
            if !pio.wait_output(limit).await {
                log::warn!(
                    "{}/{}: output still open {limit:?} after the exit; cutting it",
                    self.process.container_id,
                    self.process.exec_id
                );
            }
            pio.shutdown();
        }
    }

    /// Waits (bounded) until stdin has been forwarded to the end.
    pub async fn drain_stdin(&self, limit: Duration) {
        if let Some(io) = self.io.lock().await.as_mut() {
            io.wait_stdin(limit).await;
        }
    }

    /// Stops the stdio copies at once.
    pub async fn stop_io(&self) {
        if let Some(mut io) = self.io.lock().await.take() {
            io.shutdown();
        }
    }
}

/// The pids containerd gets for `processes`: each running one's, each pid once (all of a
/// VM's are its VMM's).
pub fn task_pids<'a, P>(processes: impl IntoIterator<Item = &'a P>) -> Vec<u32>
where
    P: std::ops::Deref<Target = Process> + 'a,
{
    let mut pids: Vec<u32> = processes
        .into_iter()
        .filter(|p| p.status() == Status::Running)
        .map(|p| p.pid())
        .filter(|&pid| pid != 0)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn proc_() -> Process {
        Process::new(
            ProcessRef::new("c1", "").unwrap(),
            StdioPaths::default(),
            None,
            VMM_PID,
        )
    }

    const VMM_PID: u32 = 4242;

    #[test]
    fn guest_exit_times() {
        let e = Exit::from_guest(3, 1_500_000_000);
        assert_eq!(e.at, SystemTime::UNIX_EPOCH + Duration::from_millis(1500));
        assert_eq!(e.status, 3);
        let unknown = Exit::from_guest(0, 0);
        assert!(unknown.at > SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000));
        assert_eq!(Exit::vm_gone().status, 137);
    }

    #[tokio::test]
    async fn a_stdin_close_before_the_streams_waits_for_them() {
        let p = proc_();
        assert!(!p.request_stdin_close());
        let io = crate::stdio::connect(&StdioPaths::default(), &NoStreams)
            .await
            .unwrap();
        assert!(p.set_io(io).await, "the deferred close is handed over");
        assert!(p.request_stdin_close());

        let q = proc_();
        let io = crate::stdio::connect(&StdioPaths::default(), &NoStreams)
            .await
            .unwrap();
        assert!(!q.set_io(io).await);
        assert!(q.request_stdin_close());
    }

    /// Output streams that end at once.
    struct NoStreams;

    #[async_trait::async_trait]
    impl crate::stdio::StreamOpener for NoStreams {
        async fn open(
            &self,
            _: bulkhead_sandbox::StreamKind,
        ) -> Result<tokio::net::UnixStream, crate::stdio::StdioError> {
            Ok(tokio::net::UnixStream::pair().unwrap().0)
        }
    }

    #[tokio::test]
    async fn the_first_exit_wins_and_every_waiter_sees_it() {
        let p = Arc::new(proc_());
        assert_eq!(p.status(), Status::Created);
        p.set_guest_pid(42);
        p.set_running();
        assert_eq!(p.status(), Status::Running);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let first = Exit {
            status: 3,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(5),
        };
        assert!(p.record_exit(first));
        assert!(!p.record_exit(Exit {
            status: VM_GONE_EXIT_STATUS,
            at: SystemTime::now()
        }));
        for w in waiters {
            assert_eq!(w.await.unwrap(), first);
        }
        assert_eq!(p.status(), Status::Stopped);
        assert_eq!(p.exit(), Some(first));
        assert_eq!(p.wait().await, first);
        // A late "running" does not revive it.
        p.set_running();
        assert_eq!(p.status(), Status::Stopped);
        assert_eq!(p.guest_pid(), 42);
    }

    #[test]
    fn pids_name_the_vmm_once() {
        let procs: Vec<Arc<Process>> = (0..3).map(|_| Arc::new(proc_())).collect();
        assert!(task_pids(&procs).is_empty(), "nothing runs yet");
        for (guest_pid, p) in [1, 7, 9].into_iter().zip(&procs) {
            p.set_guest_pid(guest_pid);
        }
        procs[0].set_running();
        procs[1].set_running();
        assert_eq!(task_pids(&procs), [VMM_PID]);
        procs[0].record_exit(Exit::vm_gone());
        procs[1].record_exit(Exit::vm_gone());
        assert!(task_pids(&procs).is_empty());
    }

    #[test]
    fn containerd_gets_the_vmm_pid_never_the_guests() {
        let p = proc_();
        assert_eq!(p.pid(), VMM_PID, "before the guest reports one");
        p.set_guest_pid(1);
        p.set_running();
        assert_eq!(p.pid(), VMM_PID);
        assert_eq!(p.guest_pid(), 1);
        p.record_exit(Exit::vm_gone());
        assert_eq!(p.pid(), VMM_PID);
    }
}
