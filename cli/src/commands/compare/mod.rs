//! `bulkhead compare IMAGE`: the isolation lab. The same image runs the probe
//! (`bulkhead-probe`, copied in through a read-only volume) once per mode: a microVM,
//! a hardened container, a privileged container (and, on request, a privileged microVM).
//! Each run's probe report is judged against the host ([`verdict`]), its start phases come
//! from `run --timings`, and its host memory from a second, idle run of the same mode. The
//! result is a table on the terminal and, with `--report DIR`, `report.json` and a
//! self-contained `report.html` ([`render`]).

mod host;
mod render;
mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use bulkhead_probe::report::ProbeReport;
use serde::{Deserialize, Serialize};

use super::{Ctx, UsageError};
use verdict::Verdict;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Modes to run, comma-separated: vm, container, privileged, vm-privileged
    /// [default: vm,container,privileged].
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Write report.json and report.html into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The probe binary [default: bulkhead-probe next to this program, or BULKHEAD_PROBE].
    #[arg(long, env = "BULKHEAD_PROBE")]
    pub probe: Option<PathBuf>,
    /// Skip the cost measurements (syscall latency, file I/O, host memory).
    #[arg(long)]
    pub no_costs: bool,
    /// The image (name or digest), pulled or imported already.
    pub image: String,
}

/// One isolation setting under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Vm,
    Container,
    Privileged,
    VmPrivileged,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, String> {
        match s.trim() {
            "vm" => Ok(Mode::Vm),
            "container" => Ok(Mode::Container),
            "privileged" | "container-privileged" => Ok(Mode::Privileged),
            "vm-privileged" => Ok(Mode::VmPrivileged),
            other => Err(format!(
                "unknown mode {other:?} (vm, container, privileged, vm-privileged)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Vm => "vm",
            Mode::Container => "container",
            Mode::Privileged => "privileged",
            Mode::VmPrivileged => "vm-privileged",
        }
    }

    /// The `run` flags of this mode.
    fn run_flags(self) -> &'static [&'static str] {
        match self {
            Mode::Vm => &["--isolation", "vm"],
            Mode::Container => &["--isolation", "container"],
            Mode::Privileged => &["--isolation", "container", "--privileged"],
            Mode::VmPrivileged => &["--isolation", "vm", "--privileged"],
        }
    }

    fn is_vm(self) -> bool {
        matches!(self, Mode::Vm | Mode::VmPrivileged)
    }

    fn privileged(self) -> bool {
        matches!(self, Mode::Privileged | Mode::VmPrivileged)
    }
}

/// What the host kernel is exposed to in one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Surface {
    /// Syscalls the container's seccomp filter lets through (`None`: no filter).
    pub syscalls_allowed: Option<usize>,
    /// Whose kernel those syscalls reach.
    pub syscalls_reach: String,
    /// What the workload reaches of the host's kernel beyond its own kernel.
    pub host_entry_points: String,
}

/// One mode's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: Mode,
    pub command: String,
    pub probe: ProbeReport,
    pub on_host_kernel: bool,
    pub verdicts: BTreeMap<String, Verdict>,
    /// `run --timings` phases, milliseconds.
    pub timings_ms: Vec<(String, f64)>,
    /// The probe run from `run` to its exit, milliseconds.
    pub wall_ms: f64,
    /// PSS of every process the mode starts for an idle container, KiB.
    pub idle_pss_kib: Option<u64>,
    /// In a microVM: the VMM's own device counters (`metrics:` lines of its log, asked for
    /// with SIGUSR1 while the idle container ran), one line per virtio device.
    #[serde(default)]
    pub vmm_metrics: Vec<String>,
    pub surface: Surface,
}

