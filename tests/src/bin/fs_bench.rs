//! fs-bench: virtio-fs throughput seen from inside the guest, bulkhead-vmm against QEMU's
//! microvm machine, both as vhost-user frontends of the same virtiofsd (started per boot
//! with the runtime's own options), same kernel, initramfs, vCPUs and memory, rounds
//! interleaved. Each boot mounts the share, drops the guest's caches, times a sequential
//! `dd` of a big file, drops caches again and times `find -type f | wc -l` over a tree of
//! small files. Run it where a KVM boots Linux (bench/fs.sh, tests/harness/run-in-kvm.sh).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulkhead_e2e::bench::{median, Tool};
use bulkhead_e2e::guest::DEFAULT_VIRTIOFSD;
use bulkhead_e2e::launch::qemu_vhost_user_fs;
use bulkhead_e2e::{
    kernel_dir, qemu_microvm_command, vmm_binary, vmm_command, BootSpec, TestInitramfs,
    WatchedChild,
};
use bulkhead_sandbox::virtiofsd_process::VirtiofsdProcess;
use bulkhead_sandbox::VirtiofsdOptions;

const USAGE: &str = "usage: fs-bench [--rounds N] [--size-mib N] [--files N] [--kernel-dir DIR]
                [--kernel FILE] [--vmm PATH] [--qemu PATH] [--virtiofsd PATH]
                [--only vmm|qemu] [--vcpus N] [--memory MIB] [--timeout SECS]
                [--transcripts DIR]
In-guest sequential read of a --size-mib file and a find over --files small files on
virtio-fs, bulkhead-vmm against qemu-system-x86_64 -M microvm with the same virtiofsd.
Defaults: 3 rounds, 1024 MiB, 20000 files, 1 vCPU, 512 MiB, 900 s per boot; kernel from
$BULKHEAD_KERNEL_DIR or kernel-config/build-kernel.sh --print-dir, VMM from $BULKHEAD_VMM
or target/, virtiofsd from $BULKHEAD_VIRTIOFSD or the tool cache. --transcripts DIR keeps
each boot's console and VMM output as DIR/<round>-<tool>.log.";

/// Mount tag of the share in both VMs.
const TAG: &str = "bench";
/// Files per directory of the small-file tree.
const FILES_PER_DIR: usize = 200;
/// Printed by the guest when it has nothing more to say.
const DONE: &str = "FSBENCH-DONE";

/// The guest's `/init`: mount the share, then the two timed operations, each after
/// dropping the guest's caches. Times come from /proc/uptime (10 ms resolution).
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin 2>/dev/null
echo BULKHEAD-INIT-READY
now() { read up _ < /proc/uptime; echo "$up"; }
fail() { echo "FSBENCH-ERROR $*"; echo FSBENCH-DONE; reboot -f; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches || fail "drop_caches"; }
mkdir -p /mnt/fs
mount -t virtiofs bench /mnt/fs || fail "mount -t virtiofs bench"
echo "FSBENCH size $(stat -c %s /mnt/fs/big)"
drop
echo FSBENCH-MARK read
t0=$(now)
dd if=/mnt/fs/big of=/dev/null bs=1M 2>/tmp/dd.log || fail "dd: $(cat /tmp/dd.log)"
t1=$(now)
echo "FSBENCH read $t0 $t1"
drop
echo FSBENCH-MARK walk
t0=$(now)
n=$(find /mnt/fs/tree -type f | wc -l)
t1=$(now)
echo "FSBENCH walk $t0 $t1 $n"
umount /mnt/fs
echo FSBENCH-DONE
reboot -f
"#;

