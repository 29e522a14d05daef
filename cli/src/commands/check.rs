//! `bulkhead check`: can this host run microVMs (and plain containers)? Each check says
//! what it found and, when it fails, what to do; a verdict per isolation mode closes.
//! `--json` for machines. Exit status 0 when microVMs can run, 1 otherwise.

use std::path::{Path, PathBuf};

use bulkhead_sandbox::cgroup::{Cgroup2, Layout};
use bulkhead_sandbox::host_agent;
use serde::Serialize;

use super::{check_install, Ctx};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Needed for `--isolation vm` / `--isolation container`.
    pub vm: bool,
    pub container: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub vm_ready: bool,
    pub container_ready: bool,
    pub verdict: String,
}

pub(super) fn check(
    name: &'static str,
    vm: bool,
    container: bool,
) -> impl Fn(Outcome, String, Option<String>) -> Check {
    move |outcome, detail, fix| Check {
        name,
        outcome,
        detail,
        fix,
        vm,
        container,
    }
}

fn root() -> Check {
    let c = check("root", true, true);
    if nix::unistd::geteuid().is_root() {
        c(Outcome::Ok, "running as root".into(), None)
    } else {
        c(
            Outcome::Fail,
            "not running as root".into(),
            Some(
                "run bulkhead as root (it mounts overlays, creates namespaces, opens /dev/kvm)"
                    .into(),
            ),
        )
    }
}

/// Opens /dev/kvm, checks the API version and creates a VM.
fn kvm() -> Check {
    let c = check("kvm", true, false);
    if !Path::new("/dev/kvm").exists() {
        return c(
            Outcome::Fail,
            "/dev/kvm does not exist".into(),
            Some("load the KVM module (modprobe kvm_intel or kvm_amd) on a host with hardware virtualization, or enable nested virtualization for this VM".into()),
        );
    }
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            return c(
                Outcome::Fail,
                format!("cannot open /dev/kvm: {e}"),
                Some("run as root or add the user to the kvm group".into()),
            )
        }
    };
    let api = kvm.get_api_version();
    if api != 12 {
        return c(
            Outcome::Fail,
            format!("KVM API version {api}, expected 12"),
            Some("use a Linux kernel with a standard KVM".into()),
        );
    }
    match kvm.create_vm() {
        Ok(_) => c(
            Outcome::Ok,
            "/dev/kvm opens, API 12, a VM can be created".into(),
            None,
        ),
        Err(e) => c(
            Outcome::Fail,
            format!("KVM_CREATE_VM failed: {e}"),
            Some("another hypervisor may hold the CPU's virtualization extensions".into()),
        ),
    }
}

/// vmx/svm in cpuinfo; without them a /dev/kvm is nested "PVM", which runs only tiny guests.
fn cpu(kvm_ok: bool) -> Check {
    let c = check("cpu-virtualization", true, false);
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .collect();
    if flags.contains(&"vmx") {
        c(Outcome::Ok, "Intel VT-x (vmx)".into(), None)
    } else if flags.contains(&"svm") {
        c(Outcome::Ok, "AMD-V (svm)".into(), None)
    } else if kvm_ok {
        c(
            Outcome::Fail,
            "no vmx/svm: this /dev/kvm is nested \"PVM\" virtualization, which runs tiny test guests but cannot boot a Linux guest".into(),
            Some("use a host with hardware virtualization, or run inside the project's harness: tests/harness/run-in-kvm.sh bulkhead run ...; --isolation container works here".into()),
        )
    } else {
        c(
            Outcome::Fail,
            "no vmx/svm CPU flag".into(),
            Some("enable VT-x/AMD-V in the firmware, or nested virtualization for this VM".into()),
        )
    }
}

fn program(name: &'static str, path: &Path, found: Option<PathBuf>, fix: &str) -> Check {
    let c = check(name, true, false);
    match found {
        Some(p) => c(Outcome::Ok, p.display().to_string(), None),
        None => c(
            Outcome::Fail,
            format!("{} not found", path.display()),
            Some(fix.to_owned()),
        ),
    }
}

fn file(name: &'static str, path: Option<&Path>, fix: &str) -> Check {
    let c = check(name, true, false);
    match path {
        Some(p) if p.is_file() => c(Outcome::Ok, p.display().to_string(), None),
        Some(p) => c(
            Outcome::Fail,
            format!("{} not found", p.display()),
            Some(fix.to_owned()),
        ),
        None => c(
            Outcome::Fail,
            "not configured and none built".into(),
            Some(fix.to_owned()),
        ),
    }
}

