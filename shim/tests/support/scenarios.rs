//! The scenarios of the containerd tests, each run twice: against the real agent on the
//! host behind a fake VMM, and in a real microVM (KVM harness). [`Setup`] says which.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

/// A containerd plus how to drive it.
pub struct Setup {
    pub c: Containerd,
    /// Extra `ctr run` flags (the host "guest" lacks the cpu controller: `--cpu-shares 0`).
    pub run_flags: Vec<&'static str>,
    /// A word of the VMM's command line (with the run root: exactly our VMMs).
    pub vmm: &'static str,
    pub logs: Option<LogCollector>,
}

impl Setup {
    /// The real agent on the host (`tests/fake-vm/vmm`).
    pub fn host_agent() -> Result<Setup, String> {
        let agent = host_agent_prerequisites()?;
        let c = host_agent_containerd(&agent);
        c.import_busybox();
        Ok(Setup {
            c,
            run_flags: vec!["--cpu-shares", "0"],
            vmm: "fake-vmm.py",
            logs: None,
        })
    }

    /// A real microVM: needs the KVM harness and the guest artefacts (see the test file).
    pub fn real_vm() -> Result<Setup, String> {
        let env = real_vm_prerequisites()?;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let c = Containerd::start(&env, HARNESS_TIMEOUTS);
        let logs = Some(LogCollector::start(&c.run_root));
        c.import_busybox();
        Ok(Setup {
            c,
            run_flags: vec![],
            vmm: "bulkhead-vmm",
            logs,
        })
    }

    /// `ctr run --runtime bulkhead [flags] ARGS`.
    pub fn ctr_run(&self, args: &[&str]) -> Command {
        let mut cmd = self.c.ctr();
        cmd.args(["run", "--runtime", RUNTIME])
            .args(&self.run_flags)
            .args(args);
        cmd
    }

    pub fn vmm_pids(&self) -> Vec<i32> {
        pids_with(&[self.vmm, &self.c.run_root.to_string_lossy()])
    }

    pub fn shim_pids(&self) -> Vec<i32> {
        pids_with(&["containerd-shim-bulkhead-v2", &self.c.namespace])
    }