struct Args {
    rounds: usize,
    size_mib: u64,
    files: usize,
    kernel_dir: Option<PathBuf>,
    kernel: Option<PathBuf>,
    vmm: Option<PathBuf>,
    qemu: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    only: Option<String>,
    vcpus: u32,
    memory: u32,
    timeout: Duration,
    transcripts: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        rounds: 3,
        size_mib: 1024,
        files: 20_000,
        kernel_dir: None,
        kernel: None,
        vmm: None,
        qemu: None,
        virtiofsd: None,
        only: None,
        vcpus: 1,
        memory: 512,
        timeout: Duration::from_secs(900),
        transcripts: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--size-mib" => a.size_mib = value()?.parse().context("--size-mib")?,
            "--files" => a.files = value()?.parse().context("--files")?,
            "--kernel-dir" => a.kernel_dir = Some(value()?.into()),
            "--kernel" => a.kernel = Some(value()?.into()),
            "--vmm" => a.vmm = Some(value()?.into()),
            "--qemu" => a.qemu = Some(value()?.into()),
            "--virtiofsd" => a.virtiofsd = Some(value()?.into()),
            "--only" => a.only = Some(value()?),
            "--vcpus" => a.vcpus = value()?.parse().context("--vcpus")?,
            "--memory" => a.memory = value()?.parse().context("--memory")?,
            "--timeout" => a.timeout = Duration::from_secs(value()?.parse().context("--timeout")?),
            "--transcripts" => a.transcripts = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.rounds == 0 || a.size_mib == 0 || a.files == 0 {
        bail!("--rounds, --size-mib and --files must be at least 1");
    }
    if let Some(o) = &a.only {
        if o != "vmm" && o != "qemu" {
            bail!("--only takes vmm or qemu, not {o}");
        }
    }
    Ok(a)
}

/// One boot's figures: guest-clock seconds, and host-clock seconds between the guest's
/// serial lines as a cross-check.
struct Figures {
    read_s: f64,
    read_host_s: f64,
    walk_s: f64,
    walk_host_s: f64,
}

#[derive(Default)]
struct Samples {
    read_s: Vec<f64>,
    walk_s: Vec<f64>,
    failures: usize,
}

/// The scratch directory (shared dir, socket, initramfs, logs); removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("fs-bench: cannot remove {}: {e}", self.0.display());
        }
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !bulkhead_e2e::require_linux_kvm("fs-bench") {
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
    let virtiofsd = args
        .virtiofsd
        .clone()
        .or_else(|| std::env::var_os("BULKHEAD_VIRTIOFSD").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VIRTIOFSD));
    if !virtiofsd.is_file() {
        bail!(
            "no virtiofsd at {} (scripts/install-virtiofsd.sh, or --virtiofsd)",
            virtiofsd.display()
        );
    }
    if let Some(q) = &args.qemu {
        std::env::set_var("BULKHEAD_QEMU", q);
    }
    let mut tools: Vec<(Tool, Option<PathBuf>)> = Vec::new();
    if args.only.as_deref() != Some("qemu") {
        let vmm = match &args.vmm {
            Some(p) if p.is_file() => p.clone(),
            Some(p) => bail!("--vmm {} does not exist", p.display()),
            None => vmm_binary().context("locating bulkhead-vmm (or pass --only qemu)")?,
        };
        tools.push((Tool::Vmm, Some(vmm)));
    }
    if args.only.as_deref() != Some("vmm") {
        tools.push((Tool::Qemu, None));
    }

    if let Some(d) = &args.transcripts {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("fs-bench-{}", std::process::id())));
    let shared = scratch.0.join("shared");
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let size = args.size_mib * 1024 * 1024;
    println!(
        "fs-bench: writing {} MiB and {} small files to {} ({})",
        args.size_mib,
        args.files,
        shared.display(),
        fs_type(&shared)
    );
    write_big_file(&shared.join("big"), args.size_mib)?;
    write_tree(&shared.join("tree"), args.files)?;
    let initrd = scratch.0.join("fs-bench.cpio");
    TestInitramfs::new()
        .init_script(INIT)
        .write_to(&initrd)
        .context("building the test initramfs")?;
    let spec = BootSpec::new(&kernel, &initrd, args.vcpus, args.memory, "fsbench");
    let options = VirtiofsdOptions {
        binary: virtiofsd.clone(),
        ..VirtiofsdOptions::default()
    };
    println!(
        "fs-bench: kernel {}, {} vCPU, {} MiB, {} rounds; virtiofsd {} {}",
        kernel.display(),
        args.vcpus,
        args.memory,
        args.rounds,
        virtiofsd.display(),
        options
            .args(Path::new("SOCKET"), &shared)
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let mut results: Vec<Samples> = tools.iter().map(|_| Samples::default()).collect();
    for round in 1..=args.rounds {
        // Alternate which tool goes first so neither always runs right after the data was
        // written or right after the other.
        let mut order: Vec<usize> = (0..tools.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let (tool, vmm) = &tools[i];
            let transcript = args
                .transcripts
                .as_ref()
                .map(|d| d.join(format!("{round}-{}.log", tool.name())));
            let r = one_boot(
                &rt,
                &options,
                (*tool, vmm.as_deref()),
                &spec,
                &scratch.0,
                size,
                &args,
                transcript.as_deref(),
            );
            match r {
                Ok(f) => {
                    println!(
                        "round {round:>2} {:<13} read {:>8.2} s {:>8.1} MB/s (host {:.2} s)   walk {:>8.2} s (host {:.2} s)",
                        tool.name(),
                        f.read_s,
                        mb_per_s(size, f.read_s),
                        f.read_host_s,
                        f.walk_s,
                        f.walk_host_s
                    );
                    results[i].read_s.push(f.read_s);
                    results[i].walk_s.push(f.walk_s);
                }
                Err(e) => {
                    println!("round {round:>2} {:<13} FAILED: {e:#}", tool.name());
                    results[i].failures += 1;
                }
            }
            let _ = std::io::stdout().flush();
        }
    }

    println!();
    println!(
        "{:<13} {:>3} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "tool", "n", "read med s", "read MB/s", "read min", "walk med s", "walk min"
    );
    for ((tool, _), s) in tools.iter().zip(&results) {
        println!(
            "{:<13} {:>3} {:>12.2} {:>12.1} {:>10.2} {:>10.2} {:>10.2}{}",
            tool.name(),
            s.read_s.len(),
            median(&s.read_s),
            mb_per_s(size, median(&s.read_s)),
            min(&s.read_s),
            median(&s.walk_s),
            min(&s.walk_s),
            if s.failures > 0 {
                format!("  ({} failed)", s.failures)
            } else {
                String::new()
            }
        );
    }
    if let [vmm, qemu] = &results[..] {
        if vmm.read_s.is_empty() || qemu.read_s.is_empty() {
            println!("no ratio: a tool has no successful boot");
        } else {
            let (rv, rq) = (median(&vmm.read_s), median(&qemu.read_s));
            let (wv, wq) = (median(&vmm.walk_s), median(&qemu.walk_s));
            println!(
                "ratio bulkhead-vmm / qemu-microvm: read throughput {:.2} (time {:.2}), \
                 walk time {:.2}",
                rq / rv,
                rv / rq,
                wv / wq
            );
        }
    }
    if results.iter().any(|s| s.failures > 0) {
        // exit() runs no destructors: remove the scratch directory first.
        drop(scratch);
        std::process::exit(1);
    }
    Ok(())
}

