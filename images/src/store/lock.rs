//! flock(2)-based lock files: a shared/exclusive store lock (GC takes it
//! exclusively) and per-digest exclusive locks so that two pulls never write
//! the same blob or unpack the same layer at once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// A held lock; released when dropped (the kernel drops it with the fd).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

fn flock(path: &Path, op: libc::c_int) -> Result<LockGuard> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open lock file", path, e))?;
    loop {
        // SAFETY: flock on a valid fd owned by `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(LockGuard { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(Error::io("lock", path, err));
        }
    }
}

/// Blocks until an exclusive lock on `path` is held.
pub fn exclusive(path: &Path) -> Result<LockGuard> {
    flock(path, libc::LOCK_EX)
}

/// Blocks until a shared lock on `path` is held.
pub fn shared(path: &Path) -> Result<LockGuard> {
    flock(path, libc::LOCK_SH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_shared() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        let g = exclusive(&p).unwrap();
        let f = File::open(&p).unwrap();
        // SAFETY: valid fd.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        assert_eq!(
            rc, -1,
            "shared lock must not be granted while held exclusively"
        );
        drop(g);
        // SAFETY: valid fd.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        assert_eq!(rc, 0);
    }
}
