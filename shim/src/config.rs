//! The shim's configuration: `/etc/bulkhead/config.toml` (the file the `bulkhead` CLI reads
//! too), environment overrides for the guest artefacts, and the defaults.
//!
//! ```toml
//! kernel = "/usr/share/bulkhead/vmlinux"
//! initrd = "/usr/share/bulkhead/initramfs.cpio"
//! vmm = "/usr/local/bin/bulkhead-vmm"
//! kernel_cmdline = "console=ttyS0 reboot=k panic=1"   # optional
//! default_vcpus = 1          # optional: VM size of a pod without limits
//! default_memory_mib = 384   # optional
//! log_level = "info"
//! run_root = "/run/bulkhead"
//! agent_timeout_secs = 30
//!
//! [virtiofsd]
//! binary = "/usr/local/bin/virtiofsd"   # "" boots without a shared filesystem
//! sandbox = "namespace"                 # or "none"
//! cache = "auto"                        # "never", "auto", "always"
//! thread_pool_size = 1
//! ```
//!
//! `BULKHEAD_KERNEL`, `BULKHEAD_INITRD`, `BULKHEAD_VMM` and `BULKHEAD_VIRTIOFSD` override
//! the file (containerd passes its environment to the shims it starts).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_sandbox::{FsCache, FsSandbox, VirtiofsdOptions};
use serde::Deserialize;
use thiserror::Error;

/// Where the shim looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bulkhead/config.toml";
/// Names a different configuration file (tests).
pub const CONFIG_ENV: &str = "BULKHEAD_CONFIG";
pub const KERNEL_ENV: &str = "BULKHEAD_KERNEL";
pub const INITRD_ENV: &str = "BULKHEAD_INITRD";
pub const VMM_ENV: &str = "BULKHEAD_VMM";
pub const VIRTIOFSD_ENV: &str = "BULKHEAD_VIRTIOFSD";

pub const DEFAULT_KERNEL: &str = "/usr/share/bulkhead/vmlinux";
pub const DEFAULT_INITRD: &str = "/usr/share/bulkhead/initramfs.cpio";
pub const DEFAULT_VMM: &str = "/usr/local/bin/bulkhead-vmm";
pub const DEFAULT_VIRTIOFSD: &str = "/usr/local/bin/virtiofsd";
pub const DEFAULT_RUN_ROOT: &str = "/run/bulkhead";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration in {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    vmm: Option<PathBuf>,
    kernel_cmdline: Option<String>,
    default_vcpus: Option<u32>,
    default_memory_mib: Option<u64>,
    log_level: Option<String>,
    run_root: Option<PathBuf>,
    agent_timeout_secs: Option<u64>,
    virtiofsd: Option<FileVirtiofsd>,
    /// Keys of the CLI's own sections are accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    cli: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVirtiofsd {
    binary: Option<PathBuf>,
    sandbox: Option<String>,
    cache: Option<String>,
    thread_pool_size: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimConfig {
    pub kernel: PathBuf,
    /// `None` when configured as an empty path.
    pub initrd: Option<PathBuf>,
    pub vmm: PathBuf,
    pub kernel_cmdline: Option<String>,
    /// VM vCPUs of a pod without a CPU limit (`None`: the sandbox crate's sizing).
    pub default_vcpus: Option<u32>,
    /// VM memory of a pod without a memory limit (`None`: the sandbox crate's sizing).
    pub default_memory_mib: Option<u64>,
    pub log_level: String,
    /// Run directories go to `<run_root>/<namespace>/<sandbox id>`.
    pub run_root: PathBuf,
    pub agent_timeout: Duration,
    /// `None` boots without a shared filesystem (containers then cannot get a rootfs).
    pub virtiofsd: Option<VirtiofsdOptions>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            kernel: DEFAULT_KERNEL.into(),
            initrd: Some(DEFAULT_INITRD.into()),
            vmm: DEFAULT_VMM.into(),
            kernel_cmdline: None,
            default_vcpus: None,
            default_memory_mib: None,
            log_level: "info".into(),
            run_root: DEFAULT_RUN_ROOT.into(),
            agent_timeout: bulkhead_sandbox::sandbox::DEFAULT_AGENT_TIMEOUT,
            virtiofsd: Some(VirtiofsdOptions {
                binary: DEFAULT_VIRTIOFSD.into(),
                ..Default::default()
            }),
        }
    }
}