/// The whole comparison (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub image: String,
    pub bulkhead: String,
    pub unix_time: u64,
    pub host_kernel: String,
    pub host_boot_id: String,
    pub modes: Vec<ModeResult>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let modes = if args.modes.is_empty() {
        vec![Mode::Vm, Mode::Container, Mode::Privileged]
    } else {
        args.modes
            .iter()
            .map(|m| Mode::parse(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(UsageError)?
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("bulkhead compare needs root (it runs containers and microVMs)");
    }
    let probe = find_probe(args.probe.as_deref())?;
    ctx.store()?
        .get_image(&args.image)
        .with_context(|| format!("unknown image {:?}: pull or import it first", args.image))?;
    let host = host::HostSide::prepare(Path::new("/run"), &probe)?;
    let mut results = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        eprintln!(
            "[{}/{}] {}: running the probe...",
            i + 1,
            modes.len(),
            mode.name()
        );
        let r =
            run_mode(ctx, &host, *mode, &args).with_context(|| format!("mode {}", mode.name()))?;
        eprintln!(
            "[{}/{}] {}: kernel {}, {} of {} probes reached the host, {:.1} s",
            i + 1,
            modes.len(),
            mode.name(),
            r.probe.identity.kernel,
            r.verdicts.values().filter(|v| **v == Verdict::Host).count(),
            r.verdicts.len(),
            r.wall_ms / 1000.0
        );
        results.push(r);
    }
    let comparison = Comparison {
        image: args.image.clone(),
        bulkhead: bulkhead_version::LONG.to_owned(),
        unix_time: crate::state::now(),
        host_kernel: host.kernel.clone(),
        host_boot_id: host.boot_id.clone(),
        modes: results,
    };
    drop(host);
    print!("{}", render::text(&comparison));
    if let Some(dir) = &args.report {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(&comparison)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let html = dir.join("report.html");
        std::fs::write(&html, render::html(&comparison))
            .with_context(|| format!("writing {}", html.display()))?;
        eprintln!("report: {} and {}", html.display(), json.display());
    }
    Ok(())
}

fn find_probe(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("the probe {} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("finding the bulkhead binary")?;
    let beside = exe.with_file_name("bulkhead-probe");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no bulkhead-probe next to {} (build it with scripts/build-static.sh, or give --probe PATH)",
        exe.display()
    )
}

/// This program with the global flags that give it the same configuration.
fn bulkhead(ctx: &Ctx) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap_or_else(|_| "bulkhead".into()));
    cmd.args(ctx.global_args());
    cmd
}

