//! `bulkhead compare` in the KVM harness: the probe in a microVM, a hardened container and
//! a privileged container, on the demo image; the report's verdicts, and its HTML page as
//! headless Chromium renders it (`chromium --dump-dom` and `--screenshot`). Then a tiny
//! image (one file, no program) from a real registry in a privileged microVM and a
//! container: escapes that work in the guest are contained, with the host check beside.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{check_says_vm_ready, skip, stderr, vm_host_ready, Env};

/// The probe binary: `BULKHEAD_PROBE` (test.sh sets the static release build).
fn probe() -> Result<PathBuf, String> {
    match std::env::var("BULKHEAD_PROBE") {
        Ok(p) if Path::new(&p).is_file() => Ok(PathBuf::from(p)),
        _ => Err(
            "BULKHEAD_PROBE must name the static bulkhead-probe (scripts/build-static.sh)".into(),
        ),
    }
}

/// A VM-mode environment and the probe, or why the test cannot run.
fn ready() -> Result<(Env, PathBuf), String> {
    let env = Env::new("vm");
    vm_host_ready()?;
    check_says_vm_ready(&env.run(&["check", "--json"]))?;
    Ok((env, probe()?))
}

fn verdicts(report: &serde_json::Value, mode: &str) -> BTreeMap<String, String> {
    let m = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mode"] == mode)
        .unwrap_or_else(|| panic!("no mode {mode} in the report"));
    m["verdicts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn kernel(report: &serde_json::Value, mode: &str) -> String {
    let m = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mode"] == mode)
        .unwrap();
    m["probe"]["identity"]["kernel"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn compare_shows_vm_and_container_isolation_side_by_side() {
    let (env, probe) = match ready() {
        Ok(ready) => ready,
        Err(r) => return skip(&r),
    };
    let report_dir = env.dir.path().join("report");
    let o = env.run(&[
        "compare",
        "--probe",
        probe.to_str().unwrap(),
        "--report",
        report_dir.to_str().unwrap(),
        "bulkhead/demo",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("host processes") && table.contains("privileged"),
        "{table}"
    );
    for mode in ["vm", "container", "privileged"] {
        assert!(
            stderr(&o).contains(&format!("{mode}: running the probe")),
            "a progress line per mode"
        );
    }

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let host_kernel = report["host_kernel"].as_str().unwrap().to_owned();
    // Every probe has a verdict in every mode.
    let (vm, container, privileged) = (
        verdicts(&report, "vm"),
        verdicts(&report, "container"),
        verdicts(&report, "privileged"),
    );
    assert!(vm.len() >= 19, "{vm:?}");
    assert_eq!(
        vm.keys().collect::<Vec<_>>(),
        container.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        vm.keys().collect::<Vec<_>>(),
        privileged.keys().collect::<Vec<_>>()
    );
    // The microVM runs its own kernel; containers the host's.
    assert_ne!(kernel(&report, "vm"), host_kernel);
    assert_eq!(kernel(&report, "container"), host_kernel);
    // The boundaries differ where they should.
    for probe in ["host_processes", "host_mounts", "kernel_module"] {
        assert_ne!(
            vm[probe], privileged[probe],
            "{probe}: vm {vm:?}\nprivileged {privileged:?}"
        );
        assert_eq!(privileged[probe], "host", "{probe}: {privileged:?}");
    }
    // The hardened container refuses what Docker's default profile refuses; privileged
    // does not.
    for probe in ["userns", "mount", "keyctl", "kernel_module", "bpf"] {
        assert_eq!(container[probe], "blocked", "{probe}: {container:?}");
        assert_eq!(
            vm[probe], "blocked",
            "{probe} (the same profile in the guest): {vm:?}"
        );
    }
    for probe in ["userns", "mount", "keyctl"] {
        assert_eq!(privileged[probe], "host", "{probe}: {privileged:?}");
    }
    // Nothing the probe did in the microVM showed the host (but what it wrote to a volume
    // it was given).
    let vm_host: Vec<_> = vm
        .iter()
        .filter(|(k, v)| *v == "host" && *k != "volume_write")
        .collect();
    assert!(
        vm_host.is_empty(),
        "the microVM reached the host: {vm_host:?}"
    );

    // The microVM's host entry points, from the VMM's own counters.
    let vm_metrics: Vec<String> = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mode"] == "vm")
        .unwrap()["vmm_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    for device in ["virtio-vsock:", "virtio-fs "] {
        assert!(
            vm_metrics.iter().any(|l| l.starts_with(device)),
            "{device} in {vm_metrics:?}"
        );
    }

    // The page, as a browser renders it.
    let html = report_dir.join("report.html");
    let url = format!("file://{}", html.display());
    let profile = env.dir.path().join("chromium-profile");
    let chromium = |extra: &[&str]| {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("running chromium (Debian package chromium, installed by scripts/setup.sh)");
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned();
    assert!(
        dom.contains("<title>Bulkhead isolation comparison"),
        "{dom:.500}"
    );
    assert!(
        dom.contains("host processes") && dom.contains("<svg"),
        "{dom:.2000}"
    );
    let shot = report_dir.join("report.png");
    chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1400,2600",
    ]);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("BULKHEAD_COMPARE_KEEP") {
        let _ = std::fs::create_dir_all(&keep);
        for f in ["report.json", "report.html", "report.png"] {
            let _ = std::fs::copy(report_dir.join(f), Path::new(&keep).join(f));
        }
        eprintln!("report kept in {keep}");
    }
    env.assert_clean();
}

/// An image with one file and no program, pulled from a real registry: the probe brings
/// its own. A privileged microVM shows escapes working against the guest kernel only.
#[test]
fn compare_runs_any_image_and_a_privileged_vm_is_contained() {
    let (env, probe) = match ready() {
        Ok(ready) => ready,
        Err(r) => return skip(&r),
    };
    for bin in ["docker-registry", "skopeo"] {
        if !Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .status()
            .unwrap()
            .success()
        {
            return skip(format!("needs {bin}"));
        }
    }
    let work = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let layout = support::registry::tiny_image(work.path());
    let registry = support::registry::Registry::start();
    let reference = format!("{}/test/tiny:1", registry.addr);
    support::registry::skopeo_push(&layout, &reference);
    let o = env.run(&["pull", "--plain-http", &reference]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(registry);

    let report_dir = env.dir.path().join("report");
    let o = env.run(&[
        "compare",
        "--no-costs",
        "--modes",
        "vm-privileged,container",
        "--probe",
        probe.to_str().unwrap(),
        "--report",
        report_dir.to_str().unwrap(),
        &reference,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let (vm, container) = (
        verdicts(&report, "vm-privileged"),
        verdicts(&report, "container"),
    );
    assert!(
        vm.len() >= 19 && vm.len() == container.len(),
        "{vm:?}\n{container:?}"
    );
    // Everything is allowed in the privileged guest, and stays there (the guest kernel has
    // no module support and no keyring: those stay refused).
    for probe in ["mount", "userns", "bpf", "dmesg", "sysrq"] {
        assert_eq!(vm[probe], "contained", "{probe}: {vm:?}");
    }
    for probe in ["host_processes", "host_mounts", "ptrace"] {
        assert_eq!(vm[probe], "blocked", "{probe}: {vm:?}");
    }
    let vm_detail = report["modes"][0]["probe"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "mount")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        vm_detail.contains("host check: another kernel"),
        "{vm_detail}"
    );
    assert_eq!(container["kernel_module"], "blocked", "{container:?}");
    assert_eq!(container["host_mounts"], "host", "{container:?}");
    env.assert_clean();
}
