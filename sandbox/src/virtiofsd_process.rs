//! The virtiofsd child process that exports a sandbox's `shared/` directory to the VMM over
//! vhost-user: starting it with the contract's options ([`VirtiofsdOptions`], defined in
//! `bulkhead_vmm_contract::virtiofsd` with its command line), waiting until its socket
//! exists, SIGKILL + reap on stop or drop.
//!
//! virtiofsd with `--sandbox=namespace` forks: the process we start only waits, and a child
//! (PID 1 of a new pid namespace) serves and holds the socket. The child inherits the
//! process group we start virtiofsd in, so stop and drop kill the whole group, and stop
//! waits until the group is gone.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::child_fds::close_inherited_fds;
use crate::console;

/// virtiofsd's options and command line are the VMM contract's.
pub use bulkhead_vmm_contract::{FsCache, FsConfinement, VirtiofsdOptions};

#[derive(Debug, Error)]
pub enum VirtiofsdError {
    #[error("cannot create the virtiofsd log file {path}")]
    LogFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run virtiofsd {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "virtiofsd exited before creating its socket ({status}); its log ends with:\n{log_tail}"
    )]
    Exited {
        status: std::process::ExitStatus,
        log_tail: String,
    },
    #[error("cannot connect to virtiofsd's socket {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "virtiofsd did not create {socket} within {timeout:?}; its log ends with:\n{log_tail}"
    )]
    NotReady {
        socket: PathBuf,
        timeout: Duration,
        log_tail: String,
    },
}

/// How long a refused connection to a fresh socket is retried.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// How long `stop` waits for virtiofsd's forked children after killing its process group.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(5);

/// A running virtiofsd, killed and reaped on [`VirtiofsdProcess::stop`] or drop.
#[derive(Debug)]
pub struct VirtiofsdProcess {
    child: Option<Child>,
    /// Its process group (its pid: it is spawned as a group leader).
    group: Option<i32>,
    socket: PathBuf,
    log: PathBuf,
}

