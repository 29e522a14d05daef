//! The release as a user installs it (KVM harness, root): the tarball of
//! `scripts/release.sh` (`BULKHEAD_RELEASE_TARBALL`) unpacked and installed with its own
//! `install.sh` on fresh tmpfs mounts over `/opt`, `/usr/local/bin` and `/etc/containerd`
//! (and `/run`, the installed run root's parent; in a mount namespace of this test's own: the host's root is read-only in the harness
//! and is never touched elsewhere), containerd started with the system PATH and no other
//! environment, its configuration the installed drop-in plus the test's paths; then, with
//! nothing from the build tree:
//!
//! - `--version` of every installed binary names this build's version and commit;
//! - `bulkhead check` passes the installation, containerd and jail checks;
//! - a CRI pod on handler `bulkhead` runs a container in the installed guest kernel, and
//!   the host memory of its shim, VMM and virtiofsd is printed (the `RuntimeClass`
//!   overhead);
//! - an `io.bulkhead.vm.vcpus` pod annotation is refused by name on `bulkhead`, and
//!   honoured on a handler whose `ConfigPath` file allows it (vCPUs read in the guest);
//! - `uninstall.sh` leaves the three mounts exactly as empty as they were.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_cri::v1::{
    CreateContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use support::cri::{busybox_container, connect, host_network_pod, prepare, wait_for_log, PAUSE};
use support::*;

/// Where the release installs; each gets a fresh tmpfs in this test's mount namespace.
const INSTALL_MOUNTS: &[&str] = &["/opt", "/usr/local/bin", "/etc/containerd"];

/// A mount namespace of this thread's own (the processes it starts inherit it) with a
/// fresh tmpfs on each of [`INSTALL_MOUNTS`], and on `/run`: the installed configuration's
/// run root and jail uid locks are below `/run/bulkhead`, where the test must see only
/// what its own pods leave (other tests, or a real installation, use it too).
fn private_install_roots() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    check(Command::new("mount").args(["--make-rprivate", "/"]));
    for dir in INSTALL_MOUNTS.iter().chain(&["/run"]) {
        check(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", dir]));
    }
}

/// Every path below `dir`, directories included.
fn everything_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(everything_below(&p));
        }
        out.push(p);
    }
    out
}

