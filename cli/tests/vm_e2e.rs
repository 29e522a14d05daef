//! `bulkhead` with `--isolation vm`: a real microVM (bulkhead-vmm, virtiofsd, guest kernel,
//! agent initramfs). Runs only inside the KVM harness (`BULKHEAD_IN_HARNESS=1`, see
//! docs/harness.md) with a configuration (`BULKHEAD_CONFIG`, or `BULKHEAD_KERNEL`,
//! `BULKHEAD_INITRD`, `BULKHEAD_VMM`, `BULKHEAD_VIRTIOFSD`) whose kernel and initramfs
//! exist; prints `SKIPPED: reason` otherwise:
//!
//! ```text
//! cargo test -p bulkhead-cli --no-run
//! BULKHEAD_KERNEL=... BULKHEAD_INITRD=... BULKHEAD_VMM=$PWD/target/debug/bulkhead-vmm \
//!   tests/harness/run-in-kvm.sh cargo test -p bulkhead-cli --test vm_e2e
//! ```

mod support;

use support::{host_ready, skip, stderr, stdout, Env};

/// The reason to skip, if any.
fn vm_ready(env: &Env) -> Result<(), String> {
    if std::env::var("BULKHEAD_IN_HARNESS").as_deref() != Ok("1") {
        return Err("VM tests run inside the KVM harness (BULKHEAD_IN_HARNESS=1)".into());
    }
    host_ready()?;
    let o = env.run(&["check", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).map_err(|e| format!("bulkhead check --json: {e}"))?;
    if v["vm_ready"] != true {
        let failed: Vec<String> = v["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["outcome"] == "fail" && c["vm"] == true)
            .map(|c| format!("{}: {}", c["name"], c["detail"]))
            .collect();
        return Err(format!(
            "this host cannot run microVMs: {}",
            failed.join("; ")
        ));
    }
    Ok(())
}

macro_rules! require_vm {
    ($env:expr) => {
        if let Err(r) = vm_ready(&$env) {
            skip(&r);
            return;
        }
    };
}

#[test]
fn vm_runs_the_guest_kernel_and_passes_exit_codes() {
    let env = Env::new("vm");
    require_vm!(env);
    let o = env.run(&["run", "--rm", "bulkhead/demo", "uname", "-r"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let host = nix::sys::utsname::uname().unwrap();
    let guest = stdout(&o);
    assert!(!guest.trim().is_empty());
    assert_ne!(
        guest.trim(),
        host.release().to_string_lossy(),
        "uname -r shows the host kernel"
    );
    assert!(stderr(&o).contains("booting microVM"), "{}", stderr(&o));

    let o = env.run(&["run", "--rm", "-q", "bulkhead/demo", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
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
        "bulkhead/demo",
        "sh",
        "-c",
        "echo \"$FOO|$(pwd)|$(id -u)\"",
    ]);
    assert_eq!(stdout(&o), "bar|/tmp|65534\n");
    env.assert_clean();
}

#[test]
fn vm_volumes_over_virtio_fs() {
    let env = Env::new("vm");
    require_vm!(env);
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("in"), "hello").unwrap();
    let rw = format!("{}:/data", vol.path().display());
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "-v",
        &rw,
        "bulkhead/demo",
        "sh",
        "-c",
        "cat /data/in && echo out > /data/out",
    ]);
    assert_eq!(stdout(&o), "hello");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("out")).unwrap(),
        "out\n"
    );
    let ro = format!("{}:/data:ro", vol.path().display());
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "-v",
        &ro,
        "bulkhead/demo",
        "sh",
        "-c",
        "echo no > /data/x",
    ]);
    assert_ne!(o.status.code(), Some(0));
    // Writes in the container never change the image.
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "bulkhead/demo",
        "sh",
        "-c",
        "echo x > /bin/added",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "bulkhead/demo",
        "test",
        "-e",
        "/bin/added",
    ]);
    assert_eq!(o.status.code(), Some(1));
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
    let o = env.run(&["exec", "vm1", "sh", "-c", "echo $((2+3)); exit 4"]);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("5\n", Some(4)));
    let o = env.run(&["stop", "vm1"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&env.run(&["logs", "vm1"])), "hello\nbye\n");
    let o = env.run(&["rm", "vm1"]);
    assert_eq!(o.status.code(), Some(0));
    env.assert_clean();
}
