//! The `bulkhead-vmm` child process of one sandbox: launching it with the contract's command
//! line ([`VmmCommand`]), reading its exit status ([`VmExit`], the contract's
//! classification), the guest console for error messages, and SIGKILL + reap when it is no
//! longer wanted.
//!
//! A background task owns the child and reaps it; the handle watches the published status,
//! so `wait` can be awaited from several places while `kill` stays possible. Dropping the
//! handle kills the VMM and waits until it has exited (see [`VmmProcess`]'s `Drop`).

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::child_fds::pass_fds;
pub use crate::child_fds::FIRST_PASSED_FD;
use crate::console;
use crate::jail::enter::{jail_command, spawn_in_new_pid_namespace};
use crate::jail::plan::JAIL_VMM;
use crate::jail::JailPlan;

pub use bulkhead_vmm_contract::exit::{
    STATUS_BAD_FLAGS, STATUS_GUEST_CRASH, STATUS_GUEST_SHUTDOWN, STATUS_SECCOMP_KILL,
    STATUS_VMM_ERROR,
};
/// How the VMM process ended (the contract's [`bulkhead_vmm_contract::VmmExit`]).
pub use bulkhead_vmm_contract::VmmExit as VmExit;
pub use bulkhead_vmm_contract::{FsSpec, SerialOutput, VmmCommand, VsockSpec};

/// How long dropping a [`VmmProcess`] waits for the killed VMM to exit.
const DROP_EXIT_WAIT: Duration = Duration::from_secs(2);

/// A VMM to launch: the binary, its command line, where its output goes, the descriptors
/// it inherits, and its jail.
#[derive(Debug)]
pub struct VmmConfig {
    /// The `bulkhead-vmm` binary (as the host names it).
    pub binary: PathBuf,
    /// Its command line. With `serial: stdout` the console goes to
    /// [`VmmConfig::console_log`], which the launcher opens (the jail has no writable file).
    /// In a jail its paths are the jail's ([`crate::jail::plan::JAIL_KERNEL`], ...).
    pub command: VmmCommand,
    /// The guest serial console (the VMM's stdout), read back for error messages.
    pub console_log: PathBuf,
    /// The VMM's own log (its stderr) goes here.
    pub vmm_log: PathBuf,
    /// Descriptors the VMM inherits (the pod's taps): the `i`-th is fd
    /// [`FIRST_PASSED_FD`]` + i` in the VMM (3, 4, ...), which is what its command line
    /// names (`--net fd=3,...`). Every other descriptor above stderr is closed at exec. Ours
    /// stay open here; drop the config after spawning to close them.
    pub pass_fds: Vec<OwnedFd>,
    /// The jail to start the VMM in ([`crate::jail`]); `None` runs it as the caller.
    pub jail: Option<JailPlan>,
}

impl VmmConfig {
    /// The VMM's arguments (without the binary).
    pub fn args(&self) -> Vec<OsString> {
        self.command.args()
    }
}

