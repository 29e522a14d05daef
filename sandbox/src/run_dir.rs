//! The per-sandbox run directory `<root>/<id>/` and its fixed layout, and its removal.
//!
//! ```text
//! <root>/<id>/            0700
//!   shared/               exported to the guest by virtiofsd (container rootfs go here)
//!   vsock.sock            the VMM's hybrid vsock socket
//!   fs.sock               virtiofsd's vhost-user socket
//!   console.log           the guest serial console
//!   vmm.log               the VMM's own log (stderr)
//!   virtiofsd.log         virtiofsd's log (stderr)
//! ```
//!
//! Removal first detaches every mount under the directory (the shim or CLI mounts container
//! root filesystems below `shared/`), then deletes the tree without ever crossing into
//! another filesystem: a mount that is still there makes removal fail instead of deleting
//! the files of an image or of the host.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use bulkhead_protocol::types::{validate_container_id, InvalidField};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RunDirError {
    #[error("invalid sandbox id")]
    InvalidId(#[source] InvalidField),
    #[error("run directory {0} already exists (another sandbox with this id, or a stale one)")]
    Exists(PathBuf),
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the mount table")]
    MountTable(#[source] io::Error),
    #[error("cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is on another filesystem (a mount is left): not removing it")]
    MountLeft(PathBuf),
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A sandbox's run directory; removed (best effort) on drop unless [`RunDir::remove`] ran.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    removed: bool,
}

impl RunDir {
    /// Creates `<root>/<id>/` and its `shared/` directory. The id follows the container-id
    /// rules (it becomes a path component). Fails if the directory exists.
    pub fn create(root: &Path, id: &str) -> Result<Self, RunDirError> {
        validate_container_id(id).map_err(RunDirError::InvalidId)?;
        let create_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunDirError::Create { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(create_err(root))?;
        let path = root.join(id);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RunDirError::Exists(path))
            }
            Err(e) => return Err(create_err(&path)(e)),
        }
        let dir = RunDir {
            path,
            removed: false,
        };
        let shared = dir.shared_dir();
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&shared)
            .map_err(create_err(&shared))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Exported to the guest by virtiofsd, mounted there at
    /// [`bulkhead_protocol::SHARED_FS_MOUNT_POINT`].
    pub fn shared_dir(&self) -> PathBuf {
        self.path.join("shared")
    }
    pub fn vsock_socket(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }
    pub fn fs_socket(&self) -> PathBuf {
        self.path.join("fs.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }
    pub fn virtiofsd_log(&self) -> PathBuf {
        self.path.join("virtiofsd.log")
    }

    /// Unmounts everything below the directory and removes it.
    pub fn remove(&mut self) -> Result<(), RunDirError> {
        if self.removed {
            return Ok(());
        }
        remove_tree(&self.path)?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            log::warn!("leaving {}: {e}", self.path.display());
        }
    }
}

