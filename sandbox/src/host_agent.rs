//! The guest agent's binary run on the host, for container isolation: the same
//! `bulkhead-agent` (and so the same container code) as inside a microVM, reached over two
//! unix sockets instead of hybrid vsock.
//!
//! This module owns finding the binary ([`find_agent_binary`]: `BULKHEAD_AGENT_BIN`, next
//! to the running executable, then `PATH`), the process's set-up before it runs (a private
//! mount namespace where `/sys/fs/cgroup` is the cgroup2 hierarchy, also on a v1/v2 hybrid
//! host; killed when the process that started it dies), connecting to it, and stopping it.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::process::Child;
use tokio::time::Instant;

use crate::agent::{AgentConn, AgentEndpoint, DEFAULT_RPC_TIMEOUT};
use crate::cgroup::{Cgroup2, Layout};
use crate::error::SandboxError;

/// Names the agent binary explicitly (tests, unusual installations).
pub const AGENT_BIN_ENV: &str = "BULKHEAD_AGENT_BIN";
/// The agent binary's file name.
pub const AGENT_BIN_NAME: &str = "bulkhead-agent";
/// How long a started agent may take to answer.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// DestroySandbox to the agent's exit, before it is killed.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum HostAgentError {
    #[error(
        "no {AGENT_BIN_NAME} binary: {AGENT_BIN_ENV} is not set, there is none next to \
         {beside} and none in PATH (build it: cargo build -p bulkhead-agent)"
    )]
    NotFound { beside: String },
    #[error("{AGENT_BIN_ENV}={0} is not a file")]
    BadEnv(PathBuf),
    #[error(
        "this host has no cgroup2 hierarchy (neither /sys/fs/cgroup nor \
         /sys/fs/cgroup/unified): containers cannot run on the host"
    )]
    NoCgroup2,
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start {binary} in a private mount namespace")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the host agent exited ({status}) before answering; see {}", log.display())]
    Exited { status: String, log: PathBuf },
    #[error("cannot reach the host agent; see {}", log.display())]
    Connect {
        log: PathBuf,
        #[source]
        source: SandboxError,
    },
}

/// How to start one host agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAgentConfig {
    pub binary: PathBuf,
    /// Unix socket of the ttrpc API.
    pub api_socket: PathBuf,
    /// Unix socket of the stdio streams.
    pub stdio_socket: PathBuf,
    /// The agent's `--state-dir` (created if missing). libcontainer puts console sockets
    /// below it: keep it short.
    pub state_dir: PathBuf,
    /// `--log` level: error, warn, info, debug, trace.
    pub log_level: String,
    /// The agent's stderr (its log), appended to.
    pub log_file: PathBuf,
    pub connect_timeout: Duration,
    pub rpc_timeout: Duration,
}

impl HostAgentConfig {
    /// The defaults for the agent binary `binary` listening on `api_socket` and
    /// `stdio_socket`.
    pub fn new(binary: &Path, api_socket: &Path, stdio_socket: &Path, state_dir: &Path) -> Self {
        HostAgentConfig {
            binary: binary.to_path_buf(),
            api_socket: api_socket.to_path_buf(),
            stdio_socket: stdio_socket.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            log_level: "info".into(),
            log_file: PathBuf::from("/dev/null"),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        }
    }

    /// The agent's command line after the binary.
    pub fn args(&self) -> Vec<OsString> {
        let unix = |p: &Path| {
            let mut s = OsString::from("unix:");
            s.push(p);
            s
        };
        vec![
            "--listen".into(),
            unix(&self.api_socket),
            "--stdio-listen".into(),
            unix(&self.stdio_socket),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--log".into(),
            self.log_level.clone().into(),
        ]
    }
}

/// The agent binary: `$BULKHEAD_AGENT_BIN`, else `bulkhead-agent` next to the running
/// executable, else the first in `PATH`.
pub fn find_agent_binary() -> Result<PathBuf, HostAgentError> {
    let exe = std::env::current_exe().ok();
    locate(
        std::env::var_os(AGENT_BIN_ENV),
        exe.as_deref(),
        std::env::var_os("PATH"),
    )
    .map_err(|e| match e {
        Some(bad) => HostAgentError::BadEnv(bad),
        None => HostAgentError::NotFound {
            beside: exe
                .as_deref()
                .and_then(Path::parent)
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "the running executable".into()),
        },
    })
}