    fn context(&self) -> String {
        format!("containerd log:\n{}", self.c.log())
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ctr run --rm` passes output, stderr and the exit status through; stdin and its EOF reach
/// the container.
pub fn output_status_and_stdin(s: &Setup) {
    let out = run(&mut s.ctr_run(&[
        "--rm",
        IMAGE,
        "echo",
        "sh",
        "-c",
        "echo hello; ls /bin/busybox; echo oops >&2; exit 7",
    ]));
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {}\nstderr: {}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        s.context()
    );
    assert_eq!(text(&out.stdout), "hello\n/bin/busybox\n");
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
    s.c.assert_clean();

    let mut child = s
        .ctr_run(&["--rm", IMAGE, "cat", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through stdin\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        s.context()
    );
    assert_eq!(text(&out.stdout), "through stdin\n");
    s.c.assert_clean();
}

/// exec (output, exit status), ps, metrics, kill, delete. Every pid containerd shows is the
/// VMM's (a host pid, as Kata reports it), never a pid from the guest.
pub fn exec_ps_metrics_kill(s: &Setup) {
    let c = &s.c;
    check(&mut s.ctr_run(&["-d", IMAGE, "sleeper", "sleep", "1000"]));
    let out = run(c.ctr().args([
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "sleeper",
        "sh",
        "-c",
        "echo from exec; exit 3",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from exec\n");
    let out = run(c
        .ctr()
        .args(["tasks", "exec", "-d", "--exec-id", "e2", "sleeper"])
        .args(["sleep", "1000"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vmm = s.vmm_pids();
    assert_eq!(vmm.len(), 1, "{vmm:?}");
    let vmm = vmm[0].to_string();
    let ls = check(c.ctr().args(["tasks", "ls"]));
    assert!(
        ls.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f == ["sleeper", vmm.as_str(), "RUNNING"]
        }),
        "the task's pid is not the VMM's ({vmm}): {ls}"
    );
    // ps: the VMM's pid once (the init and the detached exec run in it), no guest pid.
    let ps = check(c.ctr().args(["tasks", "ps", "sleeper"]));
    eprintln!("ctr tasks ps: {ps}");
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids, [vmm.as_str()], "{ps}");
    // Stats arrive as cgroup v2 metrics containerd can decode.
    let metrics = check(c.ctr().args(["tasks", "metrics", "sleeper"]));
    eprintln!("ctr tasks metrics: {metrics}");
    assert!(metrics.contains("pids.current"), "{metrics}");
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "sleeper"]),
    );
    wait_for_status(c, "sleeper", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "sleeper"]));
    check(c.ctr().args(["containers", "delete", "sleeper"]));
    c.assert_clean();
}

/// The counter the `ticker` container writes to `/count`, read on the host through the
/// container's rootfs in the shared directory (`None` before the first write).
fn read_counter(c: &Containerd, id: &str) -> Option<u64> {
    let path = c
        .run_root
        .join(&c.namespace)
        .join(id)
        .join("shared")
        .join(id)
        .join("rootfs/count");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Waits until the counter passes `after`; returns its value.
fn counter_passes(c: &Containerd, id: &str, after: u64, limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        if let Some(v) = read_counter(c, id).filter(|v| *v > after) {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "the counter of {id} did not pass {after} in {limit:?} (now {:?})",
            read_counter(c, id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pause freezes the container (PAUSED, a counter it writes stops, exec refused), resume
/// thaws it (RUNNING, the counter moves again); a second pause of a paused task is refused;
/// one TaskPaused and one TaskResumed reach containerd.
pub fn pause_and_resume(s: &Setup) {
    let c = &s.c;
    check(&mut s.ctr_run(&[
        "-d",
        IMAGE,
        "ticker",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.1; done",
    ]));
    wait_for_status(c, "ticker", "RUNNING", Duration::from_secs(10));
    let first = counter_passes(c, "ticker", 0, Duration::from_secs(30));
    counter_passes(c, "ticker", first, Duration::from_secs(30));

    // `ctr events` into a file: TaskPaused and TaskResumed are checked at the end.
    let events_file = c.dir().join("pause-events.txt");
    let mut events = c
        .ctr()
        .arg("events")
        .stdout(std::fs::File::create(&events_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `ctr events` subscribes asynchronously: give it a moment.
    std::thread::sleep(Duration::from_millis(500));

    let out = run(c.ctr().args(["tasks", "pause", "ticker"]));
    assert!(
        out.status.success(),
        "pause: {}\n{}",
        text(&out.stderr),
        s.context()
    );
    wait_for_status(c, "ticker", "PAUSED", Duration::from_secs(5));
    // A write in flight when the freeze began may still land: read after a moment.
    std::thread::sleep(Duration::from_millis(500));
    let frozen = read_counter(c, "ticker");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read_counter(c, "ticker"),
        frozen,
        "the counter moved while paused"
    );
    let again = run(c.ctr().args(["tasks", "pause", "ticker"]));
    assert!(!again.status.success(), "a paused task paused again");
    let exec = run(c
        .ctr()
        .args(["tasks", "exec", "--exec-id", "e1", "ticker", "true"]));
    assert!(!exec.status.success(), "exec in a paused container ran");
    assert!(
        text(&exec.stderr).contains("paused"),
        "{}",
        text(&exec.stderr)
    );

    let out = run(c.ctr().args(["tasks", "resume", "ticker"]));
    assert!(
        out.status.success(),
        "resume: {}\n{}",
        text(&out.stderr),
        s.context()
    );
    wait_for_status(c, "ticker", "RUNNING", Duration::from_secs(5));
    counter_passes(c, "ticker", frozen.unwrap_or(0), Duration::from_secs(30));
    let again = run(c.ctr().args(["tasks", "resume", "ticker"]));
    assert!(!again.status.success(), "a running task resumed");
    let _ = events.kill();
    let _ = events.wait();
    let events = std::fs::read_to_string(&events_file).unwrap_or_default();
    for topic in ["/tasks/paused", "/tasks/resumed"] {
        assert_eq!(
            events.lines().filter(|l| l.contains(topic)).count(),
            1,
            "one {topic} event expected:\n{events}"
        );
    }

    // A paused container can still be killed and deleted.
    check(c.ctr().args(["tasks", "pause", "ticker"]));
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "ticker"]),
    );
    wait_for_status(c, "ticker", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "ticker"]));
    check(c.ctr().args(["containers", "delete", "ticker"]));
    c.assert_clean();
}

/// `ctr events` in the background: each `/tasks/exit` line with its arrival time.
struct ExitEvents {
    child: std::process::Child,
    rx: mpsc::Receiver<(Instant, String)>,
}

impl ExitEvents {
    fn start(c: &Containerd) -> ExitEvents {
        let mut child = c
            .ctr()
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("/tasks/exit") && tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        // `ctr events` subscribes asynchronously: give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        ExitEvents { child, rx }
    }

    /// Exit events until `n` arrived or `limit` passed.
    fn collect(&self, n: usize, limit: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => got.push(e),
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for ExitEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The VMM killed: the init and an exec get TaskExit within 2 s, Delete succeeds, nothing
/// is left.
pub fn a_killed_vmm(s: &Setup) {
    let c = &s.c;
    check(&mut s.ctr_run(&["-d", IMAGE, "doomed", "sleep", "1000"]));
    let out = run(c
        .ctr()
        .args(["tasks", "exec", "-d", "--exec-id", "e1", "doomed"])
        .args(["sleep", "1000"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(c, "doomed", "RUNNING", Duration::from_secs(10));
    let vmm = s.vmm_pids();
    assert_eq!(vmm.len(), 1, "one VMM: {vmm:?}");
    let events = ExitEvents::start(c);
    let killed = Instant::now();
    // SAFETY: kill takes plain integers; the pid is our VMM found above.
    unsafe { libc::kill(vmm[0], libc::SIGKILL) };
    let exits = events.collect(2, Duration::from_secs(10));
    drop(events);
    for (at, line) in &exits {
        eprintln!("after {:?}: {line}", at.duration_since(killed));
    }
    assert_eq!(exits.len(), 2, "two TaskExit: {exits:?}\n{}", s.context());
    assert!(exits.iter().any(|(_, l)| l.contains("\"id\":\"e1\"")));
    assert!(exits.iter().any(|(_, l)| l.contains("\"id\":\"doomed\"")));
    for (at, line) in &exits {
        let took = at.duration_since(killed);
        assert!(took < Duration::from_secs(2), "{line} after {took:?}");
    }
    wait_for_status(c, "doomed", "STOPPED", Duration::from_secs(5));
    check(c.ctr().args(["tasks", "delete", "doomed"]));
    check(c.ctr().args(["containers", "delete", "doomed"]));
    c.assert_clean();
}

/// The shim killed: containerd runs `containerd-shim-bulkhead-v2 delete`, which removes
/// the VMM, virtiofsd, the mounts and the run directory.
pub fn a_killed_shim(s: &Setup) {
    let c = &s.c;
    check(&mut s.ctr_run(&["-d", IMAGE, "orphan", "sleep", "1000"]));
    wait_for_status(c, "orphan", "RUNNING", Duration::from_secs(10));
    let shim = s.shim_pids();
    assert_eq!(shim.len(), 1, "one shim: {shim:?}");
    assert_eq!(s.vmm_pids().len(), 1);
    assert!(!c.leftovers().is_empty());
    // SAFETY: kill takes plain integers; the pid is the shim found above.
    unsafe { libc::kill(shim[0], libc::SIGKILL) };
    // containerd notices the dead shim and runs `containerd-shim-bulkhead-v2 delete`.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.leftovers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after the shim died: {:#?}\n{}",
            c.leftovers(),
            s.context()
        );
        // Not more often: each look walks every process's open files, and in the nested
        // harness that competes with the `delete` containerd gives only 5 s.
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = run(c.ctr().args(["tasks", "delete", "orphan"]));
    check(c.ctr().args(["containers", "delete", "orphan"]));
    c.assert_clean();
}

/// CRI-style pod through `ctr` annotations: one shim, one VM, two containers.
pub fn a_pods_containers_share_one_vm(s: &Setup) {
    let c = &s.c;
    let in_pod = |kind: &str, pod: &str, id: &str, cmd: &[&str]| {
        let mut ctr = s.ctr_run(&["-d"]);
        ctr.arg("--annotation")
            .arg(format!("io.kubernetes.cri.container-type={kind}"))
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.sandbox-id={pod}"))
            .args([IMAGE, id])
            .args(cmd);
        run(&mut ctr)
    };
    let out = in_pod("sandbox", "pod1", "pod1", &["sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = in_pod("container", "pod1", "app1", &["sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(c, "app1", "RUNNING", Duration::from_secs(10));

    assert_eq!(s.shim_pids().len(), 1);
    assert_eq!(s.vmm_pids().len(), 1);
    let shared = c.run_root.join(&c.namespace).join("pod1/shared");
    assert!(shared.join("pod1/rootfs/bin/busybox").exists());
    assert!(shared.join("app1/rootfs/bin/busybox").exists());
    // Both containers see one kernel: the same boot id.
    let boot_id = |id: &str| {
        check(c.ctr().args([
            "tasks",
            "exec",
            "--exec-id",
            &format!("b-{id}"),
            id,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ]))
    };
    assert_eq!(boot_id("pod1"), boot_id("app1"));

    // A container of a pod whose sandbox is not in this shim is refused.
    let out = in_pod("container", "nopod", "stray", &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sandbox nopod"),
        "{}",
        text(&out.stderr)
    );
    let _ = run(c.ctr().args(["containers", "delete", "stray"]));

    // The app container goes; the VM stays for the sandbox.
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "app1"]),
    );
    wait_for_status(c, "app1", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "app1"]));
    check(c.ctr().args(["containers", "delete", "app1"]));
    assert!(!shared.join("app1").exists());
    assert_eq!(s.vmm_pids().len(), 1);

    // The sandbox goes: so does the VM, and the shim.
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "pod1"]),
    );
    wait_for_status(c, "pod1", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "pod1"]));
    check(c.ctr().args(["containers", "delete", "pod1"]));
    c.assert_clean();
}

/// `ctr run -t` under script(1): a terminal both ways, the exit status.
pub fn a_terminal_session(s: &Setup) -> Result<(), String> {
    if which("script").is_none() {
        return Err("needs script(1) to give ctr a terminal".into());
    }
    let c = &s.c;
    // script(1) gives ctr the terminal `ctr run -t` needs; -e passes the exit status on.
    // The input line travels through the terminal: read echoes it, the shell answers.
    let ctr = format!(
        "ctr --address {} --namespace {} run --rm -t --runtime {RUNTIME} {} {IMAGE} tty1 \
         sh -c 'tty; read line; echo \"got $line\"; exit 3'",
        c.socket().display(),
        c.namespace,
        s.run_flags.join(" ")
    );
    let mut child = Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Typed ahead: the terminal holds it until the shell reads.
    stdin.write_all(b"typed\n").unwrap();
    let out = wait_output(child, Duration::from_secs(120));
    drop(stdin);
    let stdout = text(&out.stdout);
    eprintln!("ctr run -t: {stdout:?}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}\n{}",
        text(&out.stderr),
        s.context()
    );
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("got typed"), "{stdout}");
    c.assert_clean();
    Ok(())
}

/// Waits for a child with a limit (kills it after).
fn wait_output(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The environment a real VM needs, or why the test cannot run.
pub fn real_vm_prerequisites() -> Result<Vec<(&'static str, String)>, String> {
    if std::env::var("BULKHEAD_IN_HARNESS").as_deref() != Ok("1") {
        return Err("boots a guest: run through the KVM harness (BULKHEAD_IN_HARNESS=1)".into());
    }
    containerd_prerequisites()?;
    let mut env = Vec::new();
    for var in ["BULKHEAD_KERNEL", "BULKHEAD_INITRD", "BULKHEAD_VMM"] {
        match std::env::var(var) {
            Ok(v) if Path::new(&v).is_file() => env.push((var, v)),
            _ => return Err(format!("{var} must name a file")),
        }
    }
    match std::env::var("BULKHEAD_VIRTIOFSD")
        .ok()
        .or_else(|| which("virtiofsd").map(|p| p.to_string_lossy().into_owned()))
    {
        Some(v) if Path::new(&v).is_file() => env.push(("BULKHEAD_VIRTIOFSD", v)),
        _ => return Err("virtiofsd not found (set BULKHEAD_VIRTIOFSD)".into()),
    }
    Ok(env)
}
