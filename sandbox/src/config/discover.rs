//! Where the guest artefacts and helper binaries are found when the configuration says
//! `"auto"` (or names a bare program). One set of places for the CLI and the shim, covering
//! both layouts:
//!
//! - a development or CI machine after `scripts/setup.sh`: the caches below
//!   [`CACHE_DIR`] (kernel builds, the agent initramfs, virtiofsd releases) and
//!   `bulkhead-vmm` in `target/release` next to the front end's binary;
//! - an installed runtime: data in [`INSTALL_DATA_DIR`], binaries in [`INSTALL_BIN_DIR`].

use std::path::{Path, PathBuf};

/// The build and tool cache (`scripts/setup.sh`, `kernel-config/build-kernel.sh`,
/// `guest-agent/build-initramfs.sh`, `scripts/install-virtiofsd.sh`).
pub const CACHE_DIR: &str = "/var/cache/bulkhead";
/// Kernel builds: `<KERNEL_CACHE>/<hash>/vmlinux`; "auto" takes the newest.
pub const KERNEL_CACHE: &str = "/var/cache/bulkhead/kernel";
/// The initramfs name that `guest-agent/build-initramfs.sh` keeps as a symlink to its
/// newest `<sha256>.cpio` in the same directory.
pub const CACHED_INITRD: &str = "/var/cache/bulkhead/initramfs/bulkhead-agent.cpio";
/// Where an installed runtime keeps its data (kernel, initramfs, vendor defaults): the
/// release tarball's `install.sh` layout, Kata-like.
pub const INSTALL_DATA_DIR: &str = "/opt/bulkhead/share";
/// Where an installed runtime keeps its binaries (`bulkhead` and the shim are linked from
/// `/usr/local/bin`).
pub const INSTALL_BIN_DIR: &str = "/opt/bulkhead/bin";
/// The installed guest kernel and initramfs.
pub const INSTALLED_KERNEL: &str = "/opt/bulkhead/share/vmlinux";
pub const INSTALLED_INITRD: &str = "/opt/bulkhead/share/initramfs.cpio";
/// The VMM's binary name.
pub const VMM_NAME: &str = "bulkhead-vmm";
/// Where distributions put virtiofsd (outside PATH).
pub const VIRTIOFSD_PLACES: &[&str] = &[
    "/opt/bulkhead/bin/virtiofsd",
    "/usr/local/bin/virtiofsd",
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
];

/// `vm.kernel = "auto"`: the newest build in the kernel cache, then the installed kernel.
pub fn auto_kernel() -> Option<PathBuf> {
    newest_kernel(Path::new(KERNEL_CACHE)).or_else(|| existing(INSTALLED_KERNEL))
}

/// `vm.initrd = "auto"`: the cache's symlink, while it is missing the newest `*.cpio`
/// beside it, then the installed initramfs.
pub fn auto_initrd() -> Option<PathBuf> {
    let cached = Path::new(CACHED_INITRD);
    existing(CACHED_INITRD)
        .or_else(|| cached.parent().and_then(newest_cpio))
        .or_else(|| existing(INSTALLED_INITRD))
}

/// `vm.vmm = "auto"`: `bulkhead-vmm` next to the running executable (cargo puts all
/// binaries in one directory; an install puts them in one too), then PATH, then
/// [`INSTALL_BIN_DIR`].
pub fn auto_vmm() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(VMM_NAME)))
        .filter(|p| p.is_file())
        .or_else(|| which(Path::new(VMM_NAME)))
        .or_else(|| existing(&format!("{INSTALL_BIN_DIR}/{VMM_NAME}")))
}

/// `virtiofsd.binary = "auto"`: PATH, then the newest
/// `<CACHE_DIR>/virtiofsd-<version>/bin/virtiofsd`, then [`VIRTIOFSD_PLACES`].
pub fn auto_virtiofsd() -> Option<PathBuf> {
    which(Path::new("virtiofsd"))
        .or_else(|| newest_in_cache(Path::new(CACHE_DIR), "virtiofsd-", "bin/virtiofsd"))
        .or_else(|| VIRTIOFSD_PLACES.iter().find_map(|p| existing(p)))
}

