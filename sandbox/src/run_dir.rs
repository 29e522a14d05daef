//! The per-sandbox run directory `<root>/<id>/` and its fixed layout, and its removal.
//!
//! ```text
//! <root>/<id>/            0700
//!   share/                the host's side: front ends create directories, files and mounts
//!                         (container root filesystems, volumes) here; the guest never sees
//!                         this path, so nothing in it can be swapped under the host
//!   shared/               a read-only view of share/ (a bind mount, receiving share/'s
//!                         later mounts by propagation), exported to the guest by virtiofsd:
//!                         the guest can write inside a container's rootfs mount but cannot
//!                         create, rename or replace anything the host walks through
//!   root/                 the mount point of the VMM's jail root (empty on the host)
//!   vsock.sock            the hybrid vsock socket (bound here, handed to the VMM as a fd)
//!   fs.sock               virtiofsd's vhost-user socket
//!   console.log           the guest serial console
//!   vmm.log               the VMM's own log (stderr)
//!   vmm.pid               the VMM's host pid and start time (how a crashed front end's
//!                         jailed VMM, whose command line names no host path, is found)
//!   virtiofsd.log         virtiofsd's log (stderr)
//! ```
//!
//! This is Kata's rw/ro split: host-side operations only ever resolve paths in `share/`,
//! which is private to the host, and the guest's writes land only inside the mounts that
//! propagate from it.
//!
//! Removal first detaches every mount under the directory (the shim or CLI mounts container
//! root filesystems below `shared/`), then deletes the tree without ever crossing into
//! another filesystem: a mount that is still there makes removal fail instead of deleting
//! the files of an image or of the host.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use bulkhead_protocol::types::{validate_container_id, InvalidField};
use thiserror::Error;

use crate::mountinfo;
use crate::naming::{self, UNIX_SOCKET_PATH_MAX};

/// The longest name of a socket in a run directory: the VMM's socket for guest-initiated
/// vsock connections to the highest port (`<vsock.sock>_<port>`).
pub const LONGEST_SOCKET_NAME: &str = "vsock.sock_4294967295";