impl ShimConfig {
    /// Reads the file named by `BULKHEAD_CONFIG` or [`DEFAULT_CONFIG_PATH`] (a missing
    /// default file means all defaults), then applies the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let (path, must_exist) = match env.get(CONFIG_ENV) {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_toml(&text, &path, &env)
    }

    /// Parses `text` (from `path`, for messages) and applies the overrides in `env`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = ShimConfig::default();
        if let Some(k) = file.kernel {
            c.kernel = k;
        }
        if let Some(i) = file.initrd {
            c.initrd = non_empty_path(i);
        }
        if let Some(v) = file.vmm {
            c.vmm = v;
        }
        c.kernel_cmdline = file.kernel_cmdline.filter(|s| !s.is_empty());
        if let Some(n) = file.default_vcpus {
            if n == 0 || n > bulkhead_sandbox::sizing::MAX_VCPUS {
                return Err(ConfigError::Invalid {
                    key: "default_vcpus",
                    reason: format!("{n} is outside 1..={}", bulkhead_sandbox::sizing::MAX_VCPUS),
                });
            }
            c.default_vcpus = Some(n);
        }
        if let Some(m) = file.default_memory_mib {
            let range =
                bulkhead_sandbox::sizing::MIN_MEMORY_MIB..=bulkhead_sandbox::sizing::MAX_MEMORY_MIB;
            if !range.contains(&m) {
                return Err(ConfigError::Invalid {
                    key: "default_memory_mib",
                    reason: format!("{m} is outside {range:?}"),
                });
            }
            c.default_memory_mib = Some(m);
        }
        if let Some(l) = file.log_level {
            if !matches!(
                l.as_str(),
                "trace" | "debug" | "info" | "warn" | "error" | "off"
            ) {
                return Err(ConfigError::Invalid {
                    key: "log_level",
                    reason: format!("{l:?} is not one of trace, debug, info, warn, error, off"),
                });
            }
            c.log_level = l;
        }
        if let Some(r) = file.run_root {
            if !r.is_absolute() {
                return Err(ConfigError::Invalid {
                    key: "run_root",
                    reason: "must be an absolute path".into(),
                });
            }
            c.run_root = r;
        }
        if let Some(s) = file.agent_timeout_secs {
            c.agent_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(v) = file.virtiofsd {
            c.virtiofsd = virtiofsd_options(v)?;
        }
        // The environment wins over the file.
        if let Some(k) = env.get(KERNEL_ENV) {
            c.kernel = k.into();
        }
        if let Some(i) = env.get(INITRD_ENV) {
            c.initrd = non_empty_path(i.into());
        }
        if let Some(v) = env.get(VMM_ENV) {
            c.vmm = v.into();
        }
        if let Some(v) = env.get(VIRTIOFSD_ENV) {
            match (non_empty_path(v.into()), &mut c.virtiofsd) {
                (None, fsd) => *fsd = None,
                (Some(b), Some(o)) => o.binary = b,
                (Some(b), fsd @ None) => {
                    *fsd = Some(VirtiofsdOptions {
                        binary: b,
                        ..Default::default()
                    })
                }
            }
        }
        Ok(c)
    }
}

fn non_empty_path(p: PathBuf) -> Option<PathBuf> {
    (!p.as_os_str().is_empty()).then_some(p)
}

fn virtiofsd_options(v: FileVirtiofsd) -> Result<Option<VirtiofsdOptions>, ConfigError> {
    let mut o = VirtiofsdOptions {
        binary: DEFAULT_VIRTIOFSD.into(),
        ..Default::default()
    };
    if let Some(b) = v.binary {
        match non_empty_path(b) {
            Some(b) => o.binary = b,
            None => return Ok(None),
        }
    }
    if let Some(s) = v.sandbox {
        o.sandbox = match s.as_str() {
            "namespace" => FsSandbox::Namespace,
            "none" => FsSandbox::None,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "virtiofsd.sandbox",
                    reason: format!("{s:?} is not \"namespace\" or \"none\""),
                })
            }
        };
    }
    if let Some(s) = v.cache {
        o.cache = match s.as_str() {
            "never" => FsCache::Never,
            "auto" => FsCache::Auto,
            "always" => FsCache::Always,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "virtiofsd.cache",
                    reason: format!("{s:?} is not \"never\", \"auto\" or \"always\""),
                })
            }
        };
    }
    if let Some(n) = v.thread_pool_size {
        o.thread_pool_size = n;
    }
    Ok(Some(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<ShimConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ShimConfig::from_toml(text, Path::new("test.toml"), &env)
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("", &[]).unwrap(), ShimConfig::default());
    }

    #[test]
    fn file_values_and_env_overrides() {
        let text = r#"
            kernel = "/k/vmlinux"
            initrd = "/k/initrd"
            vmm = "/bin/vmm"
            default_vcpus = 2
            default_memory_mib = 512
            log_level = "debug"
            [virtiofsd]
            binary = "/bin/vfsd"
            sandbox = "none"
            cache = "never"
        "#;
        let c = parse(text, &[]).unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(c.initrd, Some(PathBuf::from("/k/initrd")));
        assert_eq!(c.default_vcpus, Some(2));
        assert_eq!(c.log_level, "debug");
        let fsd = c.virtiofsd.unwrap();
        assert_eq!(fsd.binary, PathBuf::from("/bin/vfsd"));
        assert_eq!(fsd.sandbox, FsSandbox::None);
        assert_eq!(fsd.cache, FsCache::Never);

        let c = parse(
            text,
            &[
                (KERNEL_ENV, "/env/k"),
                (INITRD_ENV, ""),
                (VMM_ENV, "/env/vmm"),
            ],
        )
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/env/k"));
        assert_eq!(c.initrd, None);
        assert_eq!(c.vmm, PathBuf::from("/env/vmm"));
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (text, key) in [
            ("default_vcpus = 0", "default_vcpus"),
            ("default_memory_mib = 1", "default_memory_mib"),
            ("log_level = \"loud\"", "log_level"),
            ("run_root = \"rel\"", "run_root"),
            ("[virtiofsd]\ncache = \"sometimes\"", "virtiofsd.cache"),
        ] {
            match parse(text, &[]) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("kernal = \"/typo\"", &[]),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn empty_virtiofsd_binary_disables_the_shared_fs() {
        let c = parse("[virtiofsd]\nbinary = \"\"", &[]).unwrap();
        assert_eq!(c.virtiofsd, None);
        let c = parse("", &[(VIRTIOFSD_ENV, "")]).unwrap();
        assert_eq!(c.virtiofsd, None);
    }
}