/// One boot of `tool` with a fresh virtiofsd; the figures the guest printed.
#[allow(clippy::too_many_arguments)]
fn one_boot(
    rt: &tokio::runtime::Runtime,
    options: &VirtiofsdOptions,
    (tool, vmm): (Tool, Option<&Path>),
    spec: &BootSpec,
    scratch: &Path,
    size: u64,
    args: &Args,
    transcript: Option<&Path>,
) -> Result<Figures> {
    drop_host_caches();
    let socket = scratch.join("vfs.sock");
    let log = scratch.join("virtiofsd.log");
    let _ = fs::remove_file(&socket);
    let mut daemon = rt
        .block_on(VirtiofsdProcess::start(
            options,
            &socket,
            &scratch.join("shared"),
            &log,
            &[],
        ))
        .context("starting virtiofsd")?;
    let mut cmd = match (tool, vmm) {
        (Tool::Vmm, Some(v)) => {
            let mut c = vmm_command(v, spec);
            c.arg("--fs").arg(format!("{TAG}={}", socket.display()));
            c
        }
        _ => {
            let mut c = qemu_microvm_command(spec, true);
            qemu_vhost_user_fs(&mut c, spec.memory_mib, &socket, TAG);
            c
        }
    };
    let result = watch(&mut cmd, args.timeout, size, args.files, transcript);
    let tail = daemon.log_tail(5);
    rt.block_on(daemon.stop());
    result.map_err(|e| {
        if tail.trim().is_empty() {
            e
        } else {
            anyhow::anyhow!("{e:#}\n  virtiofsd log ends with:\n{tail}")
        }
    })
}

