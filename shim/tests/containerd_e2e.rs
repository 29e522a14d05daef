//! The shim under a real containerd (Debian's 1.6.20), driven with `ctr`.
//!
//! Every test starts its own containerd (own config, root on a fresh tmpfs, state, socket,
//! namespace), imports a busybox image built here from `/bin/busybox` (busybox-static), and
//! stops containerd at the end, checking that no shim, VMM or mount is left behind.
//!
//! - `boot_failure_reaches_ctr_and_leaves_nothing`: runs wherever root, containerd and
//!   busybox are: the "VMM" is a script that fails the way a VMM without KVM does; the
//!   error `ctr` prints must name the phase and quote the VMM's log.
//! - `ctr_run_in_a_vm`: the real thing; needs the KVM harness (`BULKHEAD_IN_HARNESS=1`) and
//!   `BULKHEAD_KERNEL`, `BULKHEAD_INITRD`, `BULKHEAD_VMM` (and `BULKHEAD_VIRTIOFSD`, or
//!   virtiofsd in PATH) naming real files.
//!
//! A test that cannot run prints `SKIPPED: reason` and passes.
//! - with `BULKHEAD_AGENT_BIN`: the real agent on the host behind a fake VMM
//!   (`tests/fake-vm/vmm`): the Task API through `ctr` without KVM.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[test]
fn boot_failure_reaches_ctr_and_leaves_nothing() {
    if let Err(reason) = containerd_prerequisites() {
        return skip(&reason);
    }
    let tools = tempfile::tempdir().unwrap();
    let vmm = tools.path().join("failing-vmm");
    write_script(
        &vmm,
        "#!/bin/sh\necho 'error: cannot open /dev/kvm: No such file or directory' >&2\nexit 1\n",
    );
    let kernel = tools.path().join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let c = Containerd::start(
        &[
            ("BULKHEAD_VMM", vmm.to_str().unwrap()),
            ("BULKHEAD_KERNEL", kernel.to_str().unwrap()),
            ("BULKHEAD_INITRD", ""),
            ("BULKHEAD_VIRTIOFSD", ""),
        ],
        "",
    );
    c.import_busybox();
    let out = run(c.ctr().args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "fails",
        "echo",
        "hi",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("ctr run: {stderr}");
    assert!(!out.status.success(), "ctr run succeeded without a VM");
    assert!(
        stderr.contains("starting the VM for fails"),
        "the error names the phase: {stderr}\ncontainerd log:\n{}",
        c.log()
    );
    assert!(
        stderr.contains("cannot open /dev/kvm"),
        "the VMM log is quoted: {stderr}"
    );
    // ctr leaves the container record after a failed task create.
    let _ = run(c.ctr().args(["containers", "rm", "fails"]));
    c.assert_clean();
}

#[test]
fn ctr_run_in_a_vm() {
    if std::env::var("BULKHEAD_IN_HARNESS").as_deref() != Ok("1") {
        return skip("boots a guest: run through the KVM harness (BULKHEAD_IN_HARNESS=1)");
    }
    if let Err(reason) = containerd_prerequisites() {
        return skip(&reason);
    }
    let mut env = Vec::new();
    for var in ["BULKHEAD_KERNEL", "BULKHEAD_INITRD", "BULKHEAD_VMM"] {
        match std::env::var(var) {
            Ok(v) if Path::new(&v).is_file() => env.push((var, v)),
            _ => return skip(&format!("{var} must name a file")),
        }
    }
    match std::env::var("BULKHEAD_VIRTIOFSD")
        .ok()
        .or_else(|| which("virtiofsd").map(|p| p.to_string_lossy().into_owned()))
    {
        Some(v) if Path::new(&v).is_file() => env.push(("BULKHEAD_VIRTIOFSD", v)),
        _ => return skip("virtiofsd not found (set BULKHEAD_VIRTIOFSD)"),
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Containerd::start(&env, "agent_timeout_secs = 120\n");
    let logs = LogCollector::start(&c.run_root);
    c.import_busybox();

    // Output and exit status pass through.
    let out = run(c.ctr().args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "e2e-echo",
        "sh",
        "-c",
        "echo hello from the guest; cat /proc/version; exit 7",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    assert!(stdout.contains("hello from the guest"), "{stdout}");
    c.assert_clean();

    // stdin reaches the container and its EOF ends it.
    let mut child = c
        .ctr()
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, "e2e-cat", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    c.assert_clean();
    eprintln!("{}", logs.dump());
}

#[test]
fn ctr_run_with_the_agent_on_the_host() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();

    // Output and the exit status pass through; the rootfs is the image's.
    let out = run(c.ctr().args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "host-echo",
        "sh",
        "-c",
        "echo hello; ls /bin/busybox; echo oops >&2; exit 7",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}\ncontainerd log:\n{}",
        c.log()
    );
    assert_eq!(stdout, "hello\n/bin/busybox\n");
    assert!(stderr.contains("oops"), "{stderr}");
    c.assert_clean();

    // stdin reaches the container and its EOF ends it.
    let mut child = c
        .ctr()
        .args([
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--cpu-shares",
            "0",
            IMAGE,
            "host-cat",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    c.assert_clean();

    // exec into a running container, kill it, delete it.
    check(c.ctr().args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "host-sleep",
        "sleep",
        "1000",
    ]));
    let out = run(c.ctr().args([
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "host-sleep",
        "sh",
        "-c",
        "echo from exec; exit 3",
    ]));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from exec\n");
    let ps = check(c.ctr().args(["tasks", "ls"]));
    assert!(ps.contains("host-sleep") && ps.contains("RUNNING"), "{ps}");
    // Stats arrive as cgroup v2 metrics containerd can decode.
    let metrics = check(c.ctr().args(["tasks", "metrics", "host-sleep"]));
    eprintln!("ctr tasks metrics: {metrics}");
    assert!(metrics.contains("pids.current"), "{metrics}");
    // Pause is refused with a reason.
    let out = run(c.ctr().args(["tasks", "pause", "host-sleep"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot freeze"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "host-sleep"]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = check(c.ctr().args(["tasks", "ls"]));
        if ps.contains("STOPPED") {
            break;
        }
        assert!(Instant::now() < deadline, "not stopped: {ps}");
        std::thread::sleep(Duration::from_millis(100));
    }
    check(c.ctr().args(["tasks", "delete", "host-sleep"]));
    check(c.ctr().args(["containers", "delete", "host-sleep"]));
    c.assert_clean();
}

#[test]
fn a_dying_vm_ends_its_processes_and_can_be_deleted() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();
    check(c.ctr().args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "doomed",
        "sleep",
        "1000",
    ]));
    let out = run(c.ctr().args([
        "tasks",
        "exec",
        "-d",
        "--exec-id",
        "e1",
        "doomed",
        "sleep",
        "1000",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_status(&c, "doomed", "RUNNING", Duration::from_secs(10));
    let run_root = c.run_root.to_string_lossy().into_owned();
    let vmm = pids_with(&["fake-vmm.py", &run_root]);
    assert_eq!(vmm.len(), 1, "one fake VMM: {vmm:?}");
    // SAFETY: kill takes plain integers; the pid is the fake VMM found above.
    unsafe { libc::kill(vmm[0], libc::SIGKILL) };
    let took = wait_for_status(&c, "doomed", "STOPPED", Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "TaskExit took {took:?}");
    check(c.ctr().args(["tasks", "delete", "doomed"]));
    check(c.ctr().args(["containers", "delete", "doomed"]));
    c.assert_clean();
}

#[test]
fn delete_after_a_killed_shim_removes_the_vm() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();
    check(c.ctr().args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "orphan",
        "sleep",
        "1000",
    ]));
    wait_for_status(&c, "orphan", "RUNNING", Duration::from_secs(10));
    let shim = pids_with(&["containerd-shim-bulkhead-v2", &c.namespace]);
    assert_eq!(shim.len(), 1, "one shim: {shim:?}");
    // SAFETY: kill takes plain integers; the pid is the shim found above.
    unsafe { libc::kill(shim[0], libc::SIGKILL) };
    // containerd notices the dead shim and runs `containerd-shim-bulkhead-v2 delete`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.leftovers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after the shim died: {:#?}\ncontainerd log:\n{}",
            c.leftovers(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = run(c.ctr().args(["tasks", "delete", "orphan"]));
    check(c.ctr().args(["containers", "delete", "orphan"]));
    c.assert_clean();
}

#[test]
fn a_pods_containers_share_one_shim_and_one_vm() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();
    let in_pod = |kind: &str, pod: &str, id: &str, cmd: &[&str]| {
        let mut ctr = c.ctr();
        ctr.args(["run", "-d", "--runtime", RUNTIME, "--cpu-shares", "0"])
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.container-type={kind}"))
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.sandbox-id={pod}"))
            .args([IMAGE, id])
            .args(cmd);
        run(&mut ctr)
    };
    let out = in_pod("sandbox", "pod1", "pod1", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = in_pod("container", "pod1", "app1", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_status(&c, "app1", "RUNNING", Duration::from_secs(10));

    let run_root = c.run_root.to_string_lossy().into_owned();
    assert_eq!(
        pids_with(&["containerd-shim-bulkhead-v2", &c.namespace]).len(),
        1
    );
    assert_eq!(pids_with(&["fake-vmm.py", &run_root]).len(), 1);
    let shared = c.run_root.join(&c.namespace).join("pod1/shared");
    assert!(shared.join("pod1/rootfs/bin/busybox").exists());
    assert!(shared.join("app1/rootfs/bin/busybox").exists());

    // A container of a pod whose sandbox is not in this shim is refused.
    let out = in_pod("container", "nopod", "stray", &["true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sandbox nopod"), "{stderr}");
    let _ = run(c.ctr().args(["containers", "delete", "stray"]));

    // The app container goes; the VM stays for the sandbox.
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "app1"]),
    );
    wait_for_status(&c, "app1", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "app1"]));
    check(c.ctr().args(["containers", "delete", "app1"]));
    assert!(!shared.join("app1").exists());
    assert_eq!(pids_with(&["fake-vmm.py", &run_root]).len(), 1);

    // The sandbox goes: so does the VM, and the shim.
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "pod1"]),
    );
    wait_for_status(&c, "pod1", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "pod1"]));
    check(c.ctr().args(["containers", "delete", "pod1"]));
    c.assert_clean();
}

#[test]
fn a_terminal_process_through_ctr_run_t() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    if which("script").is_none() {
        return skip("needs script(1) to give ctr a terminal");
    }
    let c = host_agent_containerd(&agent);
    c.import_busybox();
    // script(1) gives ctr the terminal `ctr run -t` needs; -e passes the exit status on.
    let ctr = format!(
        "ctr --address {} --namespace {} run --rm -t --runtime {RUNTIME} --cpu-shares 0 \
         {IMAGE} tty1 sh -c 'tty; exit 3'",
        c.socket().display(),
        c.namespace
    );
    let out = run(Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .stdin(Stdio::null()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    eprintln!("ctr run -t: {stdout:?}");
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    c.assert_clean();
}
