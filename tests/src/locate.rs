//! Finding the artefacts a boot test needs: the workspace root, the guest
//! kernel directory (built by kernel-config/build-kernel.sh) and the VMM
//! binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from locating test artefacts.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// kernel-config/build-kernel.sh could not be run.
    #[error("cannot run {script}")]
    Script {
        /// Script path.
        script: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The script failed or printed nothing.
    #[error("{script} --print-dir failed: {stderr}")]
    ScriptFailed {
        /// Script path.
        script: PathBuf,
        /// Its standard error.
        stderr: String,
    },
    /// The kernel directory has no vmlinux.
    #[error("no vmlinux in {0} (build it with kernel-config/build-kernel.sh or set BULKHEAD_KERNEL_DIR)")]
    KernelNotBuilt(PathBuf),
    /// No VMM binary was found.
    #[error("bulkhead-vmm not found (set BULKHEAD_VMM or build it; looked in {0})")]
    VmmNotFound(String),
}

/// Root of the cargo workspace (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The guest kernel artefacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDir {
    /// Directory holding the files.
    pub dir: PathBuf,
}

impl KernelDir {
    /// ELF `vmlinux` (PVH entry).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// `bzImage`.
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }

    /// The final kernel `.config`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }
}

/// The guest kernel directory: `$BULKHEAD_KERNEL_DIR`, else what
/// `kernel-config/build-kernel.sh --print-dir` says. Fails when it holds no
/// `vmlinux` (this never builds the kernel).
pub fn kernel_dir() -> Result<KernelDir, LocateError> {
    let dir = match std::env::var_os("BULKHEAD_KERNEL_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let script = workspace_root().join("kernel-config/build-kernel.sh");
            let out = Command::new(&script)
                .arg("--print-dir")
                .output()
                .map_err(|source| LocateError::Script {
                    script: script.clone(),
                    source,
                })?;
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || dir.is_empty() {
                return Err(LocateError::ScriptFailed {
                    script,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            PathBuf::from(dir)
        }
    };
    let kernel = KernelDir { dir };
    if !kernel.vmlinux().is_file() {
        return Err(LocateError::KernelNotBuilt(kernel.dir));
    }
    Ok(kernel)
}

/// The `bulkhead-vmm` binary: `$BULKHEAD_VMM`, else the newest of
/// `<target>/release/bulkhead-vmm` and `<target>/debug/bulkhead-vmm`, where
/// `<target>` is `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn vmm_binary() -> Result<PathBuf, LocateError> {
    if let Some(p) = std::env::var_os("BULKHEAD_VMM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LocateError::VmmNotFound(p.display().to_string()))
        };
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [
        target.join("release/bulkhead-vmm"),
        target.join("debug/bulkhead-vmm"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(mtime, _)| *mtime)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| LocateError::VmmNotFound(target.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_kernel_script() {
        assert!(workspace_root()
            .join("kernel-config/build-kernel.sh")
            .is_file());
        assert!(workspace_root().join("Cargo.toml").is_file());
    }

    #[test]
    fn print_dir_is_under_the_cache_and_keyed_by_hash() {
        let out = Command::new(workspace_root().join("kernel-config/build-kernel.sh"))
            .arg("--print-dir")
            .env("BULKHEAD_CACHE", "/nonexistent-cache")
            .output()
            .unwrap();
        if !out.status.success() {
            crate::skip(String::from_utf8_lossy(&out.stderr).trim());
            return;
        }
        let dir = String::from_utf8(out.stdout).unwrap();
        let hash = dir
            .trim()
            .strip_prefix("/nonexistent-cache/kernel/")
            .unwrap();
        assert_eq!(hash.len(), 16);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(
            !Path::new("/nonexistent-cache").exists(),
            "--print-dir must not build"
        );
    }
}
