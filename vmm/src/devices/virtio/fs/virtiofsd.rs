//! How to run virtiofsd for a virtio-fs device: its options (cache mode, thread pool, sandbox)
//! with our defaults, the command line, and where the pinned binary is installed
//! (`scripts/install-virtiofsd.sh`).
//!
//! The VMM does not start virtiofsd itself (it only connects to its socket); whoever starts
//! the VMM (the shim, tests) builds the command here so the options stay in one place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// The virtiofsd version the project pins (see `scripts/install-virtiofsd.sh`).
pub const VIRTIOFSD_VERSION: &str = "1.14.0";
/// Environment variable naming the virtiofsd binary, overriding the cache location.
pub const VIRTIOFSD_ENV: &str = "BULKHEAD_VIRTIOFSD";
/// Default thread-pool size: one worker thread besides the queue thread (as Kata Containers
/// does). virtiofsd's own default, 0, serves requests on the queue thread; 1 keeps a slow
/// request (e.g. a blocking `open`) from holding up the queue without spawning many threads
/// on small hosts.
pub const DEFAULT_THREAD_POOL_SIZE: usize = 1;

/// virtiofsd's `--cache` policy: how long the guest may cache metadata and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Cache with a 1 s timeout and revalidate on open (close-to-open consistency). Default:
    /// the host may change files under a container image only rarely, and this keeps it safe.
    #[default]
    Auto,
    /// Cache metadata and data without timeout: fastest, only safe if nothing else writes the
    /// shared directory.
    Always,
    /// Cache metadata only.
    Metadata,
    /// No caching: every access goes to the host.
    Never,
}

impl CacheMode {
    fn as_arg(self) -> &'static str {
        match self {
            CacheMode::Auto => "auto",
            CacheMode::Always => "always",
            CacheMode::Metadata => "metadata",
            CacheMode::Never => "never",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_arg())
    }
}

/// An unknown cache mode name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown virtiofsd cache mode {0:?} (auto, always, metadata, never)")]
pub struct CacheModeError(String);

impl FromStr for CacheMode {
    type Err = CacheModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(CacheMode::Auto),
            "always" => Ok(CacheMode::Always),
            "metadata" => Ok(CacheMode::Metadata),
            "never" | "none" => Ok(CacheMode::Never),
            other => Err(CacheModeError(other.to_string())),
        }
    }
}

/// virtiofsd's `--sandbox`: how the daemon isolates itself from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sandbox {
    /// New mount, PID, network namespaces and pivot_root into the shared directory (default;
    /// needs root or a user namespace).
    #[default]
    Namespace,
    /// chroot into the shared directory (root only, weaker).
    Chroot,
    /// No sandbox: for tests and unprivileged development only.
    None,
}

impl Sandbox {
    fn as_arg(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
            Sandbox::None => "none",
        }
    }
}

/// The options we run virtiofsd with. Its seccomp filter stays at its default (kill on a
/// disallowed system call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtiofsdOptions {
    pub cache: CacheMode,
    /// `--thread-pool-size`; 0 serves requests on the queue thread.
    pub thread_pool_size: usize,
    pub sandbox: Sandbox,
    /// Export the directory read-only.
    pub readonly: bool,
}

impl Default for VirtiofsdOptions {
    fn default() -> Self {
        Self {
            cache: CacheMode::default(),
            thread_pool_size: DEFAULT_THREAD_POOL_SIZE,
            sandbox: Sandbox::default(),
            readonly: false,
        }
    }
}

impl VirtiofsdOptions {
    /// The command that serves `shared_dir` on the vhost-user socket `socket`.
    pub fn command(&self, binary: &Path, socket: &Path, shared_dir: &Path) -> Command {
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared_dir.display()))
            .arg(format!("--cache={}", self.cache.as_arg()))
            .arg(format!("--thread-pool-size={}", self.thread_pool_size))
            .arg(format!("--sandbox={}", self.sandbox.as_arg()))
            .arg("--announce-submounts");
        if self.readonly {
            cmd.arg("--readonly");
        }
        cmd
    }
}

/// The cache directory scripts install into: `$BULKHEAD_CACHE`, else `/var/cache/bulkhead`.
fn cache_dir() -> PathBuf {
    std::env::var_os("BULKHEAD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/bulkhead"))
}

/// Where the virtiofsd binary is: `$BULKHEAD_VIRTIOFSD` if set, else the pinned version in the
/// cache (`<cache>/virtiofsd-<version>/bin/virtiofsd`). `None` if that file does not exist.
pub fn find_virtiofsd() -> Option<PathBuf> {
    let path = match std::env::var_os(VIRTIOFSD_ENV) {
        Some(p) => PathBuf::from(p),
        None => cache_dir()
            .join(format!("virtiofsd-{VIRTIOFSD_VERSION}"))
            .join("bin/virtiofsd"),
    };
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn default_command_is_sandboxed_with_auto_cache_and_a_small_pool() {
        let cmd = VirtiofsdOptions::default().command(
            Path::new("/bin/virtiofsd"),
            Path::new("/run/vfs.sock"),
            Path::new("/srv/rootfs"),
        );
        assert_eq!(cmd.get_program(), "/bin/virtiofsd");
        assert_eq!(
            args(&cmd),
            [
                "--socket-path=/run/vfs.sock",
                "--shared-dir=/srv/rootfs",
                "--cache=auto",
                "--thread-pool-size=1",
                "--sandbox=namespace",
                "--announce-submounts",
            ]
        );
    }

    #[test]
    fn options_reach_the_command_line() {
        let opts = VirtiofsdOptions {
            cache: "never".parse().unwrap(),
            thread_pool_size: 4,
            sandbox: Sandbox::None,
            readonly: true,
        };
        let a = args(&opts.command(Path::new("v"), Path::new("s"), Path::new("d")));
        assert!(a.contains(&"--cache=never".to_string()));
        assert!(a.contains(&"--thread-pool-size=4".to_string()));
        assert!(a.contains(&"--sandbox=none".to_string()));
        assert!(a.contains(&"--readonly".to_string()));
    }

    #[test]
    fn cache_mode_names() {
        for m in [
            CacheMode::Auto,
            CacheMode::Always,
            CacheMode::Metadata,
            CacheMode::Never,
        ] {
            assert_eq!(m.to_string().parse::<CacheMode>(), Ok(m));
        }
        assert!("sometimes".parse::<CacheMode>().is_err());
    }
}
