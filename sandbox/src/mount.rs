//! Host-side mounts of container filesystems, for both front ends: mount points (a file
//! mount point is created without truncating an existing file), bind mounts (read-only
//! when asked), the image overlay of the CLI, and detaching. Blocking (mount(2)).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum MountError {
    #[error("cannot create the mount point {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bind source {path}")]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {target}")]
    Mount {
        what: &'static str,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the image has no layers")]
    NoLayers,
    #[error("layer path {0} cannot go into overlay options (',' or ':' or not UTF-8)")]
    LayerPath(PathBuf),
    #[error("the image has too many layers ({0}) for one overlay mount")]
    TooManyLayers(usize),
}

/// What a mount point is: a bind of a file needs a file to mount on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPointKind {
    Dir,
    File,
}

/// Creates `target` (and its parents) as a directory or a file to mount on. An existing
/// file is left as it is, never truncated: it may be what an earlier mount shows.
pub fn create_mount_point(target: &Path, kind: MountPointKind) -> Result<(), MountError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MountError::Create { path, source }
    };
    match kind {
        MountPointKind::Dir => std::fs::create_dir_all(target).map_err(err(target)),
        MountPointKind::File => {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(err(parent))?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(target)
                .map(drop)
                .map_err(err(target))
        }
    }
}

/// Bind-mounts `source` (recursively) at `target`, created as a directory or a file after
/// what `source` is; `nosuid,nodev`, and read-only when asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
    let meta = std::fs::metadata(source).map_err(|e| MountError::Source {
        path: source.to_path_buf(),
        source: e,
    })?;
    let kind = if meta.is_dir() {
        MountPointKind::Dir
    } else {
        MountPointKind::File
    };
    create_mount_point(target, kind)?;
    mount(
        Some(source.as_os_str().as_bytes()),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
        "bind-mount onto",
    )?;
    if let Err(e) = restrict(target, readonly) {
        let _ = detach(target);
        return Err(e);
    }
    Ok(())
}

/// Remounts the bind mount at `target` `nosuid,nodev` (and read-only when asked): content
/// shared with a guest never carries setuid or device semantics on the host. (The flags of
/// a bind mount can only be set by such a remount.)
pub fn restrict(target: &Path, readonly: bool) -> Result<(), MountError> {
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    mount(
        None,
        target,
        None,
        flags,
        None,
        "restrict (nosuid, nodev, ro)",
    )
}

/// How an image overlay is mounted on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayUse {
    /// Exported to a microVM: `nosuid,nodev` (the guest kernel still honours the setuid
    /// bits it reads; the host never does).
    Guest,
    /// The root of a container on the host: `nodev`; setuid binaries inside the container
    /// keep working, as in Docker (its boundary is the container's capabilities, user and
    /// seccomp profile).
    HostContainer,
}

/// Mounts an overlay of `lowers` (topmost first) with `upper`/`work` at `target`, creating
/// the three directories.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    usage: OverlayUse,
) -> Result<(), MountError> {
    let options = overlay_options(lowers, upper, work)?;
    for d in [upper, work, target] {
        create_mount_point(d, MountPointKind::Dir)?;
    }
    let flags = match usage {
        OverlayUse::Guest => libc::MS_NOSUID | libc::MS_NODEV,
        OverlayUse::HostContainer => libc::MS_NODEV,
    };
    mount(
        Some(b"overlay"),
        target,
        Some(b"overlay"),
        flags,
        Some(options.as_bytes()),
        "mount the image overlay at",
    )
}

/// The overlay's mount data; it must fit in one page.
fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, MountError> {
    if lowers.is_empty() {
        return Err(MountError::NoLayers);
    }
    let plain = |p: &Path| {
        p.to_str()
            .filter(|s| !s.contains([',', ':']))
            .map(str::to_owned)
            .ok_or_else(|| MountError::LayerPath(p.to_path_buf()))
    };
    let lower = lowers
        .iter()
        .map(|l| plain(l))
        .collect::<Result<Vec<_>, _>>()?
        .join(":");
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        plain(upper)?,
        plain(work)?
    );
    if options.len() >= 4000 {
        return Err(MountError::TooManyLayers(lowers.len()));
    }
    Ok(options)
}

/// `mount(source, target, NULL, flags, NULL)`: binds, remounts and propagation changes.
pub(crate) fn raw_mount(
    source: Option<&Path>,
    target: &Path,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let source = source.map(c).transpose()?;
    let target = c(target)?;
    // SAFETY: NUL-terminated strings that outlive the call, or NULL.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount at `target`; not being mounted (or not existing) is fine.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    detach(target).map_err(|source| MountError::Unmount {
        path: target.to_path_buf(),
        source,
    })
}

/// `umount2(MNT_DETACH | UMOUNT_NOFOLLOW)`; `EINVAL` (not a mount point, or a parent's
/// detach took it along) and `ENOENT` are success.
pub(crate) fn detach(target: &Path) -> io::Result<()> {
    let c_path = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: umount2 reads a NUL-terminated path we own; no memory is shared.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}

