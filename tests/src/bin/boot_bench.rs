//! boot-bench: launch-to-init time and memory overhead of bulkhead-vmm against
//! QEMU's microvm machine, same kernel, initramfs, vCPUs and memory, rounds
//! interleaved. Run it where a KVM boots Linux (tests/harness/run-in-kvm.sh).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulkhead_e2e::bench::{median, Tool};
use bulkhead_e2e::memory::{vmm_memory, VmmMemory};
use bulkhead_e2e::process::thread_report;
use bulkhead_e2e::{
    kernel_dir, qemu_microvm_command, vmm_binary, vmm_command, BootSpec, TestInitramfs,
    WatchedChild, INIT_READY_MARKER,
};

const USAGE: &str =
    "usage: boot-bench [--rounds N] [--kernel-dir DIR] [--kernel FILE] [--initrd FILE]
                  [--vmm PATH] [--qemu PATH] [--only vmm|qemu] [--vcpus N] [--memory MIB]
                  [--timeout SECS] [--no-rng]
Times spawn -> '{marker}' on the serial console for bulkhead-vmm and
qemu-system-x86_64 -M microvm (interleaved rounds), and reads each process's
memory at the marker: Rss outside guest RAM (smaps) and peak RSS (VmHWM).
Defaults: 10 rounds, 1 vCPU, 128 MiB, kernel from $BULKHEAD_KERNEL_DIR or
kernel-config/build-kernel.sh --print-dir, VMM from $BULKHEAD_VMM or target/.";

struct Args {
    rounds: usize,
    kernel_dir: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    vmm: Option<PathBuf>,
    qemu: Option<PathBuf>,
    only: Option<String>,
    vcpus: u32,
    memory: u32,
    timeout: Duration,
    rng: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        rounds: 10,
        kernel_dir: None,
        kernel: None,
        initrd: None,
        vmm: None,
        qemu: None,
        only: None,
        vcpus: 1,
        memory: 128,
        timeout: Duration::from_secs(120),
        rng: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--kernel-dir" => a.kernel_dir = Some(value()?.into()),
            "--kernel" => a.kernel = Some(value()?.into()),
            "--initrd" => a.initrd = Some(value()?.into()),
            "--vmm" => a.vmm = Some(value()?.into()),
            "--qemu" => a.qemu = Some(value()?.into()),
            "--only" => a.only = Some(value()?),
            "--vcpus" => a.vcpus = value()?.parse().context("--vcpus")?,
            "--memory" => a.memory = value()?.parse().context("--memory")?,
            "--timeout" => a.timeout = Duration::from_secs(value()?.parse().context("--timeout")?),
            "--no-rng" => a.rng = false,
            "-h" | "--help" => {
                println!("{}", USAGE.replace("{marker}", INIT_READY_MARKER));
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    Ok(a)
}

#[derive(Default)]
struct Samples {
    boot_ms: Vec<f64>,
    overhead_kib: Vec<u64>,
    peak_kib: Vec<u64>,
    failures: usize,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !bulkhead_e2e::require_linux_kvm("boot-bench") {
        std::process::exit(2);
    }

