//! The host cgroups of one jailed sandbox: the VMM and virtiofsd run in them, with a memory
//! limit (guest memory plus overhead, no swap), a CPU quota (the vCPUs plus one for the
//! event loop and virtiofsd) and a pid limit.
//!
//! On a cgroup v2 host that is one cgroup, `<cgroup2>/<parent>/<sandbox>`. On a v1/v2
//! hybrid host (the v2 hierarchy without controllers) each limit goes to the v1 hierarchy
//! of its controller (`/sys/fs/cgroup/memory/<parent>/<sandbox>`, ...), and the v2 cgroup
//! still groups the processes. A controller neither offers is left out (and logged), never
//! faked.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::JailError;
use crate::cgroup::{Cgroup2, CGROUP_ROOT};

/// Threads and processes of a sandbox's VMM and virtiofsd (vCPUs, event loop, watchdog,
/// virtiofsd's pool and sandbox) fit well below this.
pub const PIDS_MAX: u32 = 256;

/// `cpu.max`'s (and `cpu.cfs_period_us`'s) period.
const CPU_PERIOD_US: u64 = 100_000;

/// The controllers a sandbox is limited by.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

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

    fn quota_us(&self) -> u64 {
        u64::from(self.cpus) * CPU_PERIOD_US
    }

    /// The `cpu.max` line.
    pub fn cpu_max(&self) -> String {
        format!("{} {CPU_PERIOD_US}", self.quota_us())
    }

    /// The files that set `controller`'s limit in a v2 or a v1 cgroup.
    fn files(&self, controller: &str, v2: bool) -> Vec<(&'static str, String)> {
        match (controller, v2) {
            ("memory", true) => vec![
                ("memory.max", self.memory_bytes.to_string()),
                // Guest memory in swap is guest memory on disk; keep it in RAM.
                ("memory.swap.max", "0".into()),
            ],
            ("memory", false) => vec![
                ("memory.limit_in_bytes", self.memory_bytes.to_string()),
                ("memory.swappiness", "0".into()),
            ],
            ("cpu", true) => vec![("cpu.max", self.cpu_max())],
            ("cpu", false) => vec![
                ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", self.quota_us().to_string()),
            ],
            ("pids", _) => vec![("pids.max", self.pids.to_string())],
            _ => Vec::new(),
        }
    }
}

/// A sandbox's cgroups; removed (after their processes are gone) by
/// [`SandboxCgroup::remove`] or, best effort, on drop.
#[derive(Debug)]
pub struct SandboxCgroup {
    /// The v2 cgroup first, then v1 ones.
    dirs: Vec<PathBuf>,
    removed: bool,
}

impl SandboxCgroup {
    /// Creates the sandbox's cgroups `<parent>/<name>` with `limits`.
    pub fn create(parent: &Path, name: &str, limits: &CgroupLimits) -> Result<Self, JailError> {
        let v2 = Cgroup2::find().ok_or(JailError::NoCgroup2)?;
        let v1 = |c: &str| {
            let dir = Path::new(CGROUP_ROOT).join(c);
            (v2.path != Path::new(CGROUP_ROOT) && is_cgroup1(&dir)).then_some(dir)
        };
        Self::create_in(&v2.path, &v1, parent, name, limits)
    }

    fn create_in(
        v2_root: &Path,
        v1_root: &dyn Fn(&str) -> Option<PathBuf>,
        parent: &Path,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, JailError> {
        let parent = parent.strip_prefix("/").unwrap_or(parent);
        let offered = read_words(&v2_root.join("cgroup.controllers"));
        let in_v2: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| offered.iter().any(|o| o == c))
            .collect();
        let mut cgroup = SandboxCgroup {
            dirs: Vec::new(),
            removed: false,
        };
        // The v2 cgroup, with the controllers it offers enabled on the way down.
        let v2_dir = make_dir(v2_root, parent, name)?;
        cgroup.dirs.push(v2_dir.clone());
        let mut level = v2_root.to_path_buf();
        enable(&level, &in_v2)?;
        for c in parent.components() {
            level.push(c);
            enable(&level, &in_v2)?;
        }
        for controller in CONTROLLERS {
            let dir = if in_v2.contains(&controller) {
                v2_dir.clone()
            } else if let Some(root) = v1_root(controller) {
                let dir = make_dir(&root, parent, name)?;
                if !cgroup.dirs.contains(&dir) {
                    cgroup.dirs.push(dir.clone());
                }
                dir
            } else {
                log::warn!(
                    "this host offers no {controller} controller: sandboxes run without that limit"
                );
                continue;
            };
            for (file, value) in limits.files(controller, dir.starts_with(v2_root)) {
                let path = dir.join(file);
                // memory.swap.max needs swap accounting; without it there is no file.
                if file == "memory.swap.max" && !path.exists() {
                    continue;
                }
                write(&path, &value)?;
            }
        }
        Ok(cgroup)
    }

    /// The v2 cgroup (the one `/proc/<pid>/cgroup`'s `0::` line names).
    pub fn path(&self) -> &Path {
        &self.dirs[0]
    }

    /// Every cgroup of the sandbox (v2, then v1 ones).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` of each, open for writing: a child writes `0` to them to move
    /// itself in.
    pub fn procs_fds(&self) -> Result<Vec<OwnedFd>, JailError> {
        self.dirs
            .iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(err("open", &path))
            })
            .collect()
    }

    /// Removes the cgroups once their processes have gone (they were killed before; exiting
    /// takes a moment), waiting up to `timeout`.
    pub fn remove(&mut self, timeout: Duration) -> Result<(), JailError> {
        if self.removed {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + timeout;
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(err("remove", dir)(e)),
                }
            }
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove(Duration::from_secs(2)) {
            log::warn!("leaving the cgroup: {}", bulkhead_log::error_chain(&e));
        }
    }
}