impl VirtiofsdProcess {
    /// Starts virtiofsd on `shared_dir` and waits until `socket` exists. Its stderr goes to
    /// `log`. With `cgroup_procs` (a sandbox's `cgroup.procs` files, open for writing) it
    /// moves itself into those cgroups before `exec`.
    pub async fn start(
        options: &VirtiofsdOptions,
        socket: &Path,
        shared_dir: &Path,
        log: &Path,
        cgroup_procs: &[OwnedFd],
    ) -> Result<Self, VirtiofsdError> {
        let log_file = File::create(log).map_err(|source| VirtiofsdError::LogFile {
            path: log.to_path_buf(),
            source,
        })?;
        let mut command = Command::new(&options.binary);
        command
            .args(options.args(socket, shared_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .process_group(0)
            .kill_on_drop(true);
        if !cgroup_procs.is_empty() {
            let procs: Vec<i32> = cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect();
            // SAFETY: runs in the forked child before exec; write(2) on descriptors that
            // stay open until the spawn returns.
            unsafe {
                command.pre_exec(move || {
                    for fd in &procs {
                        if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = close_inherited_fds(&mut command)
            .spawn()
            .map_err(|source| VirtiofsdError::Spawn {
                binary: options.binary.clone(),
                source,
            })?;
        let group = child.id().and_then(|pid| i32::try_from(pid).ok());
        let mut this = VirtiofsdProcess {
            child: Some(child),
            group,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + options.ready_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(child) = this.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    this.child = None;
                    return Err(VirtiofsdError::Exited {
                        status,
                        log_tail: console::tail(log, 10),
                    });
                }
            }
            if socket.exists() {
                return Ok(this);
            }
            if Instant::now() >= deadline {
                this.stop().await;
                return Err(VirtiofsdError::NotReady {
                    socket: socket.to_path_buf(),
                    timeout: options.ready_timeout,
                    log_tail: console::tail(log, 10),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects to virtiofsd's vhost-user socket (the connection is handed to the VMM,
    /// whose jail has no path to it). virtiofsd binds before it listens: a refusal right
    /// after the socket appeared is retried for a moment.
    pub async fn connect(&self) -> Result<std::os::unix::net::UnixStream, VirtiofsdError> {
        let deadline = Instant::now() + CONNECT_WAIT;
        loop {
            match std::os::unix::net::UnixStream::connect(&self.socket) {
                Ok(stream) => return Ok(stream),
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(source) => {
                    return Err(VirtiofsdError::Connect {
                        socket: self.socket.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// The last lines of virtiofsd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        console::tail(&self.log, lines)
    }

    /// Kills virtiofsd and the children it forked (it has nothing to flush: the guest's
    /// writes already went to the host files), reaps it, waits until its process group is
    /// gone, and removes its socket.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            if let Some(group) = self.group {
                kill_group(group);
            }
            let _ = child.wait().await;
        }
        if let Some(group) = self.group.take() {
            wait_group_gone(group, GROUP_EXIT_WAIT).await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn kill_group(group: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// Waits until no process of `group` exists any more (zombies included), reaping those that
/// became our children (when this process is a child subreaper).
async fn wait_group_gone(group: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        // SAFETY: waitpid with WNOHANG on our own children of that group; the status
        // pointer may be null.
        while unsafe { libc::waitpid(-group, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        // SAFETY: signal 0 only checks for existence.
        let gone = unsafe { libc::kill(-group, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            return;
        }
        if Instant::now() >= deadline {
            log::warn!("virtiofsd process group {group} still exists {limit:?} after SIGKILL");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Drop for VirtiofsdProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            if let Some(group) = self.group.take() {
                kill_group(group);
            }
            // Reap now if it is already gone; otherwise tokio's orphan reaper collects it.
            let _ = child.try_wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake(dir: &Path, body: &str) -> VirtiofsdOptions {
        let path = dir.join("fake-virtiofsd");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        VirtiofsdOptions {
            binary: path,
            ready_timeout: Duration::from_millis(500),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn waits_for_the_socket_then_stops() {
        let dir = tempfile::tempdir().unwrap();
        // The fake takes its socket path from its first argument, as virtiofsd does.
        let opts = fake(
            dir.path(),
            "sock=${1#--socket-path=}\nsleep 0.1\ntouch \"$sock\"\nexec sleep 600",
        );
        let socket = dir.path().join("fs.sock");
        let log = dir.path().join("virtiofsd.log");
        let mut fsd = VirtiofsdProcess::start(&opts, &socket, dir.path(), &log, &[])
            .await
            .unwrap();
        assert!(socket.exists());
        let pid = fsd.pid().unwrap();
        fsd.stop().await;
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn stop_also_ends_the_children_it_forked() {
        let dir = tempfile::tempdir().unwrap();
        // Like virtiofsd --sandbox=namespace: the started process only waits for a forked
        // child that holds the socket.
        let opts = fake(
            dir.path(),
            "sock=${1#--socket-path=}\nsleep 600 &\necho $! > \"$0.child\"\ntouch \"$sock\"\nwait",
        );
        let socket = dir.path().join("fs.sock");
        let log = dir.path().join("virtiofsd.log");
        let mut fsd = VirtiofsdProcess::start(&opts, &socket, dir.path(), &log, &[])
            .await
            .unwrap();
        let child = std::fs::read_to_string(dir.path().join("fake-virtiofsd.child")).unwrap();
        let child = Path::new("/proc").join(child.trim());
        assert!(child.exists());
        fsd.stop().await;
        assert!(!child.exists(), "the forked child survived");
    }

    #[tokio::test]
    async fn early_exit_reports_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let opts = fake(dir.path(), "echo 'shared dir does not exist' >&2\nexit 1");
        let err = VirtiofsdProcess::start(
            &opts,
            &dir.path().join("fs.sock"),
            dir.path(),
            &dir.path().join("virtiofsd.log"),
            &[],
        )
        .await
        .unwrap_err();
        assert!(matches!(err, VirtiofsdError::Exited { .. }), "{err:?}");
        assert!(err.to_string().contains("shared dir does not exist"));
    }

    #[tokio::test]
    async fn no_socket_in_time_is_an_error_and_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = fake(dir.path(), "echo $$ > \"$0.pid\"\nexec sleep 600");
        let err = VirtiofsdProcess::start(
            &opts,
            &dir.path().join("fs.sock"),
            dir.path(),
            &dir.path().join("virtiofsd.log"),
            &[],
        )
        .await
        .unwrap_err();
        assert!(matches!(err, VirtiofsdError::NotReady { .. }), "{err:?}");
        let pid = std::fs::read_to_string(dir.path().join("fake-virtiofsd.pid")).unwrap();
        assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
    }
}
