//! The host's side of a comparison: a private work directory holding the probe and a
//! read-write volume, a marker process and a marker file the workload should never see,
//! and what the host itself looks like. Everything is removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Where the probe and the volumes live while the comparison runs.
pub struct HostSide {
    pub nonce: String,
    pub work: PathBuf,
    /// `var/tmp/bulkhead-compare-<nonce>` on the host's root filesystem (holds the nonce).
    pub host_file: PathBuf,
    marker: Child,
    /// The cgroup (v2) the marker runs in, named with the nonce, when it could be made.
    marker_cgroup: Option<PathBuf>,
    pub kernel: String,
    pub boot_id: String,
    pub interfaces: Vec<String>,
}

fn random_hex() -> String {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom fills our buffer.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl HostSide {
    /// Prepares the work directory below `parent` with a copy of `probe`.
    pub fn prepare(parent: &Path, probe: &Path) -> anyhow::Result<Self> {
        let nonce = random_hex();
        let work = parent.join(format!("bulkhead-compare-{nonce}"));
        std::fs::create_dir_all(work.join("probe"))
            .with_context(|| format!("creating {}", work.display()))?;
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
        let copy = work.join("probe/bulkhead-probe");
        std::fs::copy(probe, &copy)
            .with_context(|| format!("copying the probe {}", probe.display()))?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
        let host_file = PathBuf::from(format!("/var/tmp/bulkhead-compare-{nonce}"));
        std::fs::write(&host_file, &nonce)
            .with_context(|| format!("writing {}", host_file.display()))?;
        let marker = Command::new("sleep")
            .arg0(format!("bulkhead-compare-marker-{nonce}"))
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the marker process")?;
        // In a cgroup named with the nonce: a workload that sees the host's cgroup tree
        // cannot read the marker's pid (other pid namespaces read as 0) but sees the name.
        let marker_cgroup = bulkhead_sandbox::cgroup::Cgroup2::find()
            .map(|cg| cg.path.join(format!("bulkhead-compare-{nonce}")))
            .ok_or_else(|| std::io::Error::other("no cgroup2 hierarchy"));
        let marker_cgroup = marker_cgroup
            .and_then(|cg| std::fs::create_dir(&cg).map(|()| cg))
            .and_then(|cg| {
                std::fs::write(cg.join("cgroup.procs"), marker.id().to_string()).map(|()| cg)
            })
            .map_err(|e| log::warn!("no cgroup for the marker process: {e}"))
            .ok();
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let interfaces = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        Ok(HostSide {
            kernel: read("/proc/sys/kernel/osrelease"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            nonce,
            work,
            host_file,
            marker,
            marker_cgroup,
            interfaces,
        })
    }

    pub fn probe_dir(&self) -> PathBuf {
        self.work.join("probe")
    }

    /// A fresh read-write volume for one mode.
    pub fn volume(&self, mode: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(format!("rw-{mode}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    pub fn marker_pid(&self) -> u32 {
        self.marker.id()
    }

    /// The probe's environment: what it looks for.
    pub fn probe_env(&self) -> Vec<(String, String)> {
        vec![
            ("BULKHEAD_PROBE_NONCE".into(), self.nonce.clone()),
            (
                "BULKHEAD_PROBE_MARKER_PID".into(),
                self.marker_pid().to_string(),
            ),
            (
                "BULKHEAD_PROBE_HOST_FILE".into(),
                self.host_file.to_string_lossy().into_owned(),
            ),
            (
                "BULKHEAD_PROBE_HOST_IFACES".into(),
                self.interfaces.join(","),
            ),
            ("BULKHEAD_PROBE_RW_DIR".into(), "/.bulkhead-rw".into()),
        ]
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        let _ = self.marker.kill();
        let _ = self.marker.wait();
        if let Some(cg) = &self.marker_cgroup {
            // The cgroup empties once the killed marker is gone.
            for _ in 0..50 {
                if std::fs::remove_dir(cg).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(&self.host_file);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Proportional set size of `pids` together, in KiB (`Pss` of `smaps_rollup`).
pub fn pss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// `root` and every process descending from it.
pub fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .get(stat.rfind(')')? + 2..)?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}