/// Removes the (empty) cgroups a crashed front end left for sandbox `name` below
/// `parent` (`<name>-<uid>` in the v2 hierarchy and the v1 ones); returns those removed.
/// Cgroups that still hold processes stay. Blocking.
pub fn remove_left_behind(parent: &Path, name: &str) -> Vec<PathBuf> {
    left_behind(parent, name)
        .into_iter()
        .filter(|dir| std::fs::remove_dir(dir).is_ok())
        .collect()
}

/// The cgroups `<parent>/<name>-<uid>` that exist, in every hierarchy.
pub fn left_behind(parent: &Path, name: &str) -> Vec<PathBuf> {
    let parent = parent.strip_prefix("/").unwrap_or(parent);
    let mut roots: Vec<PathBuf> = Cgroup2::find().map(|h| h.path).into_iter().collect();
    roots.extend(
        CONTROLLERS
            .iter()
            .map(|c| Path::new(CGROUP_ROOT).join(c))
            .filter(|d| is_cgroup1(d)),
    );
    let prefix = format!("{name}-");
    let mut found = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root.join(parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Creates `<root>/<parent>/<name>`; an existing one that holds no process (left by a
/// crashed front end) is reused, a populated one is an error.
fn make_dir(root: &Path, parent: &Path, name: &str) -> Result<PathBuf, JailError> {
    let parent = root.join(parent);
    std::fs::create_dir_all(&parent).map_err(err("create", &parent))?;
    let dir = parent.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                Ok(dir)
            } else {
                Err(err("reuse (it holds processes)", &dir)(e))
            }
        }
        Err(e) => Err(err("create", &dir)(e)),
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
    write(&control, &missing.join(" "))
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err("open", path))?
        .write_all(value.as_bytes())
        .map_err(err("write", path))
}

fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Whether `path` is the root of a cgroup v1 hierarchy.
fn is_cgroup1(path: &Path) -> bool {
    const CGROUP_SUPER_MAGIC: libc::c_long = 0x0027_e0eb;
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
    else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct we own from a NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == CGROUP_SUPER_MAGIC
    }
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
        assert_eq!(
            l.files("cpu", false),
            [
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "300000".to_string())
            ]
        );
        assert_eq!(l.files("memory", false)[0].1, (608u64 << 20).to_string());
    }

    /// As root, on this host's hierarchies (v2, or hybrid with v1 controllers): the limits
    /// are where the kernel reads them, a child moves itself in by writing `0`, and
    /// removal waits for the cgroups to empty.
    #[test]
    fn a_real_sandbox_cgroup_as_root() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root for cgroups");
        let h = Cgroup2::find().expect("a cgroup2 hierarchy");
        let parent = PathBuf::from(format!("bulkhead-test-{}", std::process::id()));
        let limits = CgroupLimits::for_vm(1, 64, 32);
        let mut cg = SandboxCgroup::create(&parent, "pod-1", &limits).unwrap();
        assert!(cg.path().starts_with(&h.path));
        let find = |file: &str| cg.dirs().iter().map(|d| d.join(file)).find(|p| p.exists());
        let memory = find("memory.max").or_else(|| find("memory.limit_in_bytes"));
        let memory = memory.expect("a memory limit on this host");
        let value = std::fs::read_to_string(memory).unwrap();
        assert_eq!(value.trim(), (96u64 << 20).to_string());
        match (find("cpu.max"), find("cpu.cfs_quota_us")) {
            (Some(max), _) => {
                assert_eq!(
                    std::fs::read_to_string(max).unwrap().trim(),
                    "200000 100000"
                )
            }
            (None, Some(quota)) => {
                assert_eq!(std::fs::read_to_string(quota).unwrap().trim(), "200000")
            }
            (None, None) => panic!("no CPU limit on this host"),
        }
        let procs: Vec<i32> = cg
            .procs_fds()
            .unwrap()
            .into_iter()
            .map(std::os::fd::IntoRawFd::into_raw_fd)
            .collect();
        let for_child = procs.clone();
        // SAFETY: the closure makes raw write(2) calls only, in the child before exec.
        let mut child = unsafe {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep")
                .arg("30")
                .pre_exec(move || {
                    for fd in &for_child {
                        if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        for fd in procs {
            // SAFETY: fds we own, no longer used.
            unsafe { libc::close(fd) };
        }
        for dir in cg.dirs() {
            let listed = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert_eq!(listed.trim(), child.id().to_string(), "{}", dir.display());
        }
        assert!(
            cg.remove(Duration::from_millis(50)).is_err(),
            "busy while populated"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        cg.remove(Duration::from_secs(2)).unwrap();
        for dir in cg.dirs() {
            assert!(!dir.exists());
        }
        // What a crashed front end leaves (its cgroups, named after the sandbox and its
        // uid) is removed by name; another sandbox's is not.
        let left = SandboxCgroup::create(&parent, "pod-2-1879048200", &limits).unwrap();
        let other = SandboxCgroup::create(&parent, "pod-20-1879048201", &limits).unwrap();
        let (left_dirs, other_dirs) = (left.dirs().to_vec(), other.dirs().to_vec());
        std::mem::forget(left);
        let removed = remove_left_behind(&parent, "pod-2");
        assert_eq!(removed.len(), left_dirs.len(), "{removed:?}");
        assert!(left_dirs.iter().all(|d| !d.exists()));
        assert!(other_dirs.iter().all(|d| d.exists()));
        drop(other);
        for dir in cg.dirs() {
            std::fs::remove_dir(dir.parent().unwrap()).unwrap();
        }
    }
}