#[derive(Debug, Error)]
pub enum VmmError {
    #[error("cannot create the VMM log file {path}")]
    LogFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run the VMM binary {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VMM {binary} in its jail: {step}")]
    JailSpawn {
        binary: PathBuf,
        /// The step the jail's child reported (its last log line).
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the console log {path}")]
    ConsoleLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad VMM log level")]
    LogLevel(#[source] bulkhead_vmm_contract::ParseValueError),
    #[error("cannot prepare a descriptor to pass to the VMM")]
    PassFd(#[source] std::io::Error),
}

/// A running (or ended, not yet dropped) VMM process.
#[derive(Debug)]
pub struct VmmProcess {
    pid: u32,
    /// Refers to this very process even after it is reaped and its pid reused, so `drop` can
    /// signal it and wait for its exit without racing the reaper. `None` if the kernel has no
    /// pidfds (before 5.3).
    pidfd: Option<OwnedFd>,
    status: watch::Receiver<Option<VmExit>>,
    kill: mpsc::UnboundedSender<()>,
    console_log: PathBuf,
    vmm_log: PathBuf,
}

impl VmmProcess {
    /// Starts the VMM. Must be called inside a tokio runtime. The VMM gets its own process
    /// group, so a Ctrl-C on the caller's terminal does not reach it directly.
    pub fn spawn(config: VmmConfig) -> Result<Self, VmmError> {
        let VmmConfig {
            binary,
            command: vmm_command,
            console_log,
            vmm_log,
            pass_fds: passed,
            jail,
        } = config;
        let log = File::create(&vmm_log).map_err(|source| VmmError::LogFile {
            path: vmm_log.clone(),
            source,
        })?;
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console_log)
            .map_err(|source| VmmError::ConsoleLog {
                path: console_log.clone(),
                source,
            })?;
        let jailed = jail.is_some();
        let program = if jailed {
            PathBuf::from(JAIL_VMM)
        } else {
            binary.clone()
        };
        let mut command = Command::new(&program);
        command
            .args(vmm_command.args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(plan) = jail {
            // Nothing of the caller's environment reaches a jailed VMM.
            command.env_clear();
            // Before pass_fds: the jail's own descriptors are used before renumbering.
            jail_command(&mut command, plan);
        }
        let fds: Vec<_> = passed.iter().map(|fd| fd.as_fd()).collect();
        pass_fds(&mut command, &fds);
        let spawned = if jailed {
            spawn_in_new_pid_namespace(&mut command)
        } else {
            command.spawn()
        };
        drop(fds);
        drop(passed);
        let mut child = spawned.map_err(|source| {
            if jailed {
                VmmError::JailSpawn {
                    binary: binary.clone(),
                    step: jail_step(&vmm_log),
                    source,
                }
            } else {
                VmmError::Spawn {
                    binary: binary.clone(),
                    source,
                }
            }
        })?;
        let pid = child.id().unwrap_or(0);
        // Before the reaper task exists, so the child cannot have been reaped yet.
        let pidfd = pidfd_open(pid);
        log::info!(
            "started VMM pid {pid}{}: {}",
            if jailed { " (jailed)" } else { "" },
            binary.display()
        );
        let (status_tx, status) = watch::channel(None);
        let (kill, mut kill_rx) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let result = loop {
                tokio::select! {
                    result = child.wait() => break result,
                    request = kill_rx.recv() => {
                        let _ = child.start_kill();
                        if request.is_none() {
                            // The handle is gone: reap and stop listening.
                            break child.wait().await;
                        }
                    }
                }
            };
            let exit = match result {
                Ok(status) => VmExit::from_status(status),
                Err(e) => {
                    log::warn!("cannot collect the status of VMM pid {pid}: {e}");
                    VmExit::Unknown
                }
            };
            log::info!("VMM pid {pid} ended: {exit}");
            status_tx.send_replace(Some(exit));
        });
        Ok(VmmProcess {
            pid,
            pidfd,
            status,
            kill,
            console_log,
            vmm_log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit, if the VMM has ended and was reaped.
    pub fn try_wait(&self) -> Option<VmExit> {
        *self.status.borrow()
    }

    /// Waits for the VMM to end.
    pub async fn wait(&self) -> VmExit {
        let mut rx = self.status.clone();
        let exit = rx.wait_for(Option::is_some).await.map(|r| *r);
        match exit {
            Ok(exit) => exit.unwrap_or(VmExit::Unknown),
            // The reaper task is gone (runtime shutting down): the child was killed on drop.
            Err(_) => VmExit::Unknown,
        }
    }

    /// Asks the VMM for its device counters: on SIGUSR1 it writes one `metrics:` line per
    /// device to its log. Through the pidfd, so a reused pid is never signalled; a no-op
    /// without one or once the VMM has ended.
    pub fn request_metrics(&self) {
        let Some(pidfd) = &self.pidfd else {
            return;
        };
        if self.try_wait().is_some() {
            return;
        }
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo, no flags.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGUSR1,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Sends SIGKILL (no-op once the VMM has ended).
    pub fn kill(&self) {
        let _ = self.kill.send(());
    }

    /// Sends SIGKILL and waits until the VMM is reaped.
    pub async fn kill_and_wait(&self) -> VmExit {
        self.kill();
        self.wait().await
    }

    /// The last `lines` lines of the guest console, control characters escaped.
    pub fn console_tail(&self, lines: usize) -> String {
        console::tail(&self.console_log, lines)
    }

    /// The last `lines` lines of the VMM's own log.
    pub fn log_tail(&self, lines: usize) -> String {
        console::tail(&self.vmm_log, lines)
    }

    pub fn console_log(&self) -> &Path {
        &self.console_log
    }
}

/// Dropping the handle kills the VMM and blocks (up to [`DROP_EXIT_WAIT`]) until it has
/// exited, so its memory, sockets and open files are gone before whatever is dropped after it
/// (the `Sandbox` drops its run directory last). The exited process is then reaped by the
/// reaper task, or by tokio's orphan reaper when the runtime is shutting down. Without a
/// pidfd (kernels before 5.3) drop only asks the reaper task to kill.
impl Drop for VmmProcess {
    fn drop(&mut self) {
        if let Some(pidfd) = &self.pidfd {
            kill_and_wait_exit(pidfd, DROP_EXIT_WAIT);
        }
        // The reaper task sees the closed channel, kills (a no-op by now) and reaps.
        let _ = self.kill.send(());
    }
}

/// The step a jail's child reported before failing (see [`crate::jail::enter`]).
fn jail_step(vmm_log: &Path) -> String {
    let tail = console::tail(vmm_log, 3);
    tail.lines()
        .rev()
        .find_map(|l| l.strip_prefix("bulkhead jail: "))
        .map_or_else(
            || "the exec of the VMM failed (its log is empty)".to_owned(),
            str::to_owned,
        )
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the fd was just returned by the kernel and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL the process behind `pidfd`, then wait until it has exited (the pidfd turns
/// readable), at most `limit`.
fn kill_and_wait_exit(pidfd: &OwnedFd, limit: Duration) {
    let fd = pidfd.as_raw_fd();
    // SAFETY: pidfd_send_signal(2) with a pidfd we own, no siginfo, no flags. Fails with
    // ESRCH once the process has exited, which is fine.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll(2) on one pollfd that lives on this stack frame.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return;
        }
        let interrupted =
            n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if !interrupted || left.is_zero() {
            if n == 0 {
                log::warn!("the VMM did not exit within {limit:?} of SIGKILL");
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(dir: &Path, binary: PathBuf) -> VmmConfig {
        VmmConfig {
            binary,
            command: VmmCommand {
                initrd: Some("/k/initrd.img".into()),
                vcpus: 2,
                memory_mib: 384,
                serial: SerialOutput::File(dir.join("console.log")),
                vsock: Some(VsockSpec::on_path(dir.join("vsock.sock"), 3)),
                fs: vec![FsSpec::new("bulkhead", dir.join("fs.sock")).unwrap()],
                ..VmmCommand::new("/k/vmlinux")
            },
            console_log: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            pass_fds: Vec::new(),
            jail: None,
        }
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-vmm");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// The fake VMM gets exactly the contract's command line (the contract's own tests parse
    /// it with the VMM's clap definition).
    #[tokio::test]
    async fn the_vmm_gets_the_contract_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(
            dir.path(),
            "for a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$0.args\"",
        );
        let cfg = config(dir.path(), bin.clone());
        let want = cfg.command.args();
        assert_eq!(cfg.args(), want);
        let vmm = VmmProcess::spawn(cfg).unwrap();
        assert_eq!(vmm.wait().await, VmExit::Shutdown);
        let got = std::fs::read_to_string(dir.path().join("fake-vmm.args")).unwrap();
        let want: Vec<String> = want.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(got.lines().collect::<Vec<_>>(), want);
    }

    /// A passed descriptor is fd 3 in the VMM (what `--net fd=3` names).
    #[tokio::test]
    async fn passed_fds_arrive_from_fd_3_on() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "readlink /proc/$$/fd/3 > \"$0.fd3\"");
        let mut cfg = config(dir.path(), bin);
        let stand_in = dir.path().join("tap-stand-in");
        cfg.pass_fds = vec![File::create(&stand_in).unwrap().into()];
        let vmm = VmmProcess::spawn(cfg).unwrap();
        assert_eq!(vmm.wait().await, VmExit::Shutdown);
        let got = std::fs::read_to_string(dir.path().join("fake-vmm.fd3")).unwrap();
        assert_eq!(got.trim(), stand_in.to_str().unwrap());
        assert_eq!(FIRST_PASSED_FD, 3);
    }

    #[tokio::test]
    async fn exit_statuses_have_their_meaning() {
        let dir = tempfile::tempdir().unwrap();
        for (code, want) in [
            (0, VmExit::Shutdown),
            (1, VmExit::VmmError),
            (2, VmExit::BadFlags),
            (3, VmExit::GuestCrash),
            (159, VmExit::SeccompKill),
            (42, VmExit::Other(42)),
        ] {
            let bin = script(dir.path(), &format!("exit {code}"));
            let vmm = VmmProcess::spawn(config(dir.path(), bin)).unwrap();
            assert_eq!(vmm.wait().await, want);
            assert_eq!(vmm.try_wait(), Some(want));
            std::fs::remove_file(dir.path().join("fake-vmm")).unwrap();
        }
        assert!(VmExit::GuestCrash.to_string().contains("panicked"));
        assert!(VmExit::SeccompKill.to_string().contains("seccomp"));
        assert!(VmExit::Shutdown.is_clean());
        assert!(!VmExit::Signal(9).is_clean());
    }

    #[tokio::test]
    async fn kill_reaps_and_reports_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "echo starting >&2\nexec sleep 600");
        let vmm = VmmProcess::spawn(config(dir.path(), bin)).unwrap();
        assert_eq!(vmm.try_wait(), None);
        while vmm.log_tail(5).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let exit = tokio::time::timeout(Duration::from_secs(10), vmm.kill_and_wait())
            .await
            .unwrap();
        assert_eq!(exit, VmExit::Signal(libc::SIGKILL));
        assert!(!process_exists(vmm.pid()));
        assert_eq!(vmm.log_tail(5), "starting");
    }

    /// Drop returns only once the VMM has exited (at most a zombie is left), then the reaper
    /// task reaps it.
    #[tokio::test]
    async fn drop_kills_waits_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "exec sleep 600");
        let vmm = VmmProcess::spawn(config(dir.path(), bin)).unwrap();
        let pid = vmm.pid();
        assert!(process_exists(pid));
        assert!(vmm.pidfd.is_some(), "this kernel has pidfds");
        drop(vmm);
        assert!(!is_running(pid), "pid {pid} still runs after drop");
        let start = std::time::Instant::now();
        while process_exists(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pid {pid} was not reaped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Same on a runtime whose only thread is blocked in drop: the wait does not depend on
    /// the reaper task.
    #[test]
    fn drop_waits_on_a_current_thread_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pid = rt.block_on(async {
            let bin = script(dir.path(), "exec sleep 600");
            let vmm = VmmProcess::spawn(config(dir.path(), bin)).unwrap();
            let pid = vmm.pid();
            drop(vmm);
            pid
        });
        assert!(!is_running(pid), "pid {pid} still runs after drop");
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = VmmProcess::spawn(config(dir.path(), dir.path().join("absent"))).unwrap_err();
        assert!(matches!(err, VmmError::Spawn { .. }));
        assert!(err.to_string().contains("absent"));
    }

    /// Whether `pid` exists; a child that was not reaped stays as a zombie, so `false`
    /// means killed and reaped.
    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Whether `pid` exists and is not a zombie.
    fn is_running(pid: u32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The state follows the command name in parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        !matches!(state, Some('Z') | Some('X'))
    }
}