/// `cmd`'s stdout; panics with its stderr when it fails.
fn output(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command with the system PATH and no other environment, as an administrator runs it.
fn clean(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", SYSTEM_PATH);
    cmd
}

/// Resident memory of `pid` in KiB (`VmRSS`).
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_release_installs_runs_a_cri_pod_and_uninstalls() {
    if std::env::var("BULKHEAD_IN_HARNESS").as_deref() != Ok("1") {
        return skip("boots a guest: run through the KVM harness (BULKHEAD_IN_HARNESS=1)");
    }
    if let Err(reason) = containerd_prerequisites() {
        return skip(&reason);
    }
    let tarball = match std::env::var("BULKHEAD_RELEASE_TARBALL") {
        Ok(t) if Path::new(&t).is_file() => PathBuf::from(t),
        _ => return skip("BULKHEAD_RELEASE_TARBALL must name the tarball of scripts/release.sh"),
    };
    private_install_roots();

    // Install from the unpacked tarball.
    let unpacked = tempfile::tempdir().unwrap();
    check(
        clean("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(unpacked.path()),
    );
    let release = std::fs::read_dir(unpacked.path())
        .unwrap()
        .flatten()
        .next()
        .expect("the tarball holds one directory")
        .path();
    let installed =
        output(clean(&release.join("install.sh").to_string_lossy()).arg("--configure-containerd"));
    eprintln!("install.sh:\n{installed}");
    assert!(Path::new("/etc/containerd/conf.d/bulkhead.toml").is_file());

    // One version and commit everywhere.
    let version = std::fs::read_to_string("/opt/bulkhead/share/VERSION").unwrap();
    assert_eq!(
        version.trim(),
        bulkhead_version::LONG,
        "the release is this build"
    );
    for (bin, flag) in [
        ("/usr/local/bin/bulkhead", "--version"),
        ("/opt/bulkhead/bin/bulkhead-vmm", "--version"),
        ("/usr/local/bin/containerd-shim-bulkhead-v2", "-v"),
    ] {
        let v = output(clean(bin).arg(flag));
        assert!(v.contains(bulkhead_version::LONG), "{bin} {flag}: {v}");
    }

    // bulkhead check of the installed runtime.
    let report = output(clean("bulkhead").args(["check", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    for name in [
        "installation",
        "containerd",
        "jail-access",
        "guest-kernel",
        "initramfs",
        "vmm",
        "virtiofsd",
    ] {
        let c = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report:#}"));
        assert_eq!(c["outcome"], "ok", "{name}: {c:#}");
    }

    // containerd with the installed drop-in (which `bulkhead check` found imported by the
    // config.toml install.sh wrote), and a handler with its own configuration file.
    let sized = unpacked.path().join("sized.toml");
    // containerd's own /opt/containerd, elsewhere: /opt must hold only what install.sh put.
    let opt = unpacked.path().join("containerd-opt");
    std::fs::write(&sized, "[shim]\nenable_annotations = [\"vcpus\"]\n").unwrap();
    let mut c = Containerd::start_installed(
        PAUSE,
        &format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.bulkhead-sized]\n\
             runtime_type = \"io.containerd.bulkhead.v2\"\n\
             pod_annotations = [\"io.bulkhead.*\"]\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.bulkhead-sized.options]\n\
             ConfigPath = {sized:?}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n\
             path = {opt:?}\n"
        ),
    );
    let _logs = LogCollector::start(&c.run_root);
    prepare(&mut c);
    let log_dir = c.dir().join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cri = connect(c.socket()).await;
        // Runs pod `name` on `handler` with `annotations` and one container printing
        // `script`'s output; returns the pod id, or RunPodSandbox's error.
        let mut pod =
            async |name: &str, handler: &str, annotations: &[(&str, &str)], script: &str| {
                let mut config = host_network_pod(name, &log_dir);
                config.annotations = annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>();
                let id = cri
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: handler.into(),
                    })
                    .await
                    .map_err(|e| e.message().to_owned())?
                    .into_inner()
                    .pod_sandbox_id;
                let container = cri
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: id.clone(),
                        config: Some(busybox_container(name, script)),
                        sandbox_config: Some(config),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", c.log()))
                    .into_inner()
                    .container_id;
                cri.start_container(StartContainerRequest {
                    container_id: container,
                })
                .await
                .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", c.log()));
                Ok::<_, String>(id)
            };

        // The default handler: the installed kernel, initramfs, VMM and virtiofsd.
        let web = pod(
            "web",
            "bulkhead",
            &[],
            "echo kernel $(uname -r); exec sleep 100000",
        )
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
        let log = wait_for_log(&log_dir.join("web.log"), "kernel ", Duration::from_secs(60));
        let host_kernel = output(Command::new("uname").arg("-r"));
        assert!(log.contains(" stdout F kernel "), "{log}");
        assert!(
            !log.contains(host_kernel.trim()),
            "the guest's kernel, not the host's: {log}"
        );
        // What an idle pod costs the host: the RuntimeClass's overhead.podFixed.
        std::thread::sleep(Duration::from_secs(5));
        let shim = pids_with(&["containerd-shim-bulkhead-v2", "-namespace k8s.io"]);
        let vmm = pids_with(&["/bulkhead-vmm"]);
        let virtiofsd = pids_with(&["virtiofsd", "/run/bulkhead/k8s.io/"]);
        assert_eq!(
            (shim.len(), vmm.len()),
            (1, 1),
            "one shim, one VMM: {shim:?} {vmm:?}"
        );
        let kib = |pids: &[i32]| pids.iter().map(|p| rss_kib(*p)).sum::<u64>();
        let (s, v, f) = (kib(&shim), kib(&vmm), kib(&virtiofsd));
        eprintln!(
            "pod overhead (VmRSS): shim {} MiB, VMM {} MiB (guest memory touched included), \
             virtiofsd {} MiB ({} processes), total {} MiB",
            s / 1024,
            v / 1024,
            f / 1024,
            virtiofsd.len(),
            (s + v + f) / 1024
        );

        // A pod annotation the configuration does not allow: refused by name.
        let refused = pod("big", "bulkhead", &[("io.bulkhead.vm.vcpus", "2")], "true")
            .await
            .expect_err("an annotation not allowed must fail the pod");
        assert!(
            refused.contains("annotation io.bulkhead.vm.vcpus is not allowed"),
            "{refused}"
        );
        // The handler whose ConfigPath allows it: the VM gets two vCPUs.
        let sized_pod = pod(
            "sized",
            "bulkhead-sized",
            &[("io.bulkhead.vm.vcpus", "2")],
            "echo cpus $(nproc); exec sleep 100000",
        )
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox on bulkhead-sized: {e}\n{}", c.log()));
        let log = wait_for_log(&log_dir.join("sized.log"), "cpus ", Duration::from_secs(60));
        assert!(log.contains(" stdout F cpus 2"), "{log}");

        for id in [web, sized_pod] {
            cri.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log()));
            cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log()));
        }
    });
    c.assert_clean();
    drop(c);

    // Uninstall: the mounts are as empty as they were before the install.
    let removed = output(&mut clean("/opt/bulkhead/share/uninstall.sh"));
    eprintln!("uninstall.sh: {removed}");
    for dir in INSTALL_MOUNTS {
        let left = everything_below(Path::new(dir));
        assert!(left.is_empty(), "left in {dir}: {left:#?}");
    }
}