/// Runs the VM to the guest's DONE line and parses what it printed.
fn watch(
    cmd: &mut Command,
    timeout: Duration,
    size: u64,
    files: usize,
    transcript: Option<&Path>,
) -> Result<Figures> {
    let mut child = WatchedChild::spawn(cmd)?;
    let done = child.wait_for_stdout(DONE, timeout);
    // The guest reboots after DONE; give it a moment, then make sure it is gone.
    let _ = child.wait_exit(Duration::from_secs(if done.is_some() { 30 } else { 0 }));
    let lines = child.lines().to_vec();
    if let Some(path) = transcript {
        if let Err(e) = fs::write(path, child.transcript()) {
            eprintln!("fs-bench: cannot write {}: {e}", path.display());
        }
    }
    let tail = || {
        let t: Vec<&str> = lines
            .iter()
            .rev()
            .take(20)
            .map(|l| l.text.as_str())
            .collect();
        t.into_iter().rev().collect::<Vec<_>>().join("\n  ")
    };
    if done.is_none() {
        bail!("no {DONE} within {timeout:?}; last output:\n  {}", tail());
    }
    if let Some(l) = lines.iter().find(|l| l.text.contains("FSBENCH-ERROR")) {
        bail!("guest: {}; last output:\n  {}", l.text, tail());
    }
    let find = |key: &str| -> Result<(Vec<String>, Duration)> {
        let l = lines
            .iter()
            .find(|l| l.text.split_whitespace().take(2).eq(["FSBENCH", key]))
            .with_context(|| format!("no 'FSBENCH {key}' line; last output:\n  {}", tail()))?;
        Ok((
            l.text
                .split_whitespace()
                .skip(2)
                .map(str::to_owned)
                .collect(),
            l.at,
        ))
    };
    let mark = |key: &str| -> Result<Duration> {
        lines
            .iter()
            .find(|l| l.text.trim() == format!("FSBENCH-MARK {key}"))
            .map(|l| l.at)
            .with_context(|| format!("no 'FSBENCH-MARK {key}' line"))
    };
    let (sz, _) = find("size")?;
    if sz.first().map(String::as_str) != Some(size.to_string().as_str()) {
        bail!("guest sees the big file with size {sz:?}, expected {size}");
    }
    let (read, read_at) = find("read")?;
    let (walk, walk_at) = find("walk")?;
    let span = |v: &[String]| -> Result<f64> {
        let t0: f64 = v.first().context("no start time")?.parse()?;
        let t1: f64 = v.get(1).context("no end time")?.parse()?;
        Ok(t1 - t0)
    };
    let n: usize = walk.get(2).context("no file count")?.parse()?;
    if n != files {
        bail!("find counted {n} files in the tree, expected {files}");
    }
    Ok(Figures {
        read_s: span(&read)?,
        read_host_s: (read_at - mark("read")?).as_secs_f64(),
        walk_s: span(&walk)?,
        walk_host_s: (walk_at - mark("walk")?).as_secs_f64(),
    })
}

/// `size_mib` MiB of pseudo-random bytes (not zeros: no hole or zero-page shortcuts).
fn write_big_file(path: &Path, size_mib: u64) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut block = vec![0u8; 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    for i in 0..size_mib {
        block[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&block)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    f.sync_all().ok();
    Ok(())
}

/// `files` small files, [`FILES_PER_DIR`] per directory.
fn write_tree(root: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let path = dir.join(format!("f{i:06}"));
        fs::write(&path, format!("file {i}\n").repeat(1 + i % 16))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Best effort: the shared dir is usually a tmpfs (nothing to drop), elsewhere this makes
/// every boot start from the disk.
fn drop_host_caches() {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn fs_type(path: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "file system type unknown".into(),
    }
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn min(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::NAN, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_is_valid_shell() {
        let out = Command::new("sh")
            .args(["-n", "-c", INIT])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(INIT.contains(&format!("mount -t virtiofs {TAG} ")));
    }

    #[test]
    fn tree_has_the_requested_number_of_files() {
        let dir = tempfile_dir("tree");
        write_tree(&dir, 450).unwrap();
        let mut n = 0;
        for d in fs::read_dir(&dir).unwrap() {
            n += fs::read_dir(d.unwrap().path()).unwrap().count();
        }
        assert_eq!(n, 450);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn big_file_has_the_size_and_is_not_zeros() {
        let dir = tempfile_dir("big");
        let p = dir.join("big");
        write_big_file(&p, 2).unwrap();
        let data = fs::read(&p).unwrap();
        assert_eq!(data.len(), 2 * 1024 * 1024);
        assert!(data.iter().filter(|b| **b == 0).count() < data.len() / 100);
        assert_ne!(data[..1024 * 1024], data[1024 * 1024..]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(min(&[3.0, 1.5]), 1.5);
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fs-bench-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
