//! Mount propagation of the run root. virtiofsd (`--sandbox namespace`) copies the host's
//! mount table into a namespace of its own when it starts, as slaves. Mounts made later
//! below a sandbox's shared directory (a container's rootfs, a volume) reach that copy
//! only if their parent mount is shared. Hosts under systemd have `/` shared; elsewhere (a
//! plain init, the test harness) it is private and the guest would see empty directories.
//! [`ensure_shared`] makes the run root a shared mount point, once per host, for the CLI
//! and the shim alike.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::mountinfo::{self, MountEntry};

#[derive(Debug, Error)]
pub enum PropagationError {
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the mount table")]
    MountInfo(#[source] io::Error),
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {path}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How `dir` appears in a mount table: `None` when it is not a mount point, otherwise
/// whether its topmost mount has shared propagation.
pub fn shared_state(entries: &[MountEntry], dir: &Path) -> Option<bool> {
    mountinfo::topmost(entries, dir).map(|m| m.propagation.shared.is_some())
}

/// Makes `dir` (created if missing) a mount point with shared propagation: a recursive
/// bind onto itself when it is not a mount point, then `MS_SHARED`. Idempotent; serialised
/// between processes (shims, CLI supervisors) with a lock on the directory. Blocking.
pub fn ensure_shared(dir: &Path) -> Result<(), PropagationError> {
    std::fs::create_dir_all(dir).map_err(|source| PropagationError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let dir = std::fs::canonicalize(dir).map_err(|source| PropagationError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let lock = std::fs::File::open(&dir).map_err(|source| PropagationError::Lock {
        path: dir.clone(),
        source,
    })?;
    // SAFETY: flock on a descriptor we own; it is released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(PropagationError::Lock {
            path: dir,
            source: io::Error::last_os_error(),
        });
    }
    let table = mountinfo::read_self().map_err(PropagationError::MountInfo)?;
    match shared_state(&table, &dir) {
        Some(true) => return Ok(()),
        Some(false) => {}
        None => mount(
            &dir,
            &dir,
            libc::MS_BIND | libc::MS_REC,
            "bind-mount onto itself",
        )?,
    }
    mount(Path::new("none"), &dir, libc::MS_SHARED, "make shared")
}

fn mount(
    source: &Path,
    target: &Path,
    flags: libc::c_ulong,
    what: &'static str,
) -> Result<(), PropagationError> {
    let err = |source| PropagationError::Mount {
        what,
        path: target.to_path_buf(),
        source,
    };
    let src = CString::new(source.as_os_str().as_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let dst = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; no fstype or data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::tests::TABLE;

    #[test]
    fn reads_whether_a_mount_point_is_shared() {
        let t = mountinfo::parse(TABLE);
        assert_eq!(shared_state(&t, Path::new("/")), Some(true));
        assert_eq!(shared_state(&t, Path::new("/run")), Some(false));
        // A slave is not shared; shared and a slave is.
        assert_eq!(shared_state(&t, Path::new("/run/bulkhead")), Some(false));
        assert_eq!(shared_state(&t, Path::new("/run/a b")), Some(true));
        assert_eq!(shared_state(&t, Path::new("/run/nothing")), None);
        // The topmost of stacked mounts decides.
        assert_eq!(shared_state(&t, Path::new("/run/stack")), Some(false));
        let garbage = mountinfo::parse(b"\n\nxx\n1 2 3\n");
        assert_eq!(shared_state(&garbage, Path::new("/")), None);
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// As root: a mount made below the run root after a slave copy of the mount table was
    /// taken (what virtiofsd does) shows up in that copy.
    #[test]
    fn later_mounts_reach_a_slave_namespace_as_root() {
        if !is_root() || !Path::new("/usr/bin/unshare").exists() {
            return bulkhead_test_skip::skip("needs root and unshare(1)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        ensure_shared(&root).unwrap();
        ensure_shared(&root).unwrap();
        let table = mountinfo::read_self().unwrap();
        let canonical = std::fs::canonicalize(&root).unwrap();
        assert_eq!(shared_state(&table, &canonical), Some(true));
        let stacked = table.iter().filter(|m| m.mount_point == canonical).count();
        assert_eq!(stacked, 1, "idempotent: one mount");

        let sub = root.join("sb/shared/c1");
        std::fs::create_dir_all(&sub).unwrap();
        let probe = sub.join("probe");
        // A slave namespace that waits until the probe appears (at most 10 s).
        let mut child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg(format!(
                "echo ready; i=0; while [ ! -e {0} ] && [ $i -lt 100 ]; do sleep 0.1; \
                 i=$((i+1)); done; cat {0}",
                probe.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut ready).unwrap();
        let source = tmp.path().join("src");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("probe"), "propagated").unwrap();
        mount(&source, &sub, libc::MS_BIND, "bind").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out, &mut text).unwrap();
        child.wait().unwrap();
        assert_eq!(text, "propagated");
        // Clean up: the bind, then the run root.
        for p in [&sub, &canonical] {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: NUL-terminated path; detaching our own mounts.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
