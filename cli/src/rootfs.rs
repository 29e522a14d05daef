//! Host-side mounts of a container: the image's layers as an overlay (lower dirs from the
//! store, upper/work in the container's state dir, so writes never reach the image), bind
//! mounts of `-v` volumes (VM mode: into the shared directory virtiofsd exports), and the
//! shared propagation that lets mounts made after virtiofsd started reach its namespace.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mounts an overlay of `lowers` (topmost first) with `upper`/`work` at `target`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> anyhow::Result<()> {
    if lowers.is_empty() {
        bail!("the image has no layers");
    }
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut lower = String::new();
    for (i, l) in lowers.iter().enumerate() {
        let s = l
            .to_str()
            .filter(|s| !s.contains([',', ':']))
            .with_context(|| {
                format!("layer path {} cannot go into overlay options", l.display())
            })?;
        if i > 0 {
            lower.push(':');
        }
        lower.push_str(s);
    }
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    // The options must fit in one page.
    if opts.len() >= 4000 {
        bail!(
            "the image has too many layers ({}) for one overlay mount",
            lowers.len()
        );
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .with_context(|| format!("mounting the image overlay at {}", target.display()))
}

/// Bind-mounts `source` at `target` (created as a directory or empty file), read-only
/// when asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(source).with_context(|| format!("volume source {}", source.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target)?;
    } else {
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::File::create(target)?;
    }
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {} at {}", source.display(), target.display()))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("making {} read-only", target.display()))?;
    }
    Ok(())
}

/// Detaches the mount at `target`; not being mounted is fine.
pub fn unmount(target: &Path) -> anyhow::Result<()> {
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unmounting {}", target.display())),
    }
}

/// Makes `dir` a mount point with shared propagation, so that mounts made below it later
/// also appear in mount namespaces copied from it earlier as slaves (virtiofsd's sandbox).
/// Idempotent.
pub fn ensure_shared(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut is_mount = false;
    let mut shared = false;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4).map(|m| Path::new(m) == dir).unwrap_or(false) {
            is_mount = true;
            // Optional fields run from index 6 to the "-" separator.
            shared = fields
                .iter()
                .skip(6)
                .take_while(|f| **f != "-")
                .any(|f| f.starts_with("shared:"));
        }
    }
    if !is_mount {
        mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {} onto itself", dir.display()))?;
    }
    if !shared {
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("making {} a shared mount", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn overlay_writes_stay_in_the_upper_dir() {
        if !root() {
            eprintln!("SKIPPED: needs root");
            return;
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
        )
        .unwrap();
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
    fn readonly_bind() {
        if !root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let target = dir.path().join("t");
        bind(&src, &target, true).unwrap();
        assert!(std::fs::write(target.join("x"), "x").is_err());
        unmount(&target).unwrap();
        assert!(bind(&dir.path().join("missing"), &target, false).is_err());
    }
}
