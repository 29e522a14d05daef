//! `bulkhead` with `--isolation vm`: a real microVM (bulkhead-vmm, virtiofsd, guest kernel,
//! agent initramfs). Runs only inside the KVM harness (`BULKHEAD_IN_HARNESS=1`, see
//! docs/harness.md) where `bulkhead check` finds the kernel, initramfs, VMM and virtiofsd
//! (config defaults, or `BULKHEAD_KERNEL`, `BULKHEAD_INITRD`, `BULKHEAD_VMM`,
//! `BULKHEAD_VIRTIOFSD`); prints `SKIPPED <test>: <reason>` otherwise. Every test boots one or two
//! VMs, which takes tens of seconds under the harness's nested emulation: run them one at
//! a time:
//!
//! ```text
//! cargo test -p bulkhead-cli --test vm_e2e --no-run      # prints target/debug/deps/vm_e2e-HASH
//! tests/harness/run-in-kvm.sh target/debug/deps/vm_e2e-HASH --test-threads 1
//! ```

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use support::{check_says_vm_ready, pty, skip, stderr, stdout, vm_host_ready, Env};

/// The reason to skip, if any.
fn vm_ready(env: &Env) -> Result<(), String> {
    vm_host_ready()?;
    check_says_vm_ready(&env.run(&["check", "--json"]))
}

macro_rules! require_vm {
    ($env:expr) => {
        if let Err(r) = vm_ready(&$env) {
            skip(&r);
            return;
        }
    };
}

/// The phases `--timings` printed, in milliseconds.
fn timings(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("bulkhead timings:"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn vm_runs_the_guest_kernel_and_passes_exit_codes() {
    let env = Env::without_network("vm");
    require_vm!(env);
    let o = env.run(&[
        "run",
        "--rm",
        "--timings",
        "bulkhead/demo",
        "sh",
        "-c",
        "uname -r; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let guest = stdout(&o).trim().to_owned();
    assert!(!guest.is_empty());
    assert!(stderr(&o).contains("booting microVM"), "{}", stderr(&o));

    // The same image as a plain container runs on the host kernel.
    let host_env = Env::new("container");
    let c = host_env.run(&["run", "--rm", "-q", "bulkhead/demo", "uname", "-r"]);
    assert_eq!(c.status.code(), Some(0), "{}", stderr(&c));
    let host = nix::sys::utsname::uname().unwrap();
    assert_eq!(stdout(&c).trim(), host.release().to_string_lossy());
    assert_ne!(guest, stdout(&c).trim(), "uname -r shows the host kernel");

    // The timing log has every phase of the boot and the run, and they add up.
    let t = timings(&stderr(&o));
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    for phase in [
        "image",
        "vm-launch",
        "vmm-start",
        "kernel-boot",
        "agent-ready",
        "rootfs",
        "container-create",
        "container-start",
        "run",
        "exit",
        "total",
    ] {
        assert!(names.contains(&phase), "no {phase} in {t:?}");
    }
    let get = |n: &str| t.iter().find(|(p, _)| p == n).map(|(_, v)| *v).unwrap();
    assert!(get("kernel-boot") > 0.0 && get("vmm-start") > 0.0, "{t:?}");
    let sum: f64 = t.iter().filter(|(n, _)| n != "total").map(|(_, v)| v).sum();
    assert!(sum <= get("total") + 1.0, "{t:?}");
    env.assert_clean();
    host_env.assert_clean();
}

#[test]
fn vm_run_options_and_sizing() {
    let env = Env::without_network("vm");
    require_vm!(env);
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "--cpus",
        "1",
        "--memory",
        "256m",
        "--hostname",
        "guest1",
        "bulkhead/demo",
        "sh",
        "-c",
        "echo \"$FOO|$(pwd)|$(id -u)|$(hostname)|$(nproc)\"; grep MemTotal /proc/meminfo",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    // --cpus 1: one vCPU of overhead + 1, capped at the host's CPUs.
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        lines.next(),
        Some(format!("bar|/tmp|65534|guest1|{}", host_cpus.min(2)).as_str())
    );
    // --memory 256m: 128 MiB of guest overhead + 256 MiB; the guest kernel keeps some.
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out:?}"));
    assert!(
        (300 * 1024..=384 * 1024).contains(&kib),
        "MemTotal {kib} kB"
    );
    env.assert_clean();
}

#[test]
fn vm_volumes_over_virtio_fs_and_an_unchanged_image() {
    let env = Env::without_network("vm");
    require_vm!(env);
    let rw = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(rw.path().join("in"), "hello").unwrap();
    std::fs::write(ro.path().join("keep"), "ro").unwrap();
    let rw_arg = format!("{}:/data", rw.path().display());
    let ro_arg = format!("{}:/ro:ro", ro.path().display());
    let script = "cat /data/in; echo; cat /ro/keep; echo; echo out > /data/out; \
                  if echo no > /ro/x; then echo ro-writable; else echo ro-refused; fi; \
                  echo x > /bin/added && echo added";
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "-v",
        &rw_arg,
        "-v",
        &ro_arg,
        "bulkhead/demo",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello\nro\nro-refused\nadded\n");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out")).unwrap(),
        "out\n"
    );
    assert!(!ro.path().join("x").exists());
    // Writes in the container never change the image.
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "bulkhead/demo",
        "test",
        "-e",
        "/bin/added",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    env.assert_clean();
}

