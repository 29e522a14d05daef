//! The `bulkhead-vmm` child process of one sandbox: its command line, its exit status and
//! what that status means, the guest console for error messages, and SIGKILL + reap when it
//! is no longer wanted.
//!
//! A background task owns the child and reaps it; the handle watches the published status,
//! so `wait` can be awaited from several places while `kill` stays possible. Dropping the
//! handle kills the VMM (and tokio's `kill_on_drop` covers a runtime that is shutting down).

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use thiserror::Error;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::child_fds::close_inherited_fds;
use crate::console;

/// VMM exit status: the guest rebooted or powered off.
pub const STATUS_SHUTDOWN: i32 = 0;
/// VMM exit status: the VMM itself failed (its log's last line says why).
pub const STATUS_VMM_ERROR: i32 = 1;
/// VMM exit status: bad command-line flags.
pub const STATUS_BAD_FLAGS: i32 = 2;
/// VMM exit status: the guest kernel panicked or the vCPU crashed.
pub const STATUS_GUEST_CRASH: i32 = 3;

/// One virtio-fs device: the tag the guest mounts and virtiofsd's vhost-user socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsDevice {
    pub tag: String,
    pub socket: PathBuf,
}

/// Everything the VMM's command line is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmConfig {
    /// The `bulkhead-vmm` binary.
    pub binary: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `None` keeps the VMM's default.
    pub cmdline: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Hybrid vsock unix socket.
    pub vsock_uds: PathBuf,
    pub vsock_cid: u32,
    /// The guest serial console goes here.
    pub console_log: PathBuf,
    /// The VMM's own log (its stderr) goes here.
    pub vmm_log: PathBuf,
    pub fs: Vec<FsDevice>,
    /// `--log-level` for the VMM; `None` keeps its default.
    pub log_level: Option<String>,
}

impl VmmConfig {
    /// The VMM's arguments (without the binary).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--kernel", self.kernel.clone().into());
        if let Some(initrd) = &self.initrd {
            push("--initrd", initrd.clone().into());
        }
        if let Some(cmdline) = &self.cmdline {
            push("--cmdline", cmdline.into());
        }
        push("--vcpus", self.vcpus.to_string().into());
        push("--memory", self.memory_mib.to_string().into());
        let mut serial = OsString::from("file:");
        serial.push(&self.console_log);
        push("--serial", serial);
        push("--vsock", self.vsock_uds.clone().into());
        push("--vsock-cid", self.vsock_cid.to_string().into());
        for fs in &self.fs {
            let mut spec = OsString::from(&fs.tag);
            spec.push("=");
            spec.push(&fs.socket);
            push("--fs", spec);
        }
        if let Some(level) = &self.log_level {
            push("--log-level", level.into());
        }
        args
    }
}

/// How the VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// Status 0: the guest rebooted or powered off (DestroySandbox ends this way).
    Shutdown,
    /// Status 3: the guest kernel panicked, triple-faulted or KVM reported a crash.
    GuestCrash,
    /// Status 1: the VMM failed (bad kernel, KVM error, device set-up).
    VmmError,
    /// Status 2: the VMM refused its flags (a version mismatch with this library).
    BadFlags,
    /// Any other status.
    Other(i32),
    /// Killed by a signal (9 when we killed it).
    Signal(i32),
    /// The status could not be collected.
    Unknown,
}

impl VmExit {
    pub fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(STATUS_SHUTDOWN), _) => VmExit::Shutdown,
            (Some(STATUS_VMM_ERROR), _) => VmExit::VmmError,
            (Some(STATUS_BAD_FLAGS), _) => VmExit::BadFlags,
            (Some(STATUS_GUEST_CRASH), _) => VmExit::GuestCrash,
            (Some(code), _) => VmExit::Other(code),
            (None, Some(sig)) => VmExit::Signal(sig),
            (None, None) => VmExit::Unknown,
        }
    }

    /// Whether the guest shut down cleanly.
    pub fn is_clean(self) -> bool {
        self == VmExit::Shutdown
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Shutdown => write!(f, "the guest shut down (status 0)"),
            VmExit::GuestCrash => write!(f, "the guest kernel panicked or crashed (status 3)"),
            VmExit::VmmError => write!(f, "the VMM failed (status 1)"),
            VmExit::BadFlags => write!(f, "the VMM refused its command line (status 2)"),
            VmExit::Other(code) => write!(f, "the VMM exited with unexpected status {code}"),
            VmExit::Signal(sig) => write!(f, "the VMM was killed by signal {sig}"),
            VmExit::Unknown => write!(f, "the VMM ended with an unknown status"),
        }
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
}

/// Whether the VMM binary has the `--fs TAG=SOCKET` flag (virtio-fs), from its `--help`.
/// `false` when the binary cannot be run.
pub async fn vmm_supports_fs(binary: &Path) -> bool {
    let run = Command::new(binary)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(std::time::Duration::from_secs(5), run).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|w| w == "--fs" || w.starts_with("--fs=")),
        _ => false,
    }
}

