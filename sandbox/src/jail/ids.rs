//! Per-sandbox uids: one uid (and the gid of the same number) for each jailed VMM, never
//! held by two live sandboxes at once.
//!
//! An id is taken by holding an exclusive `flock` on `<dir>/<uid>` for the sandbox's life
//! (the lock goes with the holder's descriptor, so a crashed front end frees it) and only
//! when no process on the host runs as that uid (a VMM that outlived its front end keeps
//! its id). The search starts at a random offset, so concurrent front ends rarely contend.
//! A killed front end leaves its (unlocked) file behind: [`remove_stale`] deletes those,
//! from every allocation and from the clean-up of a dead front end's sandbox.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::JailError;

/// systemd leaves 0x70000000..0x7fffffff unused (its range for containers ends below it).
pub const DEFAULT_ID_BASE: u32 = 0x7000_0000;
pub const DEFAULT_ID_COUNT: u32 = 65_536;

/// An allocated uid/gid; released when dropped.
#[derive(Debug)]
pub struct JailId {
    id: u32,
    path: PathBuf,
    _lock: File,
}

impl JailId {
    /// Takes a free id in `base..base + count` for `holder` (written into the lock file for
    /// diagnostics).
    pub fn allocate(dir: &Path, base: u32, count: u32, holder: &str) -> Result<Self, JailError> {
        if base == 0 || count == 0 || base.checked_add(count).is_none() {
            return Err(JailError::IdRange { base, count });
        }
        let dir_err = |source| JailError::IdsDir {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        let in_use = uids_in_use();
        remove_stale_except(dir, &in_use);
        let start = random_u32() % count;
        for i in 0..count {
            let id = base + (start + i) % count;
            if in_use.contains(&id) {
                continue;
            }
            if let Some(taken) = try_take(dir, id, holder).map_err(dir_err)? {
                return Ok(taken);
            }
        }
        Err(JailError::IdsExhausted { base, count })
    }

    pub fn uid(&self) -> u32 {
        self.id
    }
    pub fn gid(&self) -> u32 {
        self.id
    }
}

impl Drop for JailId {
    fn drop(&mut self) {
        // Unlink while still locked: a waiter that opened the old file finds it unlinked.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Deletes the files in `dir` of ids no front end holds and no process runs as (left by a
/// killed front end); returns those ids.
pub fn remove_stale(dir: &Path) -> Vec<u32> {
    remove_stale_except(dir, &uids_in_use())
}

fn remove_stale_except(dir: &Path, in_use: &std::collections::HashSet<u32>) -> Vec<u32> {
    let ids: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|id| !in_use.contains(id))
        .collect();
    // Taking the lock proves nobody holds it; dropping the id unlinks the file.
    ids.into_iter()
        .filter(|id| matches!(try_take(dir, *id, "stale"), Ok(Some(_))))
        .collect()
}

fn try_take(dir: &Path, id: u32, holder: &str) -> io::Result<Option<JailId>> {
    let path = dir.join(id.to_string());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(e),
        };
    }
    // The previous holder may have unlinked the file between our open and our lock.
    let same = match (std::fs::symlink_metadata(&path), file.metadata()) {
        (Ok(on_disk), Ok(ours)) => {
            use std::os::unix::fs::MetadataExt;
            on_disk.ino() == ours.ino() && on_disk.dev() == ours.dev()
        }
        _ => false,
    };
    if !same {
        return Ok(None);
    }
    file.set_len(0)?;
    writeln!(file, "{holder}")?;
    Ok(Some(JailId {
        id,
        path,
        _lock: file,
    }))
}

/// The real, effective and saved uids of every process on the host.
fn uids_in_use() -> std::collections::HashSet<u32> {
    let mut uids = std::collections::HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return uids;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(
                line[4..]
                    .split_whitespace()
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    }
    uids
}

fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom fills the buffer we own; on failure the offset is just 0.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    u32::from_ne_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_shared_and_come_back_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let base = 0x7100_0000;
        let a = JailId::allocate(dir.path(), base, 2, "pod-a").unwrap();
        let b = JailId::allocate(dir.path(), base, 2, "pod-b").unwrap();
        assert_ne!(a.uid(), b.uid());
        assert_eq!(a.uid(), a.gid());
        assert!((base..base + 2).contains(&a.uid()));
        assert!(matches!(
            JailId::allocate(dir.path(), base, 2, "pod-c"),
            Err(JailError::IdsExhausted { count: 2, .. })
        ));
        let freed = a.uid();
        let holder = std::fs::read_to_string(dir.path().join(freed.to_string())).unwrap();
        assert_eq!(holder, "pod-a\n");
        drop(a);
        let c = JailId::allocate(dir.path(), base, 2, "pod-c").unwrap();
        assert_eq!(c.uid(), freed);
    }

    #[test]
    fn a_uid_a_process_runs_as_is_skipped() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return bulkhead_test_skip::skip("needs root to run a process as another uid");
        }
        let dir = tempfile::tempdir().unwrap();
        let uid = 0x7300_0000 + (std::process::id() % 1000);
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap();
        let result = JailId::allocate(dir.path(), uid, 1, "x");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(
            matches!(result, Err(JailError::IdsExhausted { .. })),
            "{result:?}"
        );
        assert!(matches!(
            JailId::allocate(dir.path(), 0, 1, "x"),
            Err(JailError::IdRange { .. })
        ));
    }

    #[test]
    fn files_a_killed_holder_left_are_removed_and_held_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let base = 0x7400_0000;
        let held = JailId::allocate(dir.path(), base, 4, "live").unwrap();
        // What a SIGKILLed front end leaves: the file, without its lock.
        let stale = if held.uid() == base { base + 1 } else { base };
        std::fs::write(dir.path().join(stale.to_string()), "dead\n").unwrap();
        std::fs::write(dir.path().join("not-an-id"), "").unwrap();
        assert_eq!(remove_stale(dir.path()), [stale]);
        assert!(!dir.path().join(stale.to_string()).exists());
        assert!(dir.path().join(held.uid().to_string()).exists());
        assert!(dir.path().join("not-an-id").exists());
        drop(held);
        assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1);
    }

    #[test]
    fn a_lock_held_elsewhere_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let base = 0x7200_0000;
        let held = JailId::allocate(dir.path(), base, 1, "first").unwrap();
        // Another open file description (as another process would have) cannot take it.
        assert!(try_take(dir.path(), base, "second").unwrap().is_none());
        drop(held);
        assert!(try_take(dir.path(), base, "second").unwrap().is_some());
    }
}
