//! The host cgroup of one jailed sandbox, `<cgroup2>/<parent>/<sandbox>`: the VMM and
//! virtiofsd run in it, with `memory.max` (guest memory plus overhead, no swap),
//! `cpu.max` (the vCPUs plus one for the event loop and virtiofsd) and `pids.max`.
//! Controllers the host does not offer are left out (and logged), never faked.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::JailError;
use crate::cgroup::Cgroup2;

/// Threads and processes of a sandbox's VMM and virtiofsd (vCPUs, event loop, watchdog,
/// virtiofsd's pool and sandbox) fit well below this.
pub const PIDS_MAX: u32 = 256;

/// `cpu.max`'s period.
const CPU_PERIOD_US: u64 = 100_000;

/// What the sandbox cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    /// CPUs' worth of time per period.
    pub cpus: u32,
    pub pids: u32,
}

impl CgroupLimits {
    /// For a VM of `vcpus` and `memory_mib`, plus `overhead_mib` for the VMM and virtiofsd.
    pub fn for_vm(vcpus: u32, memory_mib: u64, overhead_mib: u64) -> Self {
        CgroupLimits {
            memory_bytes: memory_mib
                .saturating_add(overhead_mib)
                .saturating_mul(1 << 20),
            cpus: vcpus.saturating_add(1),
            pids: PIDS_MAX,
        }
    }

    /// The `cpu.max` line.
    pub fn cpu_max(&self) -> String {
        format!("{} {CPU_PERIOD_US}", u64::from(self.cpus) * CPU_PERIOD_US)
    }
}

/// A sandbox cgroup; removed (after its processes are gone) by [`SandboxCgroup::remove`]
/// or, best effort, on drop.
#[derive(Debug)]
pub struct SandboxCgroup {
    path: PathBuf,
    removed: bool,
}

impl SandboxCgroup {
    /// Creates `<hierarchy>/<parent>/<name>` with `limits`, enabling the controllers it
    /// needs on the way down.
    pub fn create(parent: &Path, name: &str, limits: &CgroupLimits) -> Result<Self, JailError> {
        let hierarchy = Cgroup2::find().ok_or(JailError::NoCgroup2)?;
        Self::create_in(&hierarchy.path, parent, name, limits)
    }

    fn create_in(
        root: &Path,
        parent: &Path,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, JailError> {
        let parent = root.join(parent.strip_prefix("/").unwrap_or(parent));
        std::fs::create_dir_all(&parent).map_err(err("create", &parent))?;
        let offered = read_words(&root.join("cgroup.controllers"));
        let wanted: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| offered.iter().any(|o| o == c))
            .collect();
        for missing in ["memory", "cpu", "pids"]
            .iter()
            .filter(|c| !wanted.contains(c))
        {
            log::warn!("the host's cgroup2 hierarchy has no {missing} controller: sandboxes run without that limit");
        }
        // Enable on every level from the root down to the parent.
        let mut level = root.to_path_buf();
        let rel = parent.strip_prefix(root).unwrap_or(Path::new(""));
        let mut levels = vec![level.clone()];
        for c in rel.components() {
            level.push(c);
            levels.push(level.clone());
        }
        for dir in &levels {
            enable(dir, &wanted)?;
        }
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // A stale one of a crashed front end with this very sandbox name: reuse it if empty.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err("create", &path)(e)),
        }
        let cgroup = SandboxCgroup {
            path,
            removed: false,
        };
        if wanted.contains(&"memory") {
            cgroup.write("memory.max", &limits.memory_bytes.to_string())?;
            // Guest memory in swap is guest memory on disk; keep it in RAM (best effort:
            // hosts without swap accounting lack the file).
            if cgroup.path.join("memory.swap.max").exists() {
                cgroup.write("memory.swap.max", "0")?;
            }
        }
        if wanted.contains(&"cpu") {
            cgroup.write("cpu.max", &limits.cpu_max())?;
        }
        if wanted.contains(&"pids") {
            cgroup.write("pids.max", &limits.pids.to_string())?;
        }
        Ok(cgroup)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs`, open for writing: a child writes `0` to it to move itself in.
    pub fn procs_fd(&self) -> Result<OwnedFd, JailError> {
        let path = self.path.join("cgroup.procs");
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(err("open", &path))?;
        Ok(file.into())
    }

    fn write(&self, file: &str, value: &str) -> Result<(), JailError> {
        let path = self.path.join(file);
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(err("open", &path))?;
        f.write_all(value.as_bytes()).map_err(err("write", &path))
    }

    /// Removes the cgroup once its processes have gone (they were killed before; exiting
    /// takes a moment), waiting up to `timeout`.
    pub fn remove(&mut self, timeout: Duration) -> Result<(), JailError> {
        if self.removed {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(err("remove", &self.path)(e)),
            }
        }
        self.removed = true;
        Ok(())
    }

    /// The cgroup's peak memory (`memory.peak`, Linux 5.19+), if known.
    pub fn memory_peak(&self) -> Option<u64> {
        std::fs::read_to_string(self.path.join("memory.peak"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove(Duration::from_secs(2)) {
            log::warn!("leaving the cgroup: {}", bulkhead_log::error_chain(&e));
        }
    }
}

fn enable(dir: &Path, controllers: &[&str]) -> Result<(), JailError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_words(&control);
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.iter().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .write(true)
        .open(&control)
        .map_err(err("open", &control))?;
    f.write_all(missing.join(" ").as_bytes())
        .map_err(err("enable controllers in", &control))
}

fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JailError {
    let path = path.to_path_buf();
    move |source| JailError::Cgroup { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_for_a_vm() {
        let l = CgroupLimits::for_vm(2, 512, 96);
        assert_eq!(l.memory_bytes, 608 << 20);
        assert_eq!(l.cpus, 3);
        assert_eq!(l.cpu_max(), "300000 100000");
        assert_eq!(l.pids, PIDS_MAX);
    }

    #[test]
    fn a_real_sandbox_cgroup_as_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return bulkhead_test_skip::skip("needs root for cgroups");
        }
        let Some(h) = Cgroup2::find() else {
            return bulkhead_test_skip::skip("no cgroup2 hierarchy");
        };
        let parent = PathBuf::from(format!("bulkhead-test-{}", std::process::id()));
        let limits = CgroupLimits::for_vm(1, 64, 32);
        let mut cg = SandboxCgroup::create(&parent, "pod-1", &limits).unwrap();
        assert!(cg.path().starts_with(&h.path));
        if h.has_controller("memory") {
            let max = std::fs::read_to_string(cg.path().join("memory.max")).unwrap();
            assert_eq!(max.trim(), (96u64 << 20).to_string());
        }
        if h.has_controller("cpu") {
            let max = std::fs::read_to_string(cg.path().join("cpu.max")).unwrap();
            assert_eq!(max.trim(), "200000 100000");
        }
        // A child moves itself in by writing 0.
        let procs = cg.procs_fd().unwrap();
        let procs = std::os::fd::AsRawFd::as_raw_fd(&procs);
        let mut child = unsafe {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep")
                .arg("30")
                .pre_exec(move || {
                    if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        let listed = std::fs::read_to_string(cg.path().join("cgroup.procs")).unwrap();
        assert_eq!(listed.trim(), child.id().to_string());
        assert!(
            cg.remove(Duration::from_millis(50)).is_err(),
            "busy while populated"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        cg.remove(Duration::from_secs(2)).unwrap();
        assert!(!cg.path().exists());
        std::fs::remove_dir(h.path.join(&parent)).unwrap();
    }
}