/// A running (or ended, not yet dropped) VMM process.
#[derive(Debug)]
pub struct VmmProcess {
    pid: u32,
    status: watch::Receiver<Option<VmExit>>,
    kill: mpsc::UnboundedSender<()>,
    console_log: PathBuf,
    vmm_log: PathBuf,
}

impl VmmProcess {
    /// Starts the VMM. Must be called inside a tokio runtime. The VMM gets its own process
    /// group, so a Ctrl-C on the caller's terminal does not reach it directly.
    pub fn spawn(config: &VmmConfig) -> Result<Self, VmmError> {
        let log = File::create(&config.vmm_log).map_err(|source| VmmError::LogFile {
            path: config.vmm_log.clone(),
            source,
        })?;
        let mut command = Command::new(&config.binary);
        command
            .args(config.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true);
        let mut child = close_inherited_fds(&mut command)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                binary: config.binary.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        log::info!("started VMM pid {pid}: {}", config.binary.display());
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
            status,
            kill,
            console_log: config.console_log.clone(),
            vmm_log: config.vmm_log.clone(),
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

impl Drop for VmmProcess {
    fn drop(&mut self) {
        // The reaper task sees the closed channel, kills and reaps.
        let _ = self.kill.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn config(dir: &Path, binary: PathBuf) -> VmmConfig {
        VmmConfig {
            binary,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd.img".into()),
            cmdline: None,
            vcpus: 2,
            memory_mib: 384,
            vsock_uds: dir.join("vsock.sock"),
            vsock_cid: 3,
            console_log: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            fs: vec![FsDevice {
                tag: "bulkhead".into(),
                socket: dir.join("fs.sock"),
            }],
            log_level: None,
        }
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-vmm");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn command_line() {
        let cfg = config(Path::new("/run/bulkhead/p"), "/bin/bulkhead-vmm".into());
        let args: Vec<String> = cfg
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "--kernel /k/vmlinux --initrd /k/initrd.img --vcpus 2 --memory 384 \
             --serial file:/run/bulkhead/p/console.log --vsock /run/bulkhead/p/vsock.sock \
             --vsock-cid 3 --fs bulkhead=/run/bulkhead/p/fs.sock"
        );
        let mut cfg = cfg;
        cfg.fs.clear();
        cfg.initrd = None;
        cfg.cmdline = Some("console=ttyS0 quiet".into());
        cfg.log_level = Some("debug".into());
        let args = cfg.args();
        assert!(args.contains(&OsString::from("console=ttyS0 quiet")));
        assert!(!args.contains(&OsString::from("--fs")));
        assert!(!args.contains(&OsString::from("--initrd")));
        assert_eq!(args.last(), Some(&OsString::from("debug")));
    }

    #[tokio::test]
    async fn exit_statuses_have_their_meaning() {
        let dir = tempfile::tempdir().unwrap();
        for (code, want) in [
            (0, VmExit::Shutdown),
            (1, VmExit::VmmError),
            (2, VmExit::BadFlags),
            (3, VmExit::GuestCrash),
            (42, VmExit::Other(42)),
        ] {
            let bin = script(dir.path(), &format!("exit {code}"));
            let vmm = VmmProcess::spawn(&config(dir.path(), bin)).unwrap();
            assert_eq!(vmm.wait().await, want);
            assert_eq!(vmm.try_wait(), Some(want));
            std::fs::remove_file(dir.path().join("fake-vmm")).unwrap();
        }
        assert!(VmExit::GuestCrash.to_string().contains("panicked"));
        assert!(VmExit::Shutdown.is_clean());
        assert!(!VmExit::Signal(9).is_clean());
    }

    #[tokio::test]
    async fn kill_reaps_and_reports_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "echo starting >&2\nexec sleep 600");
        let vmm = VmmProcess::spawn(&config(dir.path(), bin)).unwrap();
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

    #[tokio::test]
    async fn drop_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "exec sleep 600");
        let vmm = VmmProcess::spawn(&config(dir.path(), bin)).unwrap();
        let pid = vmm.pid();
        assert!(process_exists(pid));
        drop(vmm);
        let start = std::time::Instant::now();
        while process_exists(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pid {pid} survived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = VmmProcess::spawn(&config(dir.path(), dir.path().join("absent"))).unwrap_err();
        assert!(matches!(err, VmmError::Spawn { .. }));
        assert!(err.to_string().contains("absent"));
    }

    #[tokio::test]
    async fn detects_the_fs_flag_from_help() {
        let dir = tempfile::tempdir().unwrap();
        let with = script(
            dir.path(),
            "echo '      --fs <TAG=SOCKET>  virtio-fs device'",
        );
        assert!(vmm_supports_fs(&with).await);
        std::fs::remove_file(&with).unwrap();
        let without = script(dir.path(), "echo '      --fsync-ish  --vsock <UDS_PATH>'");
        assert!(!vmm_supports_fs(&without).await);
        assert!(!vmm_supports_fs(&dir.path().join("absent")).await);
    }

    /// Whether `pid` exists; a child that was not reaped stays as a zombie, so `false`
    /// means killed and reaped.
    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }
}
