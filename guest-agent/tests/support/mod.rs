//! Host test environment: root check, a private mount namespace with cgroup2
//! at /sys/fs/cgroup, a busybox rootfs, and the real agent serving on unix
//! sockets in a temp dir.

#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_agent::config::Options;
use bulkhead_agent::sandbox::{Sandbox, SandboxOptions};
use bulkhead_agent::server::{self, ListenAddr};
use bulkhead_protocol::proto;
use bulkhead_protocol::stdio::{AttachStatus, StdioHeader, StreamKind};
use bulkhead_protocol::ttrpc_api::AgentClient;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "stty", "true", "false", "dd", "head", "id", "hostname", "env",
    "ls", "kill", "tr", "wc", "printf", "test", "mkdir",
];

pub use bulkhead_test_skip::skip;

/// Runs this test thread in its own mount namespace where /sys/fs/cgroup is
/// a cgroup2 mount (the host's hybrid layout puts it at .../unified).
fn enter_cgroup2_ns() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    let is_cgroup2 = |p: &str| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false)
    };
    if is_cgroup2("/sys/fs/cgroup") {
        return Ok(());
    }
    if !is_cgroup2("/sys/fs/cgroup/unified") {
        return Err("no cgroup2 hierarchy on this host".into());
    }
    mount(
        Some("/sys/fs/cgroup/unified"),
        "/sys/fs/cgroup",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind cgroup2 on /sys/fs/cgroup: {e}"))
}

pub fn cgroup_controller_available(name: &str) -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .map(|s| s.split_whitespace().any(|c| c == name))
        .unwrap_or(false)
}

pub fn make_busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

/// A runc-style default spec running `args`.
pub fn spec(args: &[&str]) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bulkhead-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

pub fn process(args: &[&str]) -> Value {
    let mut s = spec(args);
    s["process"].take()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique container id for this test process.
pub fn unique_id(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub api: PathBuf,
    pub stdio: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

impl TestEnv {
    /// `None` (after printing why) when the host cannot run containers.
    pub fn new() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            skip("container tests need root");
            return None;
        }
        if !Path::new(BUSYBOX).exists() {
            skip("needs a static busybox at /bin/busybox (Debian busybox-static)");
            return None;
        }
        if let Err(e) = enter_cgroup2_ns() {
            skip(format!("no usable cgroup2: {e}"));
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = make_busybox_rootfs(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Some(TestEnv {
            api: dir.path().join("agent.sock"),
            stdio: dir.path().join("stdio.sock"),
            rootfs,
            rt,
            dir,
        })
    }

    pub fn options(&self) -> Options {
        Options {
            log_level: log::LevelFilter::Debug,
            log_format: Default::default(),
            api: ListenAddr::Unix(self.api.clone()),
            stdio: ListenAddr::Unix(self.stdio.clone()),
            state_dir: self.dir.path().join("state"),
        }
    }

    /// Starts the real agent (sandbox + ttrpc + stdio server) in this
    /// runtime. Keep the returned server alive.
    pub async fn start_agent(&self) -> (Arc<Sandbox>, ttrpc::r#async::Server) {
        let opts = self.options();
        let sandbox = Sandbox::new(SandboxOptions {
            state_dir: opts.state_dir.clone(),
            manage_system: false,
        })
        .unwrap();
        sandbox.spawn_oom_watcher();
        let (tx, _) = tokio::sync::watch::channel(false);
        let server = server::start(Arc::clone(&sandbox), &opts.api, &opts.stdio, tx)
            .await
            .unwrap();
        (sandbox, server)
    }

    pub async fn client(&self) -> AgentClient {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", self.api.display()))
            .await
            .unwrap();
        AgentClient::new(c)
    }

    /// Opens a stdio stream and checks the agent's answer.
    pub async fn attach(
        &self,
        container_id: &str,
        exec_id: &str,
        stream: StreamKind,
    ) -> Result<UnixStream, AttachStatus> {
        let mut s = UnixStream::connect(&self.stdio).await.unwrap();
        let header = StdioHeader::new(container_id, exec_id, stream)
            .encode()
            .unwrap();
        s.write_all(&header).await.unwrap();
        let mut status = [0u8; 1];
        s.read_exact(&mut status).await.unwrap();
        match AttachStatus::from_byte(status[0]) {
            AttachStatus::Ok => Ok(s),
            other => Err(other),
        }
    }
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

pub fn create_req(
    id: &str,
    rootfs: &Path,
    spec: &Value,
    stdin: bool,
    tty: bool,
) -> proto::CreateContainerRequest {
    let mut r = proto::CreateContainerRequest::new();
    r.container_id = id.to_owned();
    r.exec_id = "init".to_owned();
    r.oci_spec_json = serde_json::to_vec(spec).unwrap();
    r.rootfs_path = rootfs.display().to_string();
    r.stdin = stdin;
    r.tty = tty;
    r
}

pub fn start_req(id: &str) -> proto::StartContainerRequest {
    let mut r = proto::StartContainerRequest::new();
    r.container_id = id.to_owned();
    r
}

pub fn wait_req(id: &str, exec_id: &str) -> proto::WaitProcessRequest {
    let mut r = proto::WaitProcessRequest::new();
    r.container_id = id.to_owned();
    r.exec_id = exec_id.to_owned();
    r
}

pub fn remove_req(id: &str) -> proto::RemoveContainerRequest {
    let mut r = proto::RemoveContainerRequest::new();
    r.container_id = id.to_owned();
    r
}

/// Creates container `id` from `spec` on the test rootfs (no stdin, no terminal); its pid.
pub async fn create(env: &TestEnv, client: &AgentClient, id: &str, spec: &Value) -> u32 {
    let req = create_req(id, &env.rootfs, spec, false, false);
    let created = client.create_container(ctx(), &req).await.unwrap();
    created.pid
}

pub async fn start(client: &AgentClient, id: &str) {
    client.start_container(ctx(), &start_req(id)).await.unwrap();
}

/// Waits for the init process of container `id`.
pub async fn wait_init(client: &AgentClient, id: &str) -> proto::WaitProcessResponse {
    client.wait_process(ctx(), &wait_req(id, "")).await.unwrap()
}

pub async fn remove(client: &AgentClient, id: &str) {
    client
        .remove_container(ctx(), &remove_req(id))
        .await
        .unwrap();
}

pub async fn read_all(mut s: UnixStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("stream ends")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `needle` appears (or panics after a timeout).
pub async fn read_until(s: &mut UnixStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.contains(needle) {
            return text;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {text:?}"))
            .unwrap();
        assert!(n > 0, "stream ended before {needle:?}; got {text:?}");
        out.extend_from_slice(&buf[..n]);
    }
}