/// Detaches the mounts below `path` (deepest first), then deletes the tree, refusing to
/// cross into another filesystem. A missing `path` is not an error.
pub fn remove_tree(path: &Path) -> Result<(), RunDirError> {
    let root_meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RunDirError::Remove {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mountinfo = fs::read("/proc/self/mountinfo").map_err(RunDirError::MountTable)?;
    let mut below: Vec<PathBuf> = mount_points(&mountinfo)
        .into_iter()
        .filter(|m| m.starts_with(path) && m != path)
        .collect();
    // Deepest first; a path listed twice (stacked mounts) is unmounted until it is gone.
    below.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for mount in &below {
        unmount(mount)?;
    }
    remove_same_fs(path, root_meta.dev())
}

fn unmount(path: &Path) -> Result<(), RunDirError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| RunDirError::Unmount {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: umount2 reads a NUL-terminated path we own; no memory is shared.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    // EINVAL: no longer a mount point (a parent's detach took it along).
    if source.raw_os_error() == Some(libc::EINVAL) || source.kind() == io::ErrorKind::NotFound {
        return Ok(());
    }
    Err(RunDirError::Unmount {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_same_fs(path: &Path, dev: u64) -> Result<(), RunDirError> {
    let remove_err = |source| RunDirError::Remove {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(remove_err)?;
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(remove_err);
    }
    if meta.dev() != dev {
        return Err(RunDirError::MountLeft(path.to_path_buf()));
    }
    for entry in fs::read_dir(path).map_err(remove_err)? {
        let entry = entry.map_err(remove_err)?;
        remove_same_fs(&entry.path(), dev)?;
    }
    fs::remove_dir(path).map_err(remove_err)
}

/// Mount points listed in a `/proc/<pid>/mountinfo` text (field 5, octal escapes decoded).
pub fn mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .filter(|field| !field.is_empty())
        .map(|field| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(field))))
        .collect()
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && is_octal(&field[i + 1..i + 4]) {
            let v = (field[i + 1] - b'0') as u32 * 64
                + (field[i + 2] - b'0') as u32 * 8
                + (field[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn is_octal(digits: &[u8]) -> bool {
    digits.iter().all(|d| (b'0'..=b'7').contains(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_mountinfo() {
        let text = b"22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n\
            36 35 98:0 /mnt1 /run/bulkhead/p\\040q/shared/c1 rw - ext3 /dev/root rw\n\
            37 35 98:0 / /a\\134b\\011c rw - ext3 /dev/root rw\n\
            garbage\n";
        assert_eq!(
            mount_points(text),
            [
                PathBuf::from("/sys"),
                PathBuf::from("/run/bulkhead/p q/shared/c1"),
                PathBuf::from("/a\\b\tc"),
            ]
        );
        assert_eq!(unescape(b"x\\04"), b"x\\04");
        assert_eq!(unescape(b"\\999"), b"\\999");
    }

    #[test]
    fn layout_and_removal() {
        let root = tempfile::tempdir().unwrap();
        let mut dir = RunDir::create(root.path(), "pod-1").unwrap();
        assert_eq!(dir.path(), root.path().join("pod-1"));
        assert!(dir.shared_dir().is_dir());
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Content the sandbox leaves behind: files, a socket, nested dirs, a symlink out.
        fs::create_dir_all(dir.shared_dir().join("c1/rootfs/etc")).unwrap();
        fs::write(dir.shared_dir().join("c1/rootfs/etc/hostname"), "x").unwrap();
        let _l = std::os::unix::net::UnixListener::bind(dir.vsock_socket()).unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.shared_dir().join("link")).unwrap();
        fs::write(dir.console_log(), "boot").unwrap();

        assert!(matches!(
            RunDir::create(root.path(), "pod-1"),
            Err(RunDirError::Exists(_))
        ));
        dir.remove().unwrap();
        assert!(!root.path().join("pod-1").exists());
        assert!(outside.join("keep").exists(), "followed a symlink out");
        dir.remove().unwrap();
    }

    #[test]
    fn drop_removes_and_bad_ids_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::create(root.path(), "pod-2").unwrap();
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(matches!(
                RunDir::create(root.path(), bad),
                Err(RunDirError::InvalidId(_))
            ));
        }
    }

    /// Needs root (mount): a tmpfs mounted below `shared/` is detached, and its files are
    /// not deleted through the mount.
    #[test]
    fn mounts_below_are_detached_not_emptied() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to mount a tmpfs");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let mut dir = RunDir::create(root.path(), "pod-3").unwrap();
        let source = root.path().join("image-rootfs");
        fs::create_dir(&source).unwrap();
        fs::write(source.join("bin-sh"), "elf").unwrap();
        let target = dir.shared_dir().join("c1");
        fs::create_dir(&target).unwrap();
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain bind mount of paths we own.
        let rc = unsafe {
            libc::mount(
                c(&source).as_ptr(),
                c(&target).as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        assert!(target.join("bin-sh").exists());
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        assert!(
            source.join("bin-sh").exists(),
            "deleted through the bind mount"
        );
    }
}