fn mount(
    source: Option<&[u8]>,
    target: &Path,
    fstype: Option<&[u8]>,
    flags: libc::c_ulong,
    data: Option<&[u8]>,
    what: &'static str,
) -> Result<(), MountError> {
    let err = |source| MountError::Mount {
        what,
        target: target.to_path_buf(),
        source,
    };
    let c =
        |b: &[u8]| CString::new(b).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)));
    let source = source.map(c).transpose()?;
    let target_c = c(target.as_os_str().as_bytes())?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
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

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn file_mount_points_are_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/hosts");
        create_mount_point(&file, MountPointKind::File).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"");
        std::fs::write(&file, "keep").unwrap();
        create_mount_point(&file, MountPointKind::File).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
        let sub = dir.path().join("c/d");
        create_mount_point(&sub, MountPointKind::Dir).unwrap();
        assert!(sub.is_dir());
        assert!(matches!(
            create_mount_point(&file.join("x"), MountPointKind::Dir),
            Err(MountError::Create { .. })
        ));
    }

    /// `statvfs`'s mount flags of `path`.
    fn mount_flags(path: &Path) -> libc::c_ulong {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs fills a zeroed struct we own.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
            st.f_flag
        }
    }

    #[test]
    fn overlay_options_are_checked() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            overlay_options(&[p("/l1"), p("/l2")], Path::new("/u"), Path::new("/w")).unwrap(),
            "lowerdir=/l1:/l2,upperdir=/u,workdir=/w"
        );
        assert!(matches!(
            overlay_options(&[], Path::new("/u"), Path::new("/w")),
            Err(MountError::NoLayers)
        ));
        assert!(matches!(
            overlay_options(&[p("/a:b")], Path::new("/u"), Path::new("/w")),
            Err(MountError::LayerPath(_))
        ));
        let many: Vec<PathBuf> = (0..200).map(|i| p(&format!("/layers/{i:040}"))).collect();
        assert!(matches!(
            overlay_options(&many, Path::new("/u"), Path::new("/w")),
            Err(MountError::TooManyLayers(200))
        ));
    }

    #[test]
    fn overlay_writes_stay_in_the_upper_dir() {
        if !is_root() {
            return bulkhead_test_skip::skip("needs root");
        }
        let dir = tempfile::tempdir().unwrap();
        let (l1, l2) = (dir.path().join("l1"), dir.path().join("l2"));
        std::fs::create_dir_all(&l1).unwrap();
        std::fs::create_dir_all(&l2).unwrap();
        std::fs::write(l1.join("top"), "1").unwrap();
        std::fs::write(l2.join("top"), "2").unwrap();
        std::fs::write(l2.join("base"), "b").unwrap();
        let target = dir.path().join("merged");
        mount_overlay(
            &[l1.clone(), l2.clone()],
            &dir.path().join("u"),
            &dir.path().join("w"),
            &target,
            OverlayUse::Guest,
        )
        .unwrap();
        assert_eq!(
            mount_flags(&target) & (libc::ST_NOSUID | libc::ST_NODEV),
            libc::ST_NOSUID | libc::ST_NODEV
        );
        assert_eq!(std::fs::read_to_string(target.join("top")).unwrap(), "1");
        std::fs::write(target.join("base"), "changed").unwrap();
        std::fs::write(target.join("new"), "n").unwrap();
        unmount(&target).unwrap();
        assert_eq!(std::fs::read_to_string(l2.join("base")).unwrap(), "b");
        assert!(!l1.join("new").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("u/base")).unwrap(),
            "changed"
        );
        unmount(&target).unwrap();
    }

    #[test]
    fn readonly_binds_of_dirs_and_files() {
        if !is_root() {
            return bulkhead_test_skip::skip("needs root");
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let target = dir.path().join("t");
        bind(&src, &target, true).unwrap();
        assert!(std::fs::write(target.join("x"), "x").is_err());
        let want = libc::ST_NOSUID | libc::ST_NODEV | libc::ST_RDONLY;
        assert_eq!(mount_flags(&target) & want, want);
        unmount(&target).unwrap();
        assert!(matches!(
            bind(&dir.path().join("missing"), &target, false),
            Err(MountError::Source { .. })
        ));
        // A file onto an existing file: the target's content is not truncated first (it
        // shows again once the bind is gone).
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let at = dir.path().join("mnt/hosts");
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, "under").unwrap();
        bind(&file, &at, false).unwrap();
        let want = libc::ST_NOSUID | libc::ST_NODEV;
        assert_eq!(mount_flags(&at) & (want | libc::ST_RDONLY), want);
        assert_eq!(
            std::fs::read_to_string(&at).unwrap(),
            "127.0.0.1 localhost\n"
        );
        unmount(&at).unwrap();
        assert_eq!(std::fs::read_to_string(&at).unwrap(), "under");
    }
}