/// [`find_agent_binary`] with its inputs given; `Err(Some(path))` when the variable names
/// something that is not a file, `Err(None)` when nothing was found.
fn locate(
    env: Option<OsString>,
    exe: Option<&Path>,
    path_var: Option<OsString>,
) -> Result<PathBuf, Option<PathBuf>> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(Some(p)) };
    }
    let beside = exe
        .and_then(Path::parent)
        .map(|d| d.join(AGENT_BIN_NAME))
        .filter(|p| p.is_file());
    if let Some(p) = beside {
        return Ok(p);
    }
    path_var
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(AGENT_BIN_NAME))
        .find(|p| p.is_file())
        .ok_or(None)
}

/// A running host agent and the connection to it.
#[derive(Debug)]
pub struct HostAgent {
    agent: AgentConn,
    child: tokio::sync::Mutex<Child>,
    pid: Option<u32>,
}

impl HostAgent {
    /// Starts the agent and connects to it. The process runs in a private mount namespace
    /// with cgroup2 at `/sys/fs/cgroup`, and is killed when the thread that started it
    /// ends (`PR_SET_PDEATHSIG`) or this value is dropped.
    pub async fn start(config: &HostAgentConfig) -> Result<HostAgent, HostAgentError> {
        let cgroup2 = Cgroup2::find().ok_or(HostAgentError::NoCgroup2)?;
        std::fs::create_dir_all(&config.state_dir).map_err(|source| HostAgentError::Create {
            path: config.state_dir.clone(),
            source,
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_file)
            .map_err(|source| HostAgentError::Create {
                path: config.log_file.clone(),
                source,
            })?;
        let mut cmd = tokio::process::Command::new(&config.binary);
        cmd.args(config.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let parent = std::process::id();
        let bind_cgroup2 = cgroup2.layout == Layout::Hybrid;
        // SAFETY: the closure runs between fork and exec and makes only system calls
        // (async-signal-safe): no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || enter_namespace(parent, bind_cgroup2));
        }
        let mut child = cmd.spawn().map_err(|source| HostAgentError::Spawn {
            binary: config.binary.clone(),
            source,
        })?;
        let pid = child.id();
        let deadline = Instant::now() + config.connect_timeout;
        let endpoint = AgentEndpoint::Unix {
            ttrpc: config.api_socket.clone(),
            stdio: config.stdio_socket.clone(),
        };
        let connected = tokio::select! {
            a = AgentConn::connect(endpoint, deadline, config.rpc_timeout) => a,
            status = child.wait() => {
                return Err(HostAgentError::Exited {
                    status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    log: config.log_file.clone(),
                });
            }
        };
        match connected {
            Ok(agent) => Ok(HostAgent {
                agent,
                child: tokio::sync::Mutex::new(child),
                pid,
            }),
            Err(source) => {
                let _ = child.kill().await;
                Err(HostAgentError::Connect {
                    log: config.log_file.clone(),
                    source,
                })
            }
        }
    }

    pub fn agent(&self) -> &AgentConn {
        &self.agent
    }

    /// The agent's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Asks the agent to end (DestroySandbox) and waits for it; kills it after `timeout`.
    pub async fn stop(&self, timeout: Duration) {
        let _ = self.agent.destroy_sandbox(timeout).await;
        let mut child = self.child.lock().await;
        if tokio::time::timeout(timeout, child.wait()).await.is_err() {
            log::warn!("the host agent did not exit; killing it");
            let _ = child.kill().await;
        }
    }
}

/// In the agent's child process before exec: die with the parent, a private mount
/// namespace, and cgroup2 bound on `/sys/fs/cgroup` on a hybrid host. Only system calls.
fn enter_namespace(parent: u32, bind_cgroup2: bool) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls with integer arguments or static NUL-terminated strings.
    unsafe {
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
        ))?;
        // The parent may have died before the death signal was armed.
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        if bind_cgroup2 {
            check(libc::mount(
                c"/sys/fs/cgroup/unified".as_ptr(),
                c"/sys/fs/cgroup".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo;

    #[test]
    fn the_binary_is_found_by_variable_then_beside_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, beside_dir, path_dir) = (
            dir.path().join("bin"),
            dir.path().join("beside"),
            dir.path().join("path"),
        );
        for d in [&bin, &beside_dir, &path_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let exe = beside_dir.join("bulkhead");
        let own = bin.join("my-agent");
        std::fs::write(&own, "").unwrap();
        std::fs::write(path_dir.join(AGENT_BIN_NAME), "").unwrap();
        let path_var = Some(std::env::join_paths([&bin, &path_dir]).unwrap());

        assert_eq!(
            locate(Some(own.clone().into()), Some(&exe), path_var.clone()),
            Ok(own.clone())
        );
        let missing = bin.join("nope");
        assert_eq!(
            locate(Some(missing.clone().into()), Some(&exe), path_var.clone()),
            Err(Some(missing))
        );
        assert_eq!(
            locate(None, Some(&exe), path_var.clone()),
            Ok(path_dir.join(AGENT_BIN_NAME))
        );
        std::fs::write(beside_dir.join(AGENT_BIN_NAME), "").unwrap();
        assert_eq!(
            locate(Some("".into()), Some(&exe), path_var),
            Ok(beside_dir.join(AGENT_BIN_NAME))
        );
        assert_eq!(locate(None, None, None), Err(None));
    }

    #[test]
    fn command_line() {
        let c = HostAgentConfig::new(
            Path::new("/b/bulkhead-agent"),
            Path::new("/s/agent.sock"),
            Path::new("/s/stdio.sock"),
            Path::new("/s/a"),
        );
        assert_eq!(
            c.args(),
            [
                "--listen",
                "unix:/s/agent.sock",
                "--stdio-listen",
                "unix:/s/stdio.sock",
                "--state-dir",
                "/s/a",
                "--log",
                "info"
            ]
            .map(OsString::from)
        );
    }

    /// This workspace's agent binary, when built.
    fn built_agent() -> Option<PathBuf> {
        std::env::var_os(AGENT_BIN_ENV)
            .map(PathBuf::from)
            .or_else(|| {
                let p =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bulkhead-agent");
                p.is_file().then_some(p)
            })
    }

    /// As root: the real agent binary starts in a mount namespace of its own, with cgroup2
    /// at /sys/fs/cgroup, answers, and ends on stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_real_agent_runs_in_its_own_mount_namespace_as_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return bulkhead_test_skip::skip("needs root (the agent's mount namespace)");
        }
        let Some(binary) = built_agent() else {
            return bulkhead_test_skip::skip(
                "no agent binary: set BULKHEAD_AGENT_BIN or cargo build -p bulkhead-agent",
            );
        };
        if Cgroup2::find().is_none() {
            return bulkhead_test_skip::skip("needs a cgroup2 hierarchy");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = HostAgentConfig::new(
            &binary,
            &dir.path().join("agent.sock"),
            &dir.path().join("stdio.sock"),
            &dir.path().join("a"),
        );
        config.log_file = dir.path().join("agent.log");
        let agent = HostAgent::start(&config).await.unwrap();
        assert_eq!(
            agent.agent().version().protocol_version,
            bulkhead_protocol::PROTOCOL_VERSION
        );
        let pid = agent.pid().unwrap();
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
        assert_ne!(ns(&pid.to_string()), ns("self"));
        let table = mountinfo::parse(&std::fs::read(format!("/proc/{pid}/mountinfo")).unwrap());
        let cg = mountinfo::topmost(&table, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(cg.fs_type, "cgroup2");
        agent.stop(DEFAULT_STOP_TIMEOUT).await;
        assert!(!Path::new(&format!("/proc/{pid}/exe")).exists());
        let log = std::fs::read_to_string(&config.log_file).unwrap();
        assert!(log.contains("bulkhead-agent"), "{log}");
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_spawn_error() {
        if Cgroup2::find().is_none() {
            return bulkhead_test_skip::skip("needs a cgroup2 hierarchy");
        }
        let dir = tempfile::tempdir().unwrap();
        let config = HostAgentConfig::new(
            &dir.path().join("none"),
            &dir.path().join("agent.sock"),
            &dir.path().join("stdio.sock"),
            &dir.path().join("a"),
        );
        match HostAgent::start(&config).await {
            Err(HostAgentError::Spawn { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