/// The places [`auto_kernel`] and friends look, for messages.
pub(crate) fn looked_for(what: &str) -> String {
    match what {
        "kernel" => format!("{KERNEL_CACHE}/*/vmlinux, {INSTALLED_KERNEL}"),
        "initrd" => format!("{CACHED_INITRD}, its directory's *.cpio, {INSTALLED_INITRD}"),
        "vmm" => format!("{VMM_NAME} next to this executable, in PATH, in {INSTALL_BIN_DIR}"),
        _ => format!(
            "virtiofsd in PATH, {CACHE_DIR}/virtiofsd-*/bin/virtiofsd, {}",
            VIRTIOFSD_PLACES.join(", ")
        ),
    }
}

fn existing(p: &str) -> Option<PathBuf> {
    let p = Path::new(p);
    p.is_file().then(|| p.to_path_buf())
}

/// The most recently modified `<cache>/<dir>/vmlinux` (dot directories are unfinished
/// builds).
pub fn newest_kernel(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// The most recently modified `*.cpio` file in `dir`.
pub fn newest_cpio(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpio") && p.is_file())
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// `<cache>/<prefix><version>/<rel>` with the highest version (compared number by number).
pub fn newest_in_cache(cache: &Path, prefix: &str, rel: &str) -> Option<PathBuf> {
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let key: Vec<u64> = version.split('.').map(|n| n.parse().unwrap_or(0)).collect();
            let p = e.path().join(rel);
            p.is_file().then_some((key, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// Looks a bare program name up in PATH; a path with a slash is returned when it exists.
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return program.exists().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_cached_version_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            newest_in_cache(dir.path(), "virtiofsd-", "bin/virtiofsd"),
            None
        );
        for v in ["1.9.0", "1.14.0", "1.10.2"] {
            let bin = dir.path().join(format!("virtiofsd-{v}/bin"));
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("virtiofsd"), "").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("virtiofsd-2.0.0")).unwrap(); // no binary
        assert_eq!(
            newest_in_cache(dir.path(), "virtiofsd-", "bin/virtiofsd"),
            Some(dir.path().join("virtiofsd-1.14.0/bin/virtiofsd"))
        );
    }

    #[test]
    fn the_newest_cpio_and_kernel_win() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_cpio(dir.path()), None);
        assert_eq!(newest_kernel(dir.path()), None);
        for name in ["aaa.cpio", "bbb.cpio"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(dir.path().join("zzz.txt"), "x").unwrap();
        assert_eq!(newest_cpio(dir.path()), Some(dir.path().join("bbb.cpio")));
        for name in [".unfinished", "a", "b"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("vmlinux"), "k").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(dir.path().join(".unfinished/vmlinux"), "newer").unwrap();
        assert_eq!(
            newest_kernel(dir.path()),
            Some(dir.path().join("b/vmlinux"))
        );
    }

    #[test]
    fn which_finds_programs_in_path_and_checks_paths() {
        assert!(which(Path::new("sh")).is_some());
        assert_eq!(which(Path::new("/nonexistent/vmm")), None);
        assert_eq!(which(Path::new("/bin/sh")), Some(PathBuf::from("/bin/sh")));
        assert_eq!(which(Path::new("no-such-program-bulkhead")), None);
    }

    #[test]
    fn auto_vmm_is_found_next_to_the_binary_or_elsewhere() {
        let beside = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join(VMM_NAME);
        match auto_vmm() {
            Some(p) if p == beside => assert!(beside.is_file()),
            Some(p) => assert!(!beside.is_file() && p.ends_with(VMM_NAME)),
            None => assert!(!beside.is_file()),
        }
    }
}