#[derive(Debug, Error)]
pub enum RunDirError {
    #[error("invalid sandbox id")]
    InvalidId(#[source] InvalidField),
    #[error(
        "run directory {path} is too long for its unix sockets ({len} bytes for {}, at most \
         {max}): use a shorter run root or name the sandbox with naming::sandbox_name",
        LONGEST_SOCKET_NAME
    )]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("run directory {0} already exists (another sandbox with this id, or a stale one)")]
    Exists(PathBuf),
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {path}")]
    View {
        what: &'static str,
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
    /// rules (it becomes a path component) and the unix sockets inside must fit in
    /// `sun_path` (name sandboxes with [`naming::sandbox_name`]). Fails if the directory
    /// exists.
    pub fn create(root: &Path, id: &str) -> Result<Self, RunDirError> {
        validate_container_id(id).map_err(RunDirError::InvalidId)?;
        check_socket_paths(&root.join(id))?;
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
        for sub in [dir.share_dir(), dir.shared_dir(), dir.jail_root()] {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&sub)
                .map_err(create_err(&sub))?;
        }
        dir.export_read_only()?;
        Ok(dir)
    }

    /// Makes `shared/` the read-only view of `share/`: `share/` becomes a shared mount of
    /// its own (so what is mounted below it later propagates, whatever the run root's
    /// propagation), `shared/` a bind of it, then read-only, nosuid, nodev, and a slave
    /// (it receives `share/`'s mounts, and virtiofsd's copy of it does too).
    fn export_read_only(&self) -> Result<(), RunDirError> {
        let share = self.share_dir();
        let shared = self.shared_dir();
        let step = |what: &'static str, path: &Path, r: io::Result<()>| {
            r.map_err(|source| RunDirError::View {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        use crate::mount::raw_mount as m;
        step("bind", &share, m(Some(&share), &share, libc::MS_BIND))?;
        step("share", &share, m(None, &share, libc::MS_SHARED))?;
        step("bind", &shared, m(Some(&share), &shared, libc::MS_BIND))?;
        step(
            "make read-only",
            &shared,
            m(
                None,
                &shared,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
            ),
        )?;
        step("make a slave", &shared, m(None, &shared, libc::MS_SLAVE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Where the host puts what it shares with the guest (private to the host).
    pub fn share_dir(&self) -> PathBuf {
        self.path.join("share")
    }
    /// The read-only view of [`RunDir::share_dir`] virtiofsd exports to the guest, mounted
    /// there at [`bulkhead_protocol::SHARED_FS_MOUNT_POINT`].
    pub fn shared_dir(&self) -> PathBuf {
        self.path.join("shared")
    }
    /// The (empty) mount point of the VMM's jail root.
    pub fn jail_root(&self) -> PathBuf {
        self.path.join("root")
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

/// Fails when a socket of the run directory `path` would not fit in `sun_path`.
pub fn check_socket_paths(path: &Path) -> Result<(), RunDirError> {
    let len = path.join(LONGEST_SOCKET_NAME).as_os_str().len();
    if naming::fits_socket_path(len) {
        return Ok(());
    }
    Err(RunDirError::SocketPathTooLong {
        path: path.to_path_buf(),
        len,
        max: UNIX_SOCKET_PATH_MAX,
    })
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
    let table = mountinfo::read_self().map_err(RunDirError::MountTable)?;
    let mut below = mountinfo::mount_points_below(&table, path);
    // Deepest first; a path listed twice (stacked mounts) is unmounted until it is gone.
    below.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for mount in &below {
        unmount(mount)?;
    }
    remove_same_fs(path, root_meta.dev())
}

fn unmount(path: &Path) -> Result<(), RunDirError> {
    crate::mount::detach(path).map_err(|source| RunDirError::Unmount {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_paths_must_fit() {
        let root = tempfile::tempdir().unwrap();
        let long = "x".repeat(120);
        let err = RunDir::create(root.path(), &long).unwrap_err();
        assert!(
            matches!(err, RunDirError::SocketPathTooLong { max: 107, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("sandbox_name"), "{err}");
        assert!(!root.path().join(&long).exists());
        // The same id through the naming rule fits.
        let mut dir = RunDir::create(root.path(), &naming::sandbox_name(&long)).unwrap();
        dir.remove().unwrap();
        // A deep root does not fit even with a short name.
        let deep = root.path().join("d".repeat(90));
        assert!(matches!(
            RunDir::create(&deep, "pod-1"),
            Err(RunDirError::SocketPathTooLong { .. })
        ));
    }

    #[test]
    fn layout_and_removal() {
        let root = tempfile::tempdir().unwrap();
        let mut dir = RunDir::create(root.path(), "pod-1").unwrap();
        assert_eq!(dir.path(), root.path().join("pod-1"));
        assert!(dir.shared_dir().is_dir());
        assert!(dir.share_dir().is_dir());
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Content the sandbox leaves behind: files, a socket, nested dirs, a symlink out.
        fs::create_dir_all(dir.share_dir().join("c1/rootfs/etc")).unwrap();
        fs::write(dir.share_dir().join("c1/rootfs/etc/hostname"), "x").unwrap();
        let _l = std::os::unix::net::UnixListener::bind(dir.vsock_socket()).unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.share_dir().join("link")).unwrap();
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

    /// Issue 12, finding 1: the guest's side of the shared directory is read-only, so it
    /// cannot plant a symlink (or anything) where the host later creates, mounts or deletes;
    /// what the host mounts in `share/` shows in the guest's view, writable as mounted.
    #[test]
    fn the_guest_view_is_read_only_and_follows_host_mounts() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "keep").unwrap();
        let mut dir = RunDir::create(root.path(), "pod-4").unwrap();
        let view = dir.shared_dir();
        let erofs = |r: io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EROFS);
        // Every place the host walks through: the view root, a container's directory, its
        // mount points.
        assert!(erofs(std::os::unix::fs::symlink(&outside, view.join("c1"))));
        assert!(erofs(fs::create_dir(view.join("c1"))));
        fs::create_dir_all(dir.share_dir().join("c1/mounts/0")).unwrap();
        fs::create_dir_all(dir.share_dir().join("c1/rootfs")).unwrap();
        assert!(erofs(fs::remove_dir(view.join("c1/mounts/0"))));
        assert!(erofs(fs::rename(view.join("c1/rootfs"), view.join("c1/x"))));
        assert!(erofs(std::os::unix::fs::symlink(
            &outside,
            view.join("c1/rootfs-new")
        )));
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let rootfs = dir.share_dir().join("c1/rootfs");
        // SAFETY: a tmpfs on a directory we own.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c(&rootfs).as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // The container's rootfs is writable through the view; its directory still is not.
        fs::write(view.join("c1/rootfs/from-guest"), "g").unwrap();
        assert_eq!(fs::read_to_string(rootfs.join("from-guest")).unwrap(), "g");
        assert!(erofs(fs::write(view.join("c1/planted"), "x")));
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "keep");
        let left = mountinfo::read_self().unwrap();
        assert!(mountinfo::mount_points_below(&left, root.path()).is_empty());
    }

    /// Needs root (mount): a tmpfs mounted below `shared/` is detached, and its files are
    /// not deleted through the mount.
    #[test]
    fn mounts_below_are_detached_not_emptied() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return bulkhead_test_skip::skip("needs root to mount a tmpfs");
        }
        let root = tempfile::tempdir().unwrap();
        let mut dir = RunDir::create(root.path(), "pod-3").unwrap();
        let source = root.path().join("image-rootfs");
        fs::create_dir(&source).unwrap();
        fs::write(source.join("bin-sh"), "elf").unwrap();
        let target = dir.share_dir().join("c1");
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
