//! The sandbox driving the real `bulkhead-agent` binary: `fake-vmm.py` stands in for the VMM
//! and the kernel (it runs the agent on the host, in its own mount namespace, as the
//! guest's init, and relays hybrid vsock to the agent's unix sockets); everything else is
//! real: the sandbox library, the ttrpc API, the stdio header, libcontainer containers
//! running busybox.
//!
//! Needs root, cgroup2, `/bin/busybox` and an agent binary (`BULKHEAD_AGENT_BIN`, or
//! `target/debug/bulkhead-agent` of this workspace); skips with the reason otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_sandbox::{
    ContainerConfig, ExecConfig, ProcessRef, Sandbox, SandboxConfig, StdioConfig, StreamKind,
    VmExit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const BUSYBOX: &str = "/bin/busybox";

use bulkhead_test_skip::skip;

fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BULKHEAD_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bulkhead-agent");
    built.exists().then_some(built)
}

fn cgroup2_available() -> bool {
    [
        "/sys/fs/cgroup/cgroup.controllers",
        "/sys/fs/cgroup/unified/cgroup.controllers",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

fn json_args(args: &[&str]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(","))
}

fn process_json(args: &[&str]) -> String {
    format!(
        r#"{{"terminal":false,"user":{{"uid":0,"gid":0}},"args":{},"env":["PATH=/bin"],"cwd":"/",
            "capabilities":{{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}},
            "noNewPrivileges":true}}"#,
        json_args(args)
    )
}

fn spec_json(args: &[&str]) -> Vec<u8> {
    format!(
        r#"{{"ociVersion":"1.0.2","process":{},"root":{{"path":"rootfs","readonly":true}},
            "hostname":"sandbox-test",
            "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
                      {{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}}],
            "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"ipc"}},{{"type":"uts"}},{{"type":"mount"}}]}}}}"#,
        process_json(args)
    )
    .into_bytes()
}

async fn read_all(mut s: UnixStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the stream ends")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_through_the_real_agent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root (the agent creates containers)");
    }
    let Some(agent) = agent_binary() else {
        return skip("no agent binary: set BULKHEAD_AGENT_BIN or build bulkhead-agent");
    };
    if !Path::new(BUSYBOX).exists() {
        return skip("needs a static busybox at /bin/busybox (Debian busybox-static)");
    }
    if !cgroup2_available() {
        return skip("needs a cgroup2 hierarchy");
    }

    let root = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(guest.path());
    let mut cfg = SandboxConfig::new("real-agent-pod", &support::fake_vmm(), guest.path());
    cfg.run_root = root.path().to_path_buf();
    cfg.cmdline = Some(format!("agent={}", agent.display()));
    cfg.agent_timeout = Duration::from_secs(30);
    let sandbox = match Sandbox::start(cfg).await {
        Ok(s) => s,
        Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
    };
    assert_eq!(
        sandbox.agent().version().protocol_version,
        bulkhead_protocol::PROTOCOL_VERSION
    );

    // A container reading stdin, writing both streams, exiting 7.
    let c1 = ContainerConfig {
        id: "c1".into(),
        exec_id: "init".into(),
        spec_json: spec_json(&[
            "sh",
            "-c",
            "read line; echo got:$line; echo oops >&2; exit 7",
        ]),
        rootfs: rootfs.clone(),
        stdio: StdioConfig {
            stdin: true,
            tty: false,
        },
    };
    let pid = sandbox.create_container(&c1).await.unwrap();
    assert!(pid > 1);
    let init = ProcessRef::new("c1", "").unwrap();
    let out = sandbox.open_stdio(&init, StreamKind::Stdout).await.unwrap();
    let err = sandbox.open_stdio(&init, StreamKind::Stderr).await.unwrap();
    let mut input = sandbox.open_stdio(&init, StreamKind::Stdin).await.unwrap();
    sandbox.start_container("c1").await.unwrap();
    input.write_all(b"hello\n").await.unwrap();
    input.shutdown().await.unwrap();
    assert_eq!(read_all(out).await, "got:hello\n");
    assert_eq!(read_all(err).await, "oops\n");
    assert_eq!(sandbox.wait(&init).await.unwrap().exit_status, 7);
    sandbox.remove_container("c1").await.unwrap();

    // A long-running container with an exec, stats, then a kill.
    let c2 = ContainerConfig {
        id: "c2".into(),
        exec_id: String::new(),
        spec_json: spec_json(&["sleep", "600"]),
        rootfs,
        stdio: StdioConfig::default(),
    };
    sandbox.create_container(&c2).await.unwrap();
    sandbox.start_container("c2").await.unwrap();
    let exec = ExecConfig {
        process: ProcessRef::new("c2", "e1").unwrap(),
        process_json: process_json(&["sh", "-c", "echo exec-out; exit 3"]).into_bytes(),
        stdio: StdioConfig::default(),
    };
    sandbox.exec(&exec).await.unwrap();
    let exec_out = sandbox
        .open_stdio(&exec.process, StreamKind::Stdout)
        .await
        .unwrap();
    assert_eq!(read_all(exec_out).await, "exec-out\n");
    assert_eq!(sandbox.wait(&exec.process).await.unwrap().exit_status, 3);
    let stats = sandbox.stats("c2").await.unwrap();
    // cpu.stat exists in every cgroup2 group (the host may not delegate pids/memory).
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");
    let c2_init = ProcessRef::new("c2", "").unwrap();
    sandbox.signal(&c2_init, 9).await.unwrap();
    assert_eq!(sandbox.wait(&c2_init).await.unwrap().exit_status, 137);
    let err = sandbox.start_container("absent").await.unwrap_err();
    assert!(err.agent_code().is_some(), "{err:?}");
    sandbox.remove_container("c2").await.unwrap();

    // DestroySandbox: the agent exits, the fake guest powers off, nothing is left.
    let run_dir = sandbox.run_dir().to_path_buf();
    let exit = sandbox.destroy().await.unwrap();
    assert_eq!(exit, VmExit::Shutdown);
    assert!(!run_dir.exists());
}
