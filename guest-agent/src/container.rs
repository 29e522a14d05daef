//! Turning OCI runtime specs into processes, through youki's libcontainer:
//! bundle preparation, create/start of a container's init process, exec of
//! extra processes, and removal.
//!
//! libcontainer does the namespaces, cgroup v2 limits, mounts, pivot_root,
//! capabilities, rlimits, seccomp, user and groups. Written here by hand:
//! - receiving the pty master from the console socket (libcontainer only
//!   connects to a socket path and sends the fd);
//! - restoring the agent's own `oom_score_adj`, which libcontainer changes in
//!   the calling process (it sets the value before forking so that children
//!   inherit it).
//!
//! libcontainer forks with `clone3` and keeps running Rust in the children,
//! and it `waitpid`s its intermediate process: callers hold the reaper's
//! spawn guard around `create` and `exec` (see `reaper`).

use std::fs;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};
use thiserror::Error;

use crate::process_io::ChildStdio;

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("invalid OCI runtime spec: {0}")]
    InvalidSpec(#[source] serde_json::Error),
    #[error("invalid OCI process: {0}")]
    InvalidProcess(#[source] serde_json::Error),
    #[error("OCI runtime spec has no process")]
    NoProcess,
    #[error("rootfs {path} is not usable: {source}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write bundle file {path}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("console socket: {0}")]
    Console(#[source] io::Error),
    #[error("libcontainer: {0}")]
    Libcontainer(#[from] LibcontainerError),
    #[error(transparent)]
    Update(#[from] crate::cgroup_update::UpdateError),
}

/// How a new process gets its stdio.
pub enum StdioSetup {
    Pipes(ChildStdio),
    /// Allocate a pty in the container; its master is returned.
    Tty,
}

/// Where the agent keeps libcontainer state and bundles.
#[derive(Debug, Clone)]
pub struct Runtime {
    state_root: PathBuf,
    bundle_root: PathBuf,
}

/// A created container: its init pid and cgroup directory.
pub struct Created {
    pub pid: Pid,
    pub pty_master: Option<OwnedFd>,
    /// The container's cgroup, relative to the cgroup2 mount.
    pub cgroup_path: PathBuf,
}

pub struct Execed {
    pub pid: Pid,
    pub pty_master: Option<OwnedFd>,
}

impl Runtime {
    pub fn new(state_dir: &Path) -> io::Result<Self> {
        let rt = Runtime {
            state_root: state_dir.join("containers"),
            bundle_root: state_dir.join("bundles"),
        };
        fs::create_dir_all(&rt.state_root)?;
        fs::create_dir_all(&rt.bundle_root)?;
        Ok(rt)
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.bundle_root.join(id)
    }

    /// Parses and adjusts the spec for `id` and writes `config.json`.
    /// Returns the bundle directory and the cgroup path.
    pub fn prepare_bundle(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &Path,
        tty: bool,
    ) -> Result<(PathBuf, PathBuf), ContainerError> {
        let mut spec: Spec =
            serde_json::from_slice(spec_json).map_err(ContainerError::InvalidSpec)?;
        let rootfs = fs::canonicalize(rootfs).map_err(|source| ContainerError::Rootfs {
            path: rootfs.to_owned(),
            source,
        })?;
        if !rootfs.is_dir() {
            return Err(ContainerError::Rootfs {
                path: rootfs,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let readonly = spec.root().as_ref().and_then(|r| r.readonly());
        let mut root = oci_spec::runtime::Root::default();
        root.set_path(rootfs);
        root.set_readonly(readonly);
        spec.set_root(Some(root));
        let process = spec
            .process_mut()
            .as_mut()
            .ok_or(ContainerError::NoProcess)?;
        process.set_terminal(Some(tty));
        if let Some(bounding) = crate::cap_bounding::own_bounding_set() {
            let removed = crate::cap_bounding::limit_to(process, bounding);
            if !removed.is_empty() {
                log::info!("container {id}: capabilities {removed:?} are not in the agent's bounding set; left out");
            }
        }
        let mut linux = spec.linux().clone().unwrap_or_default();
        let cgroup_path = match linux.cgroups_path() {
            Some(p) => p.clone(),
            None => PathBuf::from(format!("/bulkhead/{id}")),
        };
        linux.set_cgroups_path(Some(cgroup_path.clone()));
        if let Some(mut seccomp) = linux.seccomp().clone() {
            let unknown = crate::seccomp_compat::drop_unknown_names(&mut seccomp);
            if !unknown.is_empty() {
                log::debug!("container {id}: seccomp names unknown to this libseccomp, left out: {unknown:?}");
            }
            crate::seccomp_compat::swap_masked_operands(&mut seccomp);
            linux.set_seccomp(Some(seccomp));
        }
        spec.set_linux(Some(linux));

        let bundle = self.bundle_dir(id);
        write_json(&bundle.join("config.json"), &spec)?;
        Ok((bundle, cgroup_path))
    }

    /// Creates the container's init process, stopped before the user's
    /// program until [`Runtime::start`]. Hold the reaper's spawn guard.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        cgroup_path: PathBuf,
        stdio: StdioSetup,
    ) -> Result<Created, ContainerError> {
        let console = ConsoleSocket::maybe(&self.bundle_dir(id), "console", &stdio)?;
        let builder = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.state_root)?
            .validate_id()?;
        let builder = with_stdio(builder, stdio, console.as_ref());
        let oom_adj = OomScoreAdj::save();
        let result = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        oom_adj.restore();
        let container = result?;
        let pid = container
            .pid()
            .ok_or_else(|| LibcontainerError::Other("created container has no pid".into()))?;
        let pty_master = console.map(|c| c.receive_master()).transpose()?;
        Ok(Created {
            pid,
            pty_master,
            cgroup_path,
        })
    }

    /// Lets the init process exec the user's program.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut c = Container::load(self.state_root.join(id))?;
        c.start()?;
        Ok(())
    }

    /// Freezes the container's cgroup (libcontainer: cgroup v2 freezer, waits until the
    /// kernel reports it frozen).
    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        Container::load(self.state_root.join(id))?.pause()?;
        Ok(())
    }

    /// Thaws a paused container's cgroup.
    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        Container::load(self.state_root.join(id))?.resume()?;
        Ok(())
    }

    /// Starts an extra process in a running container. Hold the reaper's
    /// spawn guard.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: StdioSetup,
    ) -> Result<Execed, ContainerError> {
        let mut process: Process =
            serde_json::from_slice(process_json).map_err(ContainerError::InvalidProcess)?;
        process.set_terminal(Some(matches!(stdio, StdioSetup::Tty)));
        let bundle = self.bundle_dir(id);
        let process_path = bundle.join(format!("exec-{exec_id}.json"));
        write_json(&process_path, &process)?;

        let console = ConsoleSocket::maybe(&bundle, &format!("exec-{exec_id}"), &stdio)?;
        let builder = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.state_root)?;
        let builder = with_stdio(builder, stdio, console.as_ref());
        let oom_adj = OomScoreAdj::save();
        let result = builder
            .as_tenant()
            .with_process(Some(&process_path))
            .with_detach(true)
            .build();
        oom_adj.restore();
        let _ = fs::remove_file(&process_path);
        let pid = result?;
        let pty_master = console.map(|c| c.receive_master()).transpose()?;
        Ok(Execed { pid, pty_master })
    }

    /// Kills whatever is left and deletes state, cgroup and bundle.
    pub fn delete(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.state_root.join(id);
        if dir.exists() {
            let mut c = Container::load(dir)?;
            c.delete(true)?;
        }
        let _ = fs::remove_dir_all(self.bundle_dir(id));
        Ok(())
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), ContainerError> {
    let bundle_err = |source| ContainerError::Bundle {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(bundle_err)?;
    }
    let json = serde_json::to_vec(value).map_err(|e| bundle_err(io::Error::other(e)))?;
    fs::write(path, json).map_err(bundle_err)
}

fn with_stdio(
    builder: ContainerBuilder,
    stdio: StdioSetup,
    console: Option<&ConsoleSocket>,
) -> ContainerBuilder {
    match stdio {
        StdioSetup::Pipes(child) => builder
            .with_stdin(child.stdin)
            .with_stdout(child.stdout)
            .with_stderr(child.stderr),
        StdioSetup::Tty => builder.with_console_socket(console.map(|c| c.path.clone())),
    }
}

/// The listening end of the console socket libcontainer connects to during
/// the build; the container sends its pty master over the connection.
struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    fn maybe(dir: &Path, name: &str, stdio: &StdioSetup) -> Result<Option<Self>, ContainerError> {
        if !matches!(stdio, StdioSetup::Tty) {
            return Ok(None);
        }
        fs::create_dir_all(dir).map_err(ContainerError::Console)?;
        let path = dir.join(format!("{name}.sock"));
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(ContainerError::Console)?;
        // The connection is queued during build(); never wait for one that
        // did not come.
        listener
            .set_nonblocking(true)
            .map_err(ContainerError::Console)?;
        Ok(Some(ConsoleSocket { path, listener }))
    }

    fn receive_master(self) -> Result<OwnedFd, ContainerError> {
        let (conn, _) = self.listener.accept().map_err(ContainerError::Console)?;
        let _ = fs::remove_file(&self.path);
        let mut name = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| ContainerError::Console(e.into()))?;
        for c in msg.cmsgs().map_err(|e| ContainerError::Console(e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(ContainerError::Console(io::Error::other(
            "no pty master received on the console socket",
        )))
    }
}

/// The agent's `oom_score_adj`, saved across a libcontainer build.
struct OomScoreAdj(Option<String>);

const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

impl OomScoreAdj {
    fn save() -> Self {
        OomScoreAdj(fs::read_to_string(OOM_SCORE_ADJ).ok())
    }

    fn restore(self) {
        if let Some(v) = self.0 {
            if fs::read_to_string(OOM_SCORE_ADJ).ok().as_deref() != Some(v.as_str()) {
                if let Err(e) = fs::write(OOM_SCORE_ADJ, v.trim()) {
                    log::warn!("cannot restore the agent's oom_score_adj: {e}");
                }
            }
        }
    }
}
