//! The sandbox lifecycle against test doubles: `fake-vmm.py` in place of `bulkhead-vmm`
//! (a real child process with the real command line, relaying hybrid vsock) and an
//! in-process fake agent speaking the real ttrpc API and stdio header. Checks the container
//! operations, the error for each way a start can fail, and that nothing is left behind.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_protocol::stdio::AttachStatus;
use bulkhead_sandbox::{
    AgentConn, AgentEndpoint, ContainerConfig, ExecConfig, Phase, ProcessRef, Sandbox,
    SandboxConfig, SandboxError, StdioConfig, StdioError, StreamKind, VirtiofsdOptions, VmExit,
    WinSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn config(run_root: &Path, guest: &Path, id: &str) -> SandboxConfig {
    let mut c = SandboxConfig::new(id, &support::fake_vmm(), guest);
    c.run_root = run_root.to_path_buf();
    c.agent_timeout = Duration::from_secs(10);
    c.destroy_timeout = Duration::from_secs(5);
    c.hostname = Some("pod-a".into());
    c
}

fn container(id: &str, rootfs: PathBuf) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        exec_id: "init".into(),
        spec_json: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
        rootfs,
        stdio: StdioConfig {
            stdin: true,
            tty: false,
        },
    }
}

fn pid_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_through_the_fake_vm() {
    let root = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    // The agent comes up late: the sandbox must retry through the VMM's refusals.
    let guest_dir = guest.path().to_path_buf();
    let agent_task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        support::start_fake_agent(&guest_dir).await
    });

    let mut cfg = config(root.path(), guest.path(), "pod-1");
    // A stand-in virtiofsd that listens on its socket like the real one (the sandbox
    // connects and hands the connection to the VMM).
    let fsd = root.path().join("fake-virtiofsd");
    std::fs::write(
        &fsd,
        "#!/bin/sh\necho $$ > \"$0.pid\"\nsock=${1#--socket-path=}\nexec python3 -c \
         'import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(1)\ntime.sleep(600)' \"$sock\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fsd, std::fs::Permissions::from_mode(0o755)).unwrap();
    cfg.virtiofsd = Some(VirtiofsdOptions {
        binary: fsd,
        ..Default::default()
    });

    let sandbox = Sandbox::start(cfg).await.unwrap();
    let agent = agent_task.await.unwrap();
    let run_dir = sandbox.run_dir().to_path_buf();
    assert_eq!(run_dir, root.path().join("pod-1"));
    assert!(sandbox.shared_dir().is_dir());
    assert_eq!(sandbox.agent().version().agent_version, "fake-agent 0.0");
    {
        let st = agent.agent.state.lock().unwrap();
        let sb = st.sandbox.as_ref().unwrap();
        assert_eq!(sb.sandbox_id, "pod-1");
        assert_eq!(sb.hostname, "pod-a");
        assert_eq!(sb.shared_fs_tag, "bulkhead");
    }
    // The VMM got the real command line: the vsock listener and virtiofsd's connection
    // are inherited descriptors (after no taps: 3 and 4), the console is its stdout, capped.
    let console = sandbox.console_tail(50);
    assert!(console.contains("--fs bulkhead=fd=3"), "{console}");
    assert!(console.contains("--vsock fd=4"), "{console}");
    assert!(console.contains("--serial stdout"), "{console}");
    assert!(console.contains("--serial-max-bytes 16777216"), "{console}");
    // The guest's view of the shared directory is read-only.
    let view = run_dir.join("shared");
    let planted = std::os::unix::fs::symlink("/", view.join("c1"));
    assert_eq!(
        planted.unwrap_err().raw_os_error(),
        Some(libc::EROFS),
        "the guest could plant a symlink"
    );

    // Containers.
    let host_rootfs = sandbox.shared_dir().join("c1/rootfs");
    std::fs::create_dir_all(&host_rootfs).unwrap();
    let guest_rootfs = sandbox.guest_path(&host_rootfs).unwrap();
    assert_eq!(guest_rootfs, Path::new("/run/bulkhead/shared/c1/rootfs"));
    let pid = sandbox
        .create_container(&container("c1", guest_rootfs))
        .await
        .unwrap();
    assert_eq!(pid, 42);
    let init = ProcessRef::new("c1", "").unwrap();

    let mut stdout = sandbox.open_stdio(&init, StreamKind::Stdout).await.unwrap();
    let mut stdin = sandbox.open_stdio(&init, StreamKind::Stdin).await.unwrap();
    sandbox.start_container("c1").await.unwrap();
    let mut out = String::new();
    stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "Stdout:c1/\n");
    stdin.write_all(b"input bytes").await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = agent.agent.state.lock().unwrap().processes[&("c1".into(), "".into())]
            .stdin
            .clone();
        if got == b"input bytes" {
            break;
        }
        assert!(Instant::now() < deadline, "stdin never arrived: {got:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // An exec, waited for while it is signalled.
    let exec = ExecConfig {
        process: ProcessRef::new("c1", "e1").unwrap(),
        process_json: br#"{"args":["sh"]}"#.to_vec(),
        stdio: StdioConfig {
            stdin: false,
            tty: true,
        },
    };
    assert_eq!(sandbox.exec(&exec).await.unwrap(), 43);
    let mut tty = sandbox
        .open_stdio(&exec.process, StreamKind::Tty)
        .await
        .unwrap();
    tty.write_all(b"echo").await.unwrap();
    let mut echo = [0u8; 4];
    tty.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"echo");
    sandbox
        .resize(
            &exec.process,
            WinSize {
                rows: 40,
                columns: 120,
            },
        )
        .await
        .unwrap();
    let waiter = {
        let process = exec.process.clone();
        let sandbox = &sandbox;
        async move { sandbox.wait(&process).await }
    };
    let (exit, signalled) = tokio::join!(waiter, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sandbox.signal(&exec.process, 15).await
    });
    signalled.unwrap();
    assert_eq!(exit.unwrap().exit_status, 143);

    sandbox.close_stdin(&init).await.unwrap();
    let stats = sandbox.stats("c1").await.unwrap();
    assert_eq!(stats.memory.usage_bytes, 4096);
    assert_eq!(stats.memory.limit_bytes, None);
    assert_eq!(sandbox.next_oom_event().await.unwrap(), "c1");
    {
        let st = agent.agent.state.lock().unwrap();
        assert!(st.processes[&("c1".into(), "".into())].stdin_closed);
        assert_eq!(
            st.processes[&("c1".into(), "e1".into())].winsize,
            Some((40, 120))
        );
        assert_eq!(
            st.containers["c1"].rootfs_path,
            "/run/bulkhead/shared/c1/rootfs"
        );
    }

    // Errors name the phase and keep the agent's code.
    let err = sandbox.start_container("nope").await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::ContainerStart));
    assert_eq!(err.agent_code(), Some(ttrpc::Code::NOT_FOUND));
    assert!(err.to_string().contains("no container nope"), "{err}");
    let err = sandbox
        .open_stdio(&ProcessRef::new("nope", "").unwrap(), StreamKind::Stdout)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::Stdio(StdioError::Refused(AttachStatus::NotFound))
        ),
        "{err:?}"
    );
    assert!(matches!(
        sandbox.signal(&init, 0).await,
        Err(SandboxError::InvalidArgument(_))
    ));

    sandbox.remove_container("c1").await.unwrap();

    // Destroy: the guest powers off, the VMM exits 0, nothing is left.
    let vmm_pid = sandbox.vmm_pid();
    let exit = sandbox.destroy().await.unwrap();
    assert_eq!(exit, VmExit::Shutdown);
    assert!(agent.agent.state.lock().unwrap().destroyed);
    assert!(pid_gone(vmm_pid));
    let fsd_pid = std::fs::read_to_string(root.path().join("fake-virtiofsd.pid")).unwrap();
    assert!(
        pid_gone(fsd_pid.trim().parse().unwrap()),
        "virtiofsd survived"
    );
    assert!(!run_dir.exists());
    assert_eq!(sandbox.destroy().await.unwrap(), VmExit::Shutdown);
    // Only the fake virtiofsd and its pid file remain in the run root.
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_during_boot_reports_the_console() {
    let root = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path(), guest.path(), "pod-panic");
    cfg.cmdline = Some("panic".into());
    let err = Sandbox::start(cfg).await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::KernelBoot));
    assert_eq!(err.vm_exit(), Some(VmExit::GuestCrash));
    let text = err.to_string();
    assert!(text.contains("Kernel panic - not syncing"), "{text}");
    assert!(!root.path().join("pod-panic").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_failure_reports_its_log() {
    let root = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path(), guest.path(), "pod-kvm");
    cfg.cmdline = Some("vmm-error".into());
    let err = Sandbox::start(cfg).await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::VmmStart));
    assert!(matches!(
        err,
        SandboxError::VmmFailed {
            exit: VmExit::VmmError,
            ..
        }
    ));
    assert!(err.to_string().contains("cannot open /dev/kvm"), "{err}");
    assert!(!root.path().join("pod-kvm").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_answers_times_out_and_cleans_up() {
    let root = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    // A shell stand-in (starts in milliseconds even on a loaded machine): writes the
    // console (its stdout), never accepts on vsock.
    let vmm = root.path().join("hanging-vmm");
    std::fs::write(
        &vmm,
        "#!/bin/sh\necho '[    0.1] fake-vmm: guest stuck'\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = config(root.path(), guest.path(), "pod-hang");
    cfg.vmm_binary = vmm;
    cfg.agent_timeout = Duration::from_secs(2);
    let start = Instant::now();
    let err = Sandbox::start(cfg).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(err.phase(), Some(Phase::AgentConnect));
    let text = err.to_string();
    assert!(
        text.ends_with("fake-vmm: guest stuck"),
        "console tail missing: {text}"
    );
    assert!(!root.path().join("pod-hang").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_dies_mid_request_is_reported_as_gone() {
    let root = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    let _agent = support::start_fake_agent(guest.path()).await;
    let sandbox = Sandbox::start(config(root.path(), guest.path(), "pod-die"))
        .await
        .unwrap();
    sandbox
        .create_container(&container("c1", "/run/bulkhead/shared/c1".into()))
        .await
        .unwrap();
    let init = ProcessRef::new("c1", "").unwrap();
    let pid = sandbox.vmm_pid();
    let (waited, _) = tokio::join!(sandbox.wait(&init), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // SAFETY: kill(2) on the fake VMM's pid, which is our unreaped child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let err = waited.unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::VmGone {
                phase: Phase::Wait,
                exit: VmExit::Signal(9),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(sandbox.vm_exit(), Some(VmExit::Signal(9)));
    // Destroy after a crash still cleans up.
    assert_eq!(sandbox.destroy().await.unwrap(), VmExit::Signal(9));
    assert!(!root.path().join("pod-die").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_sandbox_kills_the_vm_and_removes_the_directory() {
    let root = tempfile::tempdir().unwrap();
    let guest = tempfile::tempdir().unwrap();
    let _agent = support::start_fake_agent(guest.path()).await;
    let sandbox = Sandbox::start(config(root.path(), guest.path(), "pod-drop"))
        .await
        .unwrap();
    let pid = sandbox.vmm_pid();
    drop(sandbox);
    assert!(!root.path().join("pod-drop").exists());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pid_gone(pid) {
        assert!(Instant::now() < deadline, "VMM {pid} survived the drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_conn_over_plain_unix_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let agent = support::start_fake_agent(dir.path()).await;
    let endpoint = AgentEndpoint::Unix {
        ttrpc: agent.ttrpc_socket.clone(),
        stdio: agent.stdio_socket.clone(),
    };
    let conn = AgentConn::connect(
        endpoint,
        Instant::now() + Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(conn.check().await.unwrap());
    conn.create_container(&container("c2", "/rootfs".into()))
        .await
        .unwrap();
    let err = conn
        .create_container(&container("c2", "/rootfs".into()))
        .await
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ttrpc::Code::ALREADY_EXISTS));
    assert_eq!(err.phase(), Some(Phase::ContainerCreate));
    let mut err_stream = conn
        .open_stdio(&ProcessRef::new("c2", "init").unwrap(), StreamKind::Stderr)
        .await
        .unwrap();
    let mut text = String::new();
    err_stream.read_to_string(&mut text).await.unwrap();
    // "init" is the CreateContainer exec id: the agent maps it to the init process.
    assert_eq!(text, "Stderr:c2/init\n");
    // No agent listening: a clear timeout.
    let absent = AgentEndpoint::Unix {
        ttrpc: dir.path().join("absent.sock"),
        stdio: dir.path().join("absent.sock"),
    };
    let err = AgentConn::connect(
        absent,
        Instant::now() + Duration::from_millis(200),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert_eq!(err.phase(), Some(Phase::AgentConnect));
}
