//! The guest agent in a real guest: `bulkhead-vmm` boots the guest kernel with the agent
//! initramfs, virtiofsd exports the sandbox's shared directory, and the host drives busybox
//! containers through the sandbox library over hybrid vsock: stdio in both directions,
//! exit statuses, exec, signals, a tty with resize, cgroup stats, an OOM kill, a refused
//! spec, and a teardown that leaves nothing behind.
//!
//! Needs a KVM that boots Linux (run it through `tests/harness/run-in-kvm.sh`),
//! `BULKHEAD_INITRD` (`guest-agent/build-initramfs.sh`), virtiofsd and `/bin/busybox`;
//! skips with the reason otherwise. One VM serves every step: a boot costs tens of seconds
//! under nested emulation. On failure the guest console is printed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_e2e::guest::SpecOptions;
use bulkhead_e2e::guest::{busybox_rootfs, leftovers, process_json, spec_json, GuestArtifacts};
use bulkhead_e2e::kvm::require_linux_kvm;
use bulkhead_e2e::skip_test;
use bulkhead_log::error_chain;
use bulkhead_sandbox::{
    ContainerConfig, ExecConfig, ProcessRef, Sandbox, StdioConfig, StreamKind, VmExit, WinSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const TEST: &str = "agent_runs_containers_in_a_real_guest";
/// Time limit of one step (a guest under nested emulation is slow, not stuck).
const STEP: Duration = Duration::from_secs(120);
const SIGTERM: u32 = 15;

/// Prints the guest console and the VMM log when the test panics (before the sandbox is
/// dropped and its run directory removed).
struct ConsoleOnPanic(PathBuf);

impl Drop for ConsoleOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["console.log", "vmm.log", "virtiofsd.log"] {
                let text = std::fs::read(self.0.join(name)).unwrap_or_default();
                eprintln!(
                    "----- {name} -----\n{}\n----- end of {name} -----",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }
}

async fn step<T, E: std::error::Error>(what: &str, fut: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {}", error_chain(&e)),
        Err(_) => panic!("{what}: no answer within {STEP:?}"),
    }
}

async fn read_all(mut s: UnixStream) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(STEP, s.read_to_end(&mut out)).await {
        Ok(r) => {
            r.expect("reading a stdio stream");
        }
        Err(_) => panic!(
            "stream did not end within {STEP:?}; got {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn container(id: &str, rootfs: &Path, args: &[&str], options: SpecOptions) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        exec_id: String::new(),
        spec_json: spec_json(args, options),
        rootfs: rootfs.to_path_buf(),
        stdio: StdioConfig {
            stdin: options.terminal,
            tty: options.terminal,
        },
    }
}

