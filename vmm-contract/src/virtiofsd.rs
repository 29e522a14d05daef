//! How virtiofsd is run for a virtio-fs device: the options (confinement, cache policy, thread
//! pool), its command line, and the version the project pins (`scripts/install-virtiofsd.sh`).
//!
//! The VMM does not start virtiofsd (it only connects to its socket,
//! [`crate::FsSpec::socket`]); whoever starts the VMM starts virtiofsd with these options
//! (`bulkhead_sandbox::virtiofsd_process`, the VMM's own virtio-fs tests).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::args::ParseValueError;

/// The virtiofsd version the project pins (see `scripts/install-virtiofsd.sh`).
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

/// virtiofsd's `--sandbox`: how the daemon confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsConfinement {
    /// Mount, pid and network namespaces with the shared dir as its root (needs root).
    #[default]
    Namespace,
    /// No confinement: only for hosts where namespaces are unavailable, and tests.
    None,
}

impl FsConfinement {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            FsConfinement::Namespace => "namespace",
            FsConfinement::None => "none",
        }
    }
}

impl fmt::Display for FsConfinement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsConfinement {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "namespace" => Ok(FsConfinement::Namespace),
            "none" => Ok(FsConfinement::None),
            _ => Err(ParseValueError {
                value: s.to_owned(),
                expected: "namespace, none",
            }),
        }
    }
}

/// virtiofsd's `--cache` policy: how long the guest may cache metadata and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsCache {
    /// No caching: every access goes to the host.
    Never,
    /// Metadata and data cached until the host changes them (close-to-open).
    #[default]
    Auto,
    /// Cached without timeout: fastest, only safe if nothing else writes the shared directory.
    Always,
}

impl FsCache {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            FsCache::Never => "never",
            FsCache::Auto => "auto",
            FsCache::Always => "always",
        }
    }
}

impl fmt::Display for FsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsCache {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" => Ok(FsCache::Never),
            "auto" => Ok(FsCache::Auto),
            "always" => Ok(FsCache::Always),
            _ => Err(ParseValueError {
                value: s.to_owned(),
                expected: "never, auto, always",
            }),
        }
    }
}

/// How to run virtiofsd; the socket and the shared directory come from the caller (the
/// sandbox's run directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtiofsdOptions {
    /// The virtiofsd binary.
    pub binary: PathBuf,
    /// `--sandbox`: how virtiofsd confines itself (our word: confinement, see docs/README.md).
    pub confinement: FsConfinement,
    /// `--cache`.
    pub cache: FsCache,
    /// `--thread-pool-size`: worker threads; 0 lets the vring thread serve requests itself.
    /// The default, 1, keeps a slow request (a blocking `open`) from holding up the queue
    /// without spawning many threads on small hosts (as Kata Containers does).
    pub thread_pool_size: u32,
    /// How long the launcher waits for virtiofsd's socket to appear.
    pub ready_timeout: Duration,
}

impl Default for VirtiofsdOptions {
    fn default() -> Self {
        VirtiofsdOptions {
            binary: PathBuf::from("virtiofsd"),
            confinement: FsConfinement::default(),
            cache: FsCache::default(),
            thread_pool_size: 1,
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// What virtiofsd drops from its default capability set (`CAP_MKNOD`, `CAP_SETFCAP`); it
/// keeps chown, dac_override, dac_read_search, fowner, fsetid, setgid and setuid.
pub const DROPPED_CAPS: &str = "--modcaps=-mknod:-setfcap";

impl VirtiofsdOptions {
    /// virtiofsd's arguments (without the binary) to serve `shared_dir` on the vhost-user
    /// socket `socket`. Its seccomp filter stays at its default (kill on a forbidden call).
    pub fn args(&self, socket: &Path, shared_dir: &Path) -> Vec<OsString> {
        let mut socket_arg = OsString::from("--socket-path=");
        socket_arg.push(socket);
        let mut dir_arg = OsString::from("--shared-dir=");
        dir_arg.push(shared_dir);
        vec![
            socket_arg,
            dir_arg,
            format!("--sandbox={}", self.confinement).into(),
            format!("--cache={}", self.cache).into(),
            format!("--thread-pool-size={}", self.thread_pool_size).into(),
            // No device nodes and no file capabilities from a guest: virtiofsd keeps only
            // the ownership and permission capabilities a container filesystem needs.
            DROPPED_CAPS.into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn default_command_line() {
        let args = VirtiofsdOptions::default()
            .args(Path::new("/run/b/p/fs.sock"), Path::new("/run/b/p/shared"));
        assert_eq!(
            strings(args),
            [
                "--socket-path=/run/b/p/fs.sock",
                "--shared-dir=/run/b/p/shared",
                "--sandbox=namespace",
                "--cache=auto",
                "--thread-pool-size=1",
                "--modcaps=-mknod:-setfcap"
            ]
        );
    }

    #[test]
    fn options_reach_the_command_line() {
        let opts = VirtiofsdOptions {
            cache: "never".parse().unwrap(),
            thread_pool_size: 4,
            confinement: "none".parse().unwrap(),
            ..Default::default()
        };
        let a = strings(opts.args(Path::new("s"), Path::new("d")));
        assert!(a.contains(&"--cache=never".to_string()));
        assert!(a.contains(&"--thread-pool-size=4".to_string()));
        assert!(a.contains(&"--sandbox=none".to_string()));
    }

    #[test]
    fn names_round_trip() {
        for c in [FsCache::Never, FsCache::Auto, FsCache::Always] {
            assert_eq!(c.to_string().parse::<FsCache>(), Ok(c));
        }
        for s in [FsConfinement::Namespace, FsConfinement::None] {
            assert_eq!(s.to_string().parse::<FsConfinement>(), Ok(s));
        }
        assert!("sometimes".parse::<FsCache>().is_err());
        assert!("chroot".parse::<FsConfinement>().is_err());
    }
}