/// `bulkhead <global args> run ...` for `mode`, with the probe's volumes and hints.
fn run_command(ctx: &Ctx, host: &host::HostSide, mode: Mode, rw: &Path) -> Command {
    let mut cmd = bulkhead(ctx);
    cmd.arg("run")
        .args(mode.run_flags())
        .args(["--network", "none", "--quiet"])
        .arg("-v")
        .arg(format!(
            "{}:/.bulkhead-probe:ro",
            host.probe_dir().display()
        ))
        .arg("-v")
        .arg(format!("{}:/.bulkhead-rw", rw.display()));
    for (k, v) in host.probe_env() {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd
}

fn run_mode(
    ctx: &Ctx,
    host: &host::HostSide,
    mode: Mode,
    args: &Args,
) -> anyhow::Result<ModeResult> {
    let rw = host.volume(mode.name())?;
    let mut cmd = run_command(ctx, host, mode, &rw);
    cmd.args([
        "--rm",
        "--timings",
        &args.image,
        "/.bulkhead-probe/bulkhead-probe",
    ]);
    if args.no_costs {
        cmd.arg("--no-costs");
    }
    let shown = format!(
        "bulkhead run {} --rm {} /.bulkhead-probe/bulkhead-probe",
        mode.run_flags().join(" "),
        args.image
    );
    let began = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running bulkhead run")?;
    let wall_ms = began.elapsed().as_secs_f64() * 1000.0;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{shown}` failed ({}): {}", out.status, stderr.trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let mut probe: ProbeReport = serde_json::from_str(line)
        .with_context(|| format!("reading the probe's report from `{shown}`: {stdout:.300}"))?;
    let on_host_kernel = verdict::on_host_kernel(&probe, &host.boot_id);
    verdict::add_host_checks(&mut probe, on_host_kernel, &host.boot_id, &rw, &host.nonce);
    let verdicts = probe
        .results
        .iter()
        .map(|r| (r.id.clone(), verdict::judge(r, on_host_kernel)))
        .collect();
    let timings_ms = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(crate::timings::PREFIX))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?.to_owned();
            let ms: f64 = parts.next()?.parse().ok()?;
            Some((name, ms))
        })
        .collect();
    let (idle_pss_kib, vmm_metrics) = if args.no_costs {
        (None, Vec::new())
    } else {
        let idle = idle_sample(ctx, host, mode, &args.image)?;
        (Some(idle.pss_kib), idle.vmm_metrics)
    };
    Ok(ModeResult {
        mode,
        command: shown,
        surface: surface(mode),
        probe,
        on_host_kernel,
        verdicts,
        timings_ms,
        wall_ms,
        idle_pss_kib,
        vmm_metrics,
    })
}

/// What an idle container of one mode costs the host, and its VMM's device counters.
struct IdleSample {
    pss_kib: u64,
    vmm_metrics: Vec<String>,
}

/// The `metrics:` lines the VMM writes to its log on SIGUSR1 (waits up to a second).
fn vmm_metrics(vmm_pid: u32, vmm_log: &Path) -> Vec<String> {
    let lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.split_once("metrics: ").map(|(_, m)| m.trim().to_owned()))
            .collect()
    };
    let before = lines(&std::fs::read_to_string(vmm_log).unwrap_or_default()).len();
    let Ok(pid) = i32::try_from(vmm_pid) else {
        return Vec::new();
    };
    // SAFETY: kill(2) with a pid the state file recorded for this container's VMM.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        return Vec::new();
    }
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = lines(&std::fs::read_to_string(vmm_log).unwrap_or_default());
        if now.len() > before {
            return now[before..].to_vec();
        }
    }
    Vec::new()
}

/// Host memory of an idle container in `mode`: PSS of its supervisor and everything it
/// started (VMM, virtiofsd, host agent, the container's processes); in a microVM also the
/// VMM's device counters.
fn idle_sample(
    ctx: &Ctx,
    host: &host::HostSide,
    mode: Mode,
    image: &str,
) -> anyhow::Result<IdleSample> {
    let rw = host.volume(&format!("{}-idle", mode.name()))?;
    let out = run_command(ctx, host, mode, &rw)
        .args([
            "-d",
            image,
            "/.bulkhead-probe/bulkhead-probe",
            "--idle",
            "600",
        ])
        .stdin(Stdio::null())
        .output()
        .context("starting the idle container")?;
    if !out.status.success() {
        bail!(
            "the idle container did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Let start-up allocations settle.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let state = ctx.containers().find(&id).ok();
    let pss = state
        .as_ref()
        .and_then(|s| s.supervisor_pid)
        .map(|pid| host::pss_kib(&host::process_tree(pid)));
    let metrics = match state.as_ref().map(|s| (s.vmm_pid, &s.sandbox_dir)) {
        Some((Some(pid), Some(dir))) if mode.is_vm() => vmm_metrics(pid, &dir.join("vmm.log")),
        _ => Vec::new(),
    };
    let removed = bulkhead(ctx)
        .args(["rm", "-f", &id])
        .stdout(Stdio::null())
        .status();
    if !removed.map(|s| s.success()).unwrap_or(false) {
        log::warn!("could not remove the idle container {id}");
    }
    Ok(IdleSample {
        pss_kib: pss.context("the idle container's supervisor was not found")?,
        vmm_metrics: metrics,
    })
}

/// The host-kernel surface of `mode`: syscalls through the container's filter, or, in a
/// microVM, the VMM's devices.
fn surface(mode: Mode) -> Surface {
    use crate::security::{seccomp, SecurityOptions};
    let options = SecurityOptions {
        privileged: mode.privileged(),
        ..Default::default()
    };
    let syscalls_allowed = (!mode.privileged()).then(|| {
        let caps = options.effective_caps();
        seccomp::to_runtime_seccomp(seccomp::DEFAULT_PROFILE, &caps, "default")
            .map(|s| {
                s.syscalls()
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
                    .flat_map(|r| r.names().clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            })
            .unwrap_or(0)
    });
    if mode.is_vm() {
        Surface {
            syscalls_allowed,
            syscalls_reach: "the guest kernel".into(),
            host_entry_points: "KVM exits handled by bulkhead-vmm (itself under a seccomp filter, \
                                 jailed) and its virtio devices: console, vsock, virtio-fs \
                                 (virtiofsd, sandboxed)"
                .into(),
        }
    } else {
        Surface {
            syscalls_allowed,
            syscalls_reach: "the host kernel".into(),
            host_entry_points: "every syscall the filter allows, straight into the host kernel"
                .into(),
        }
    }
}