    let kernel = match (&args.kernel, &args.kernel_dir) {
        (Some(k), _) => k.clone(),
        (None, Some(d)) => d.join("vmlinux"),
        (None, None) => kernel_dir().context("locating the guest kernel")?.vmlinux(),
    };
    if !kernel.is_file() {
        bail!("kernel {} not found", kernel.display());
    }
    let scratch = std::env::temp_dir().join(format!("boot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let initrd = match &args.initrd {
        Some(p) => p.clone(),
        None => {
            let p = scratch.join("test.cpio");
            TestInitramfs::new()
                .write_to(&p)
                .context("building the test initramfs")?;
            p
        }
    };
    if let Some(q) = &args.qemu {
        std::env::set_var("BULKHEAD_QEMU", q);
    }

    let mut tools = Vec::new();
    if args.only.as_deref() != Some("qemu") {
        let vmm = match &args.vmm {
            Some(p) if p.is_file() => Some(p.clone()),
            Some(p) => bail!("--vmm {} does not exist", p.display()),
            None => match vmm_binary() {
                Ok(p) => Some(p),
                Err(e) if args.only.is_none() => {
                    eprintln!("boot-bench: {e}; measuring QEMU only");
                    None
                }
                Err(e) => return Err(e.into()),
            },
        };
        if let Some(v) = vmm {
            tools.push((Tool::Vmm, Some(v)));
        }
    }
    if args.only.as_deref() != Some("vmm") {
        tools.push((Tool::Qemu, None));
    }

    let spec = BootSpec::new(&kernel, &initrd, args.vcpus, args.memory, "sleep");
    println!(
        "boot-bench: kernel {} initrd {} ({} vCPU, {} MiB), {} rounds, cmdline '{}'",
        kernel.display(),
        initrd.display(),
        args.vcpus,
        args.memory,
        args.rounds,
        spec.cmdline
    );

    let mut results: Vec<Samples> = tools.iter().map(|_| Samples::default()).collect();
    for round in 1..=args.rounds {
        for ((tool, vmm), samples) in tools.iter().zip(results.iter_mut()) {
            let mut cmd = match (tool, vmm) {
                (Tool::Vmm, Some(v)) => vmm_command(v, &spec),
                _ => qemu_microvm_command(&spec, args.rng),
            };
            match one_boot(&mut cmd, &args, &spec) {
                Ok((ms, mem)) => {
                    let mem_text = match mem {
                        Ok(m) => {
                            samples.overhead_kib.push(m.overhead_rss_kib);
                            samples.peak_kib.push(m.peak_rss_kib);
                            format!(
                                "overhead {} KiB, guest {} KiB, peak {} KiB",
                                m.overhead_rss_kib, m.guest_rss_kib, m.peak_rss_kib
                            )
                        }
                        Err(e) => format!("memory unavailable: {e:#}"),
                    };
                    println!(
                        "round {round:>2} {:<13} {ms:>9.1} ms  {mem_text}",
                        tool.name()
                    );
                    samples.boot_ms.push(ms);
                }
                Err(e) => {
                    println!("round {round:>2} {:<13} FAILED: {e:#}", tool.name());
                    samples.failures += 1;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    println!();
    println!(
        "{:<13} {:>3} {:>10} {:>10} {:>10} {:>15} {:>13}",
        "tool", "n", "median ms", "min ms", "max ms", "overhead KiB", "peak RSS KiB"
    );
    for ((tool, _), s) in tools.iter().zip(&results) {
        println!(
            "{:<13} {:>3} {:>10.1} {:>10.1} {:>10.1} {:>15} {:>13}{}",
            tool.name(),
            s.boot_ms.len(),
            median(&s.boot_ms),
            s.boot_ms.iter().cloned().fold(f64::NAN, f64::min),
            s.boot_ms.iter().cloned().fold(f64::NAN, f64::max),
            median_u(&s.overhead_kib).map_or("-".into(), |v| v.to_string()),
            median_u(&s.peak_kib).map_or("-".into(), |v| v.to_string()),
            if s.failures > 0 {
                format!("  ({} failed)", s.failures)
            } else {
                String::new()
            }
        );
    }
    if let [vmm, qemu] = &results[..] {
        let (v, q) = (median(&vmm.boot_ms), median(&qemu.boot_ms));
        println!(
            "ratio bulkhead-vmm / qemu-microvm (median boot): {:.2}",
            v / q
        );
        if let (Some(v), Some(q)) = (median_u(&vmm.overhead_kib), median_u(&qemu.overhead_kib)) {
            println!(
                "ratio bulkhead-vmm / qemu-microvm (median overhead RSS): {:.2}",
                v as f64 / q as f64
            );
        }
    }
    if results.iter().any(|s| s.failures > 0) {
        std::process::exit(1);
    }
    Ok(())
}

/// One launch: time to the marker, memory at the marker, then kill.
fn one_boot(
    cmd: &mut std::process::Command,
    args: &Args,
    spec: &BootSpec,
) -> Result<(f64, Result<VmmMemory>)> {
    let mut child = WatchedChild::spawn(cmd)?;
    let Some(line) = child.wait_for_stdout(INIT_READY_MARKER, args.timeout) else {
        let threads = thread_report(child.pid());
        let killed = child.kill();
        let t = child.transcript();
        let tail: Vec<&str> = t.lines().rev().take(15).collect();
        bail!(
            "no marker within {:?}; threads then:\n{threads}last output:\n  {}\nkill: {killed:?}",
            args.timeout,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        );
    };
    let mem = memory_within(
        child.pid(),
        u64::from(spec.memory_mib),
        Duration::from_secs(30),
    );
    child.kill()?;
    Ok((line.at.as_secs_f64() * 1000.0, mem))
}

/// [`vmm_memory`], given up after `limit`: reading `/proc/PID/smaps` waits for the
/// process's memory lock, which a thread stuck in the kernel can hold forever.
fn memory_within(pid: u32, guest_mib: u64, limit: Duration) -> Result<VmmMemory> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vmm_memory(pid, guest_mib));
    });
    match rx.recv_timeout(limit) {
        Ok(mem) => mem.map_err(anyhow::Error::from),
        Err(_) => bail!(
            "reading /proc/{pid}/smaps blocked for {limit:?}; threads:\n{}",
            thread_report(pid)
        ),
    }
}

fn median_u(v: &[u64]) -> Option<u64> {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len().checked_sub(1)? / 2).copied()
}