/// The agent binary that container isolation runs on the host.
fn host_agent() -> Check {
    let c = check("agent", false, true);
    match host_agent::find_agent_binary() {
        Ok(p) => c(Outcome::Ok, p.display().to_string(), None),
        Err(e) => c(
            Outcome::Fail,
            e.to_string(),
            Some(format!(
                "install {} next to bulkhead (cargo build --release --workspace builds both), \
                 put it in PATH, or set {}",
                host_agent::AGENT_BIN_NAME,
                host_agent::AGENT_BIN_ENV
            )),
        ),
    }
}

fn cgroups() -> Check {
    let c = check("cgroups", false, true);
    let Some(cg) = Cgroup2::find() else {
        return c(
            Outcome::Fail,
            "no cgroup2 hierarchy".into(),
            Some("mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup/unified)".into()),
        );
    };
    let layout = match cg.layout {
        Layout::Unified => "cgroup v2",
        Layout::Hybrid => "v1/v2 hybrid",
    };
    let path = cg.path.display();
    let ctrl = cg.controllers();
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|n| !ctrl.iter().any(|c| c == n))
        .collect();
    if missing.is_empty() {
        c(
            Outcome::Ok,
            format!("{layout} at {path}, controllers: {}", ctrl.join(" ")),
            None,
        )
    } else {
        c(
            Outcome::Warn,
            format!(
                "{layout} at {path}; controllers {} are bound to cgroup v1, so --cpus/--memory are not enforced in container mode (microVMs use the guest's own cgroups)",
                missing.join(", ")
            ),
            Some("boot the host with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only)".into()),
        )
    }
}

fn overlay() -> Check {
    let c = check("overlayfs", true, true);
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs.lines().any(|l| l.trim_end().ends_with("overlay")) {
        c(Outcome::Ok, "overlay filesystem available".into(), None)
    } else {
        c(
            Outcome::Warn,
            "overlay not listed in /proc/filesystems (may load on demand)".into(),
            Some("modprobe overlay".into()),
        )
    }
}

pub fn report(ctx: &Ctx) -> Report {
    let cfg = &ctx.cfg;
    let kvm = kvm();
    let kvm_ok = kvm.outcome == Outcome::Ok;
    let checks = vec![
        root(),
        kvm,
        cpu(kvm_ok),
        program("vmm", &cfg.vm.vmm, cfg.vmm_path().ok(), "build it (cargo build --release -p bulkhead-vmm: found next to bulkhead) or put it in PATH, or set vm.vmm / BULKHEAD_VMM"),
        program("virtiofsd", &cfg.virtiofsd.binary, cfg.virtiofsd_path().ok().flatten(), "scripts/install-virtiofsd.sh, or set virtiofsd.binary / BULKHEAD_VIRTIOFSD"),
        file("guest-kernel", cfg.kernel_path().ok().as_deref(), "build it with kernel-config/build-kernel.sh, or set vm.kernel / BULKHEAD_KERNEL"),
        file("initramfs", cfg.initrd_path().ok().flatten().as_deref(), "build the agent initramfs with guest-agent/build-initramfs.sh, or set vm.initrd / BULKHEAD_INITRD"),
        host_agent(),
        cgroups(),
        overlay(),
        check_install::installation(),
        check_install::containerd(Path::new(check_install::CONTAINERD_CONFIG)),
        check_install::jail_access(
            cfg.jail.enabled,
            &[
                ("VMM", cfg.vmm_path().ok(), true),
                ("guest kernel", cfg.kernel_path().ok(), false),
                ("initramfs", cfg.initrd_path().ok().flatten(), false),
            ],
        ),
    ];
    let ready = |f: fn(&Check) -> bool| !checks.iter().any(|c| f(c) && c.outcome == Outcome::Fail);
    let vm_ready = ready(|c| c.vm);
    let container_ready = ready(|c| c.container);
    let verdict = match (vm_ready, container_ready) {
        (true, _) => "this host can run microVMs (--isolation vm)".to_owned(),
        (false, true) => "this host cannot run microVMs; --isolation container works".to_owned(),
        (false, false) => "this host can run neither microVMs nor containers".to_owned(),
    };
    Report {
        checks,
        vm_ready,
        container_ready,
        verdict,
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<i32> {
    let r = report(ctx);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for c in &r.checks {
            let tag = match c.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            println!("[{tag}] {:<18} {}", c.name, c.detail);
            if let (Some(fix), true) = (&c.fix, c.outcome != Outcome::Ok) {
                println!("       {:<18} fix: {fix}", "");
            }
        }
        println!();
        println!("verdict: {}", r.verdict);
    }
    Ok(if r.vm_ready { 0 } else { 1 })
}