fn init(id: &str) -> ProcessRef {
    ProcessRef::new(id, "").expect("valid id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_containers_in_a_real_guest() {
    if !require_linux_kvm(TEST) {
        return;
    }
    let artifacts = match GuestArtifacts::locate() {
        Ok(a) => a,
        Err(reason) => return skip_test(TEST, reason),
    };
    let run_root = PathBuf::from(format!("/tmp/bulkhead-agent-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&run_root).unwrap();

    let launched = Instant::now();
    let sandbox = match Sandbox::start(artifacts.sandbox_config("e2e", &run_root)).await {
        Ok(s) => s,
        Err(e) => panic!("sandbox start: {}", error_chain(&e)),
    };
    let _console = ConsoleOnPanic(sandbox.run_dir().to_path_buf());
    assert!(step("Check", sandbox.agent().check()).await);
    eprintln!("launch to agent answering Check: {:?}", launched.elapsed());
    let vmm_pid = sandbox.vmm_pid();

    let rootfs_host = sandbox.shared_dir().join("busybox");
    busybox_rootfs(&rootfs_host).unwrap();
    let rootfs = sandbox.guest_path(&rootfs_host).unwrap();

    // Both output streams and the exit status of a container in its own pid namespace.
    let started = Instant::now();
    let c = container(
        "out",
        &rootfs,
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        SpecOptions {
            pid_namespace: true,
            ..Default::default()
        },
    );
    let pid = step("create out", sandbox.create_container(&c)).await;
    assert!(pid > 1, "guest pid {pid}");
    let out = step(
        "stdout",
        sandbox.open_stdio(&init("out"), StreamKind::Stdout),
    )
    .await;
    let err = step(
        "stderr",
        sandbox.open_stdio(&init("out"), StreamKind::Stderr),
    )
    .await;
    step("start out", sandbox.start_container("out")).await;
    assert_eq!(read_all(out).await, "to-stdout\n");
    assert_eq!(read_all(err).await, "to-stderr\n");
    let exit = step("wait out", sandbox.wait(&init("out"))).await;
    assert_eq!(exit.exit_status, 3);
    // The guest's wall clock (kvm-clock, no RTC) agrees with the host's.
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let skew = Duration::from_nanos((host_now - exit.exited_at_unix_nanos).unsigned_abs());
    eprintln!(
        "guest exit time {} ns, host now {host_now} ns",
        exit.exited_at_unix_nanos
    );
    assert!(
        skew < Duration::from_secs(300),
        "guest clock off by {skew:?}"
    );
    eprintln!("first container, create to exit: {:?}", started.elapsed());
    step("remove out", sandbox.remove_container("out")).await;

    // exec in a running container, stats, SIGTERM. No pid namespace: a namespace's init
    // ignores SIGTERM without a handler, so `sleep` must not be PID 1 there.
    let c = container(
        "sleeper",
        &rootfs,
        &["sleep", "600"],
        SpecOptions::default(),
    );
    step("create sleeper", sandbox.create_container(&c)).await;
    step("start sleeper", sandbox.start_container("sleeper")).await;
    let exec = ExecConfig {
        process: ProcessRef::new("sleeper", "e1").unwrap(),
        process_json: process_json(&["sh", "-c", "echo exec-out $(hostname); exit 5"], false)
            .into_bytes(),
        stdio: StdioConfig::default(),
    };
    step("exec", sandbox.exec(&exec)).await;
    let exec_out = step(
        "exec stdout",
        sandbox.open_stdio(&exec.process, StreamKind::Stdout),
    )
    .await;
    assert_eq!(read_all(exec_out).await, "exec-out e2e-container\n");
    assert_eq!(
        step("wait exec", sandbox.wait(&exec.process))
            .await
            .exit_status,
        5
    );
    let stats = step("stats", sandbox.stats("sleeper")).await;
    eprintln!("stats of a sleeping container: {stats:?}");
    assert!(stats.memory.usage_bytes > 0, "{stats:?}");
    assert!(stats.pids.current >= 1, "{stats:?}");
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");
    step("SIGTERM", sandbox.signal(&init("sleeper"), SIGTERM)).await;
    assert_eq!(
        step("wait sleeper", sandbox.wait(&init("sleeper")))
            .await
            .exit_status,
        143
    );
    step("remove sleeper", sandbox.remove_container("sleeper")).await;

    // A terminal: input is echoed, a resize is what `stty size` reports.
    let c = container(
        "tty",
        &rootfs,
        &["sh"],
        SpecOptions {
            terminal: true,
            pid_namespace: true,
            ..Default::default()
        },
    );
    step("create tty", sandbox.create_container(&c)).await;
    let mut term = step(
        "tty stream",
        sandbox.open_stdio(&init("tty"), StreamKind::Tty),
    )
    .await;
    step("start tty", sandbox.start_container("tty")).await;
    let size = WinSize {
        rows: 33,
        columns: 101,
    };
    step("resize", sandbox.resize(&init("tty"), size)).await;
    term.write_all(b"stty size; echo $((6*7))\nexit 0\n")
        .await
        .unwrap();
    let screen = read_all(term).await;
    assert!(
        screen.contains("stty size; echo $((6*7))"),
        "no echo: {screen:?}"
    );
    assert!(screen.contains("33 101"), "no resize: {screen:?}");
    assert!(screen.contains("42"), "no output: {screen:?}");
    assert_eq!(
        step("wait tty", sandbox.wait(&init("tty")))
            .await
            .exit_status,
        0
    );
    step("remove tty", sandbox.remove_container("tty")).await;

    // A create that fails inside libcontainer (a terminal without devpts) leaves no cgroup
    // behind: a container that sees the guest's cgroup tree finds only its own.
    let c = container(
        "nopts",
        &rootfs,
        &["sh"],
        SpecOptions {
            terminal: true,
            pid_namespace: true,
            no_devpts: true,
            ..Default::default()
        },
    );
    let err = sandbox.create_container(&c).await.unwrap_err();
    eprintln!("terminal without devpts refused: {err}");
    let c = container(
        "cgls",
        &rootfs,
        &["sh", "-c", "cd /sys/fs/cgroup/bulkhead && echo */"],
        SpecOptions {
            guest_cgroups: true,
            ..Default::default()
        },
    );
    step("create cgls", sandbox.create_container(&c)).await;
    let out = step(
        "cgls stdout",
        sandbox.open_stdio(&init("cgls"), StreamKind::Stdout),
    )
    .await;
    step("start cgls", sandbox.start_container("cgls")).await;
    assert_eq!(
        read_all(out).await,
        "cgls/\n",
        "container cgroups left behind"
    );
    assert_eq!(
        step("wait cgls", sandbox.wait(&init("cgls")))
            .await
            .exit_status,
        0
    );
    step("remove cgls", sandbox.remove_container("cgls")).await;

    // memory.max 16 MiB and a shell doubling a string: the OOM killer, an OOM event.
    let limit = 16 << 20;
    let c = container(
        "hog",
        &rootfs,
        &["sh", "-c", "x=a; while :; do x=$x$x; done"],
        SpecOptions {
            memory_limit: Some(limit),
            ..Default::default()
        },
    );
    step("create hog", sandbox.create_container(&c)).await;
    step("start hog", sandbox.start_container("hog")).await;
    let oom = step("GetOOMEvent", sandbox.next_oom_event()).await;
    assert_eq!(oom, "hog");
    assert_eq!(
        step("wait hog", sandbox.wait(&init("hog")))
            .await
            .exit_status,
        137
    );
    let stats = step("hog stats", sandbox.stats("hog")).await;
    assert_eq!(stats.memory.limit_bytes, Some(limit), "{stats:?}");
    assert!(stats.memory.oom_kill_events >= 1, "{stats:?}");
    step("remove hog", sandbox.remove_container("hog")).await;

    // A malformed spec: a clear error with a code, and the agent keeps working.
    let mut bad = container("bad", &rootfs, &["true"], SpecOptions::default());
    bad.spec_json = br#"{"ociVersion":"1.0.2","process":"oops"}"#.to_vec();
    let err = sandbox.create_container(&bad).await.unwrap_err();
    let message = err.to_string();
    eprintln!("malformed spec refused: {message}");
    assert_eq!(
        format!("{:?}", err.agent_code()),
        "Some(INVALID_ARGUMENT)",
        "{err:?}"
    );
    assert!(message.contains("spec"), "{message}");
    assert!(step("Check after the bad spec", sandbox.agent().check()).await);
    let c = container("after", &rootfs, &["true"], SpecOptions::default());
    step("create after", sandbox.create_container(&c)).await;
    step("start after", sandbox.start_container("after")).await;
    assert_eq!(
        step("wait after", sandbox.wait(&init("after")))
            .await
            .exit_status,
        0
    );
    step("remove after", sandbox.remove_container("after")).await;

    // The VMM complained about nothing (no seccomp trap, device error, thread left with
    // capabilities).
    let run_dir = sandbox.run_dir().to_path_buf();
    let vmm_log = std::fs::read_to_string(run_dir.join("vmm.log")).unwrap();
    let complaints: Vec<&str> = vmm_log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(complaints.is_empty(), "VMM log: {complaints:#?}");

    // DestroySandbox: the VM powers off (status 0) and nothing is left.
    let exit = step("destroy", sandbox.destroy()).await;
    assert_eq!(exit, VmExit::Shutdown);
    assert!(!run_dir.exists(), "{} is left", run_dir.display());
    let left = leftovers(&run_root, vmm_pid);
    assert!(left.is_empty(), "left behind: {left:#?}");
    std::fs::remove_dir(&run_root).unwrap();
}

/// A sandbox dropped without DestroySandbox (the shim or CLI failing half-way) still takes
/// its VM, virtiofsd, sockets and directory with it, even with a container running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sandbox_leaves_nothing() {
    const NAME: &str = "a_dropped_sandbox_leaves_nothing";
    if !require_linux_kvm(NAME) {
        return;
    }
    let artifacts = match GuestArtifacts::locate() {
        Ok(a) => a,
        Err(reason) => return skip_test(NAME, reason),
    };
    let run_root = PathBuf::from(format!("/tmp/bulkhead-agent-drop-{}", std::process::id()));
    std::fs::create_dir_all(&run_root).unwrap();
    let sandbox = match Sandbox::start(artifacts.sandbox_config("dropped", &run_root)).await {
        Ok(s) => s,
        Err(e) => panic!("sandbox start: {}", error_chain(&e)),
    };
    let vmm_pid = sandbox.vmm_pid();
    {
        let _console = ConsoleOnPanic(sandbox.run_dir().to_path_buf());
        let rootfs_host = sandbox.shared_dir().join("busybox");
        busybox_rootfs(&rootfs_host).unwrap();
        let rootfs = sandbox.guest_path(&rootfs_host).unwrap();
        let c = container("busy", &rootfs, &["sleep", "600"], SpecOptions::default());
        step("create busy", sandbox.create_container(&c)).await;
        step("start busy", sandbox.start_container("busy")).await;
    }
    // Drop kills without waiting: give the processes time to finish dying (the VMM tears
    // down its guest memory first) and to be reaped.
    drop(sandbox);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left = leftovers(&run_root, vmm_pid);
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = leftovers(&run_root, vmm_pid);
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
    std::fs::remove_dir(&run_root).unwrap();
}