#[test]
fn vm_sigterm_to_run_reaches_the_container() {
    let env = Env::without_network("vm");
    require_vm!(env);
    let script = "trap 'echo got-TERM; exit 5' TERM; echo ready; while true; do sleep 0.1; done";
    let mut child = env
        .cmd(&["run", "--rm", "-q", "bulkhead/demo", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    // SAFETY: kill with our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-TERM\n");
    assert_eq!(child.wait().unwrap().code(), Some(5));
    env.assert_clean();
}

#[test]
fn vm_detached_lifecycle_leaves_nothing() {
    let env = Env::new("vm");
    require_vm!(env);
    let script = "echo hello; trap 'echo bye; exit 3' TERM; while true; do sleep 0.1; done";
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "vm1",
        "bulkhead/demo",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ps = stdout(&env.run(&["ps"]));
    assert!(ps.contains("vm1") && ps.contains("vm"), "{ps}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["inspect", "vm1"]))).unwrap();
    let vmm_pid = v[0]["vmm_pid"].as_u64().expect("inspect shows the VMM pid") as i32;
    assert!(std::path::Path::new(&format!("/proc/{vmm_pid}")).exists());
    assert_eq!(env.sandboxes_left().len(), 1);

    let o = env.run(&["exec", "vm1", "sh", "-c", "echo $((2+3)); exit 4"]);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("5\n", Some(4)));
    let o = env.run(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/etc",
        "-u",
        "nobody",
        "vm1",
        "sh",
        "-c",
        "echo $X$(pwd)$(id -u)",
    ]);
    assert_eq!(stdout(&o), "1/etc65534\n");
    // A write through exec is seen by the container's other processes.
    env.run(&["exec", "vm1", "sh", "-c", "echo shared > /tmp/f"]);
    assert_eq!(
        stdout(&env.run(&["exec", "vm1", "cat", "/tmp/f"])),
        "shared\n"
    );

    let o = env.run(&["rm", "vm1"]);
    assert_ne!(o.status.code(), Some(0), "rm of a running container");
    let o = env.run(&["stop", "vm1"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&env.run(&["logs", "vm1"])), "hello\nbye\n");
    let ps = stdout(&env.run(&["ps", "-a"]));
    assert!(ps.contains("exited (3)"), "{ps}");
    // The VM is gone with the container, before rm.
    assert!(!std::path::Path::new(&format!("/proc/{vmm_pid}")).exists());
    let o = env.run(&["rm", "vm1"]);
    assert_eq!(o.status.code(), Some(0));
    env.assert_clean();

    // rm -f of a running microVM container.
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "vm2",
        "bulkhead/demo",
        "sleep",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = env.run(&["rm", "-f", "vm2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    env.assert_clean();
}

#[test]
fn vm_interactive_terminal() {
    let env = Env::without_network("vm");
    require_vm!(env);
    let cmd = env.cmd(&["run", "-it", "--rm", "-q", "bulkhead/demo", "sh"]);
    pty::interactive_session(cmd, Duration::from_secs(300));
    env.assert_clean();
}

/// Reads what the server at `addr` answers (retrying while it starts).
fn answer_of(addr: &str) -> String {
    let mut answer = String::new();
    for _ in 0..300 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            answer.clear();
            let _ = s.read_to_string(&mut answer);
            if !answer.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    answer
}

/// The default bridge network in VM mode, as in container mode: `-p` answers on the
/// host's loopback, a second VM reaches the first by its IP, the guest NIC has the address
/// CNI gave, `ps`/`inspect` show port and address, and `rm -f` releases the address, the
/// namespace and the tap. `--network none` gives the guest loopback only. Traffic goes only
/// to 127.0.0.1 and to the test bridge's subnet.
#[test]
fn vm_bridge_network_ports_peers_and_none() {
    let env = Env::new("vm");
    require_vm!(env);
    if !support::cni_ready() {
        return skip("needs the CNI plugins in /usr/lib/cni (containernetworking-plugins)");
    }
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "web",
        "-p",
        "127.0.0.1:18082:80",
        "bulkhead/demo",
        "nc",
        "-ll",
        "-p",
        "80",
        "-e",
        "echo",
        "hi",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(answer_of("127.0.0.1:18082"), "hi\n");
    let ps = stdout(&env.run(&["ps"]));
    assert!(ps.contains("127.0.0.1:18082->80/tcp"), "{ps}");
    let v: serde_json::Value =
        serde_json::from_slice(&env.run(&["inspect", "web"]).stdout).unwrap();
    let net = &v[0]["network_settings"];
    let ip = net["ip_address"].as_str().unwrap_or_default().to_owned();
    assert!(ip.starts_with("10.89.251."), "{net}");
    let addr = stdout(&env.run(&["exec", "web", "ip", "-4", "addr", "show", "eth0"]));
    assert!(addr.contains(&format!("inet {ip}/24")), "{addr}");
    let mac = net["mac_address"].as_str().unwrap_or_default().to_owned();
    let link = stdout(&env.run(&["exec", "web", "ip", "link", "show", "eth0"]));
    assert!(
        link.contains(&mac),
        "the guest NIC has the veth's MAC {mac}: {link}"
    );
    // The host reaches the guest by its address too.
    assert_eq!(answer_of(&format!("{ip}:80")), "hi\n");

    // A second VM on the bridge reaches the first by IP.
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "bulkhead/demo",
        "sh",
        "-c",
        &format!("for i in $(seq 1 50); do nc {ip} 80 && exit 0; sleep 0.2; done; exit 1"),
    ]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "hi\n"),
        "{}",
        stderr(&o)
    );

    let lease = std::path::Path::new(support::TEST_IPAM_DIR)
        .join("bulkhead")
        .join(&ip);
    assert!(lease.exists(), "{}", lease.display());
    env.run(&["rm", "-f", "web"]);
    assert!(!lease.exists(), "the address was not released");
    assert!(std::net::TcpStream::connect("127.0.0.1:18082").is_err());

    // none: the guest has loopback only, and it is up.
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "--network",
        "none",
        "bulkhead/demo",
        "sh",
        "-c",
        "ip -o link | cut -d: -f2 | tr -d ' \\n'; ip link show lo | grep -c UP",
    ]);
    assert_eq!(stdout(&o), "lo1\n", "{}", stderr(&o));
    env.assert_clean();
}
