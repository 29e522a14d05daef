//! The host's cgroup v2 hierarchy, as container isolation uses it: where it is mounted
//! (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a v1/v2 hybrid host), which
//! controllers it offers, the cgroup of a container run on the host
//! (`<hierarchy>/bulkhead/<id>`) and its clean-up when a killed agent left it behind.
//! (MicroVMs use the guest's own cgroups; nothing here applies to them.)

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where cgroups are mounted on a systemd-style host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where the cgroup2 hierarchy is on a v1/v2 hybrid host.
pub const HYBRID_CGROUP2: &str = "/sys/fs/cgroup/unified";
/// The parent of the containers' cgroups, below the hierarchy's root.
pub const CONTAINERS_PARENT: &str = "bulkhead";

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cannot remove the cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the host mounts cgroup v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 only, at `/sys/fs/cgroup`.
    Unified,
    /// cgroup v1 at `/sys/fs/cgroup`, v2 at `/sys/fs/cgroup/unified`.
    Hybrid,
}

/// The host's cgroup2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2 {
    pub path: PathBuf,
    pub layout: Layout,
}

impl Cgroup2 {
    /// The cgroup2 hierarchy of this host, if it has one.
    pub fn find() -> Option<Cgroup2> {
        if is_cgroup2(Path::new(CGROUP_ROOT)) {
            return Some(Cgroup2 {
                path: PathBuf::from(CGROUP_ROOT),
                layout: Layout::Unified,
            });
        }
        is_cgroup2(Path::new(HYBRID_CGROUP2)).then(|| Cgroup2 {
            path: PathBuf::from(HYBRID_CGROUP2),
            layout: Layout::Hybrid,
        })
    }

    /// The controllers the root offers (`cgroup.controllers`); none when unreadable.
    pub fn controllers(&self) -> Vec<String> {
        std::fs::read_to_string(self.path.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub fn has_controller(&self, name: &str) -> bool {
        self.controllers().iter().any(|c| c == name)
    }

    /// Removes the (empty) cgroup a container left behind; a missing one is fine.
    pub fn remove_container_cgroup(&self, id: &str) -> Result<(), CgroupError> {
        let path = self.path.join(CONTAINERS_PARENT).join(id);
        match std::fs::remove_dir(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CgroupError::Remove { path, source }),
        }
    }
}

/// The cgroup of container `id` as its OCI spec names it (`linux.cgroupsPath`, relative to
/// the hierarchy the host agent sees at `/sys/fs/cgroup`).
pub fn container_cgroups_path(id: &str) -> PathBuf {
    Path::new("/").join(CONTAINERS_PARENT).join(id)
}

/// Whether `path` is the root of a cgroup2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
    else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct we own from a NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut st) == 0 && st.f_type == libc::CGROUP2_SUPER_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths() {
        assert_eq!(container_cgroups_path("abc"), Path::new("/bulkhead/abc"));
    }

    #[test]
    fn finds_this_hosts_hierarchy() {
        let Some(cg) = Cgroup2::find() else {
            return bulkhead_test_skip::skip("no cgroup2 hierarchy on this host");
        };
        assert!(is_cgroup2(&cg.path));
        assert!(!is_cgroup2(Path::new("/")));
        assert!(!is_cgroup2(Path::new("/nonexistent")));
        // Removing what is not there is not an error.
        cg.remove_container_cgroup("bulkhead-test-none").unwrap();
    }

    #[test]
    fn a_left_cgroup_is_removed_as_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return bulkhead_test_skip::skip("needs root");
        }
        let Some(cg) = Cgroup2::find() else {
            return bulkhead_test_skip::skip("no cgroup2 hierarchy on this host");
        };
        let id = format!("sandbox-test-{}", std::process::id());
        let path = cg.path.join(CONTAINERS_PARENT).join(&id);
        std::fs::create_dir_all(&path).unwrap();
        cg.remove_container_cgroup(&id).unwrap();
        assert!(!path.exists());
    }
}
