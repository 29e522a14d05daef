//! The shim's side of the configuration. The schema, its loader, the defaults and the
//! "auto" discovery are `bulkhead_sandbox::config`'s: the shim reads the same layers as the
//! `bulkhead` CLI (vendor defaults, `/etc/bulkhead/config.toml` or the file named by
//! `BULKHEAD_CONFIG`, then `BULKHEAD_*` variables, which containerd passes to the shims it
//! starts). Here the loaded configuration becomes what the shim uses, with the VM's files
//! resolved. `config/bulkhead.toml` documents every key.

use std::collections::HashMap;

use bulkhead_sandbox::config::{standard_layers, VmFiles};
pub use bulkhead_sandbox::config::{Config, ConfigError, Layer, LogFormat, CONFIG_ENV};
use bulkhead_sandbox::VirtiofsdOptions;

/// The configuration as the shim uses it: the shared schema's values, and the VM's files.
/// VM sizes and sandbox configurations come from [`Config::vm_size`] and
/// [`Config::sandbox_config`], as in the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimConfig {
    /// The loaded configuration (`run_root`, `log_level`, `log_format`, `[vm]`, ...).
    pub config: Config,
    /// The VM's files: resolved by [`ShimConfig::load`] and [`ShimConfig::resolve`]; as
    /// configured ("auto" left as it is) in [`ShimConfig::load_lenient`] and the default.
    pub files: VmFiles,
}

impl Default for ShimConfig {
    /// The built-in defaults, unresolved ("auto" paths stay "auto").
    fn default() -> Self {
        ShimConfig::unresolved(&Config::default())
    }
}

impl ShimConfig {
    /// Loads the configuration from this process's environment and resolves the VM's
    /// files; an error names the key and the file or variable it came from.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_in(&std::env::vars().collect())
    }

    /// [`ShimConfig::load`] with the environment `env`.
    pub fn load_in(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::resolve(&Self::load_config(env)?)
    }

    /// The shim's layers with the environment `env`: vendor defaults, the file named by
    /// `BULKHEAD_CONFIG` (must exist) or `/etc/bulkhead/config.toml` (may be missing), the
    /// `BULKHEAD_*` variables.
    pub fn load_config(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::load(&standard_layers(None, env))
    }

    /// The configuration of a RuntimeClass handler whose runtime option `ConfigPath` names
    /// `path`: the vendor defaults, that file (which must exist) instead of
    /// `/etc/bulkhead/config.toml`, the `BULKHEAD_*` variables; the VM's files resolved.
    pub fn load_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let env = std::env::vars().collect();
        Self::resolve(&Config::load(&standard_layers(Some(path), &env))?)
    }

    /// [`ShimConfig::load_file`] for `delete`: the VM's files not looked up.
    pub fn load_file_lenient(path: &std::path::Path) -> Result<Self, ConfigError> {
        let env = std::env::vars().collect();
        Ok(Self::unresolved(&Config::load(&standard_layers(
            Some(path),
            &env,
        ))?))
    }

    /// The configuration with the VM's files found ("auto" and bare names resolved).
    pub fn resolve(cfg: &Config) -> Result<Self, ConfigError> {
        Ok(ShimConfig {
            config: cfg.clone(),
            files: cfg.vm_files()?,
        })
    }

    /// What `delete` and the log level need even when the VM's files cannot be found or
    /// the configuration is broken (then the defaults).
    pub fn load_lenient() -> Self {
        let env = std::env::vars().collect();
        Self::load_config(&env)
            .map(|c| Self::unresolved(&c))
            .unwrap_or_default()
    }

    /// The configuration with the VM's files as configured, nothing looked up.
    fn unresolved(cfg: &Config) -> Self {
        let files = VmFiles {
            kernel: cfg.vm.kernel.clone(),
            initrd: (!cfg.vm.initrd.as_os_str().is_empty()).then(|| cfg.vm.initrd.clone()),
            vmm: cfg.vm.vmm.clone(),
            virtiofsd: (!cfg.virtiofsd.binary.as_os_str().is_empty()).then(|| VirtiofsdOptions {
                binary: cfg.virtiofsd.binary.clone(),
                cache: cfg.virtiofsd.cache,
                confinement: cfg.virtiofsd.confinement,
                thread_pool_size: cfg.virtiofsd.thread_pool_size,
                ..Default::default()
            }),
        };
        ShimConfig {
            config: cfg.clone(),
            files,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use bulkhead_sandbox::config::VENDOR_DEFAULTS_PATH;
    use bulkhead_sandbox::{FsCache, FsConfinement};

    use super::*;
    use crate::bootstrap::error_chain as chain;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The VM's files named explicitly, so that nothing depends on this machine's.
    const FILES: &[(&str, &str)] = &[
        ("BULKHEAD_KERNEL", "/k/vmlinux"),
        ("BULKHEAD_INITRD", "/k/initrd"),
        ("BULKHEAD_VMM", "/bin/sh"),
        ("BULKHEAD_VIRTIOFSD", "/bin/true"),
    ];

    #[test]
    fn every_shipped_configuration_loads_through_the_shim() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no configuration in {}", dir.display());
        for file in files {
            let mut vars = FILES.to_vec();
            vars.push((CONFIG_ENV, file.to_str().unwrap()));
            let cfg = ShimConfig::load_config(&env(&vars))
                .unwrap_or_else(|e| panic!("{}: {}", file.display(), chain(&e)));
            let expected = Config::load(&[
                Layer::OptionalFile(VENDOR_DEFAULTS_PATH.into()),
                Layer::File(file.clone()),
            ])
            .unwrap();
            assert_eq!(cfg.run_root, expected.run_root, "{}", file.display());
            assert_eq!(cfg.vm.vcpus, expected.vm.vcpus);
            assert_eq!(cfg.virtiofsd.binary, Path::new("/bin/true"));
            assert_eq!(cfg.virtiofsd.cache, expected.virtiofsd.cache);
            let c = ShimConfig::load_in(&env(&vars))
                .unwrap_or_else(|e| panic!("{}: {}", file.display(), chain(&e)));
            assert_eq!(c.files.kernel, Path::new("/k/vmlinux"));
            assert_eq!(c.files.initrd.as_deref(), Some(Path::new("/k/initrd")));
            assert_eq!(c.files.vmm, Path::new("/bin/sh"));
            assert_eq!(c.config.run_root, expected.run_root);
            assert_eq!(c.config.log_level, expected.log_level);
            assert_eq!(c.config.log_format, expected.log_format);
            assert_eq!(c.config.boot_timeout(), expected.boot_timeout());
            assert_eq!(c.config.vm.vcpus, expected.vm.vcpus);
            assert_eq!(c.config.vm.memory_mib, expected.vm.memory_mib);
            let fsd = c.files.virtiofsd.unwrap();
            assert_eq!(fsd.binary, Path::new("/bin/true"));
            assert_eq!(
                (fsd.cache, fsd.confinement),
                (expected.virtiofsd.cache, expected.virtiofsd.confinement)
            );
            // Without the variables the files are found or named as missing, nothing else.
            let vars = env(&[(CONFIG_ENV, file.to_str().unwrap())]);
            match ShimConfig::load_in(&vars) {
                Ok(_) | Err(ConfigError::NotFound { .. }) => {}
                Err(e) => panic!("{}: {}", file.display(), chain(&e)),
            }
        }
    }

    #[test]
    fn the_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bulkhead.toml");
        std::fs::write(
            &file,
            "run_root = \"/file/run\"\nlog_level = \"debug\"\nlog_format = \"json\"\n\
             [vm]\nkernel = \"/file/k\"\nvmm = \"/bin/sh\"\ncmdline = \"quiet\"\nvcpus = 2\n\
             memory_mib = 512\nboot_timeout_secs = 120\nvmm_log_level = \"trace\"\n\
             [virtiofsd]\nbinary = \"/bin/true\"\nconfinement = \"none\"\ncache = \"never\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = ShimConfig::load_in(&env(&[(CONFIG_ENV, f), ("BULKHEAD_INITRD", "")])).unwrap();
        assert_eq!(c.files.kernel, Path::new("/file/k"));
        assert_eq!(c.files.initrd, None);
        assert_eq!(c.config.cmdline().as_deref(), Some("quiet"));
        assert_eq!((c.config.vm.vcpus, c.config.vm.memory_mib), (2, 512));
        assert_eq!(c.config.boot_timeout(), Duration::from_secs(120));
        assert_eq!(c.config.log_level, log::LevelFilter::Debug);
        assert_eq!(c.config.log_format, LogFormat::Json);
        assert_eq!(c.config.vmm_log_level().as_deref(), Some("trace"));
        let fsd = c.files.virtiofsd.unwrap();
        assert_eq!(
            (fsd.confinement, fsd.cache),
            (FsConfinement::None, FsCache::Never)
        );

        let c = ShimConfig::load_in(&env(&[
            (CONFIG_ENV, f),
            ("BULKHEAD_KERNEL", "/env/k"),
            ("BULKHEAD_RUN_ROOT", "/env/run"),
            ("BULKHEAD_LOG", "error"),
            ("BULKHEAD_LOG_FORMAT", "text"),
            ("BULKHEAD_INITRD", ""),
            ("BULKHEAD_VIRTIOFSD", ""),
        ]))
        .unwrap();
        assert_eq!(c.files.kernel, Path::new("/env/k"));
        assert_eq!(c.config.run_root, Path::new("/env/run"));
        assert_eq!(c.config.log_level, log::LevelFilter::Error);
        assert_eq!(c.config.log_format, LogFormat::Text);
        assert_eq!(c.files.virtiofsd, None);
        assert_eq!(c.config.vm.vcpus, 2);
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bulkhead.toml");
        // The shim's former schema.
        std::fs::write(&file, "run_root = \"/run/x\"\nagent_timeout_secs = 30\n").unwrap();
        let vars = env(&[(CONFIG_ENV, file.to_str().unwrap())]);
        let m = chain(&ShimConfig::load_in(&vars).unwrap_err());
        assert!(
            m.contains(file.to_str().unwrap()) && m.contains("agent_timeout_secs"),
            "{m}"
        );
        std::fs::write(&file, "[vm]\nmemory_mib = 1\n").unwrap();
        let m = chain(&ShimConfig::load_in(&vars).unwrap_err());
        assert!(
            m.contains(file.to_str().unwrap()) && m.contains("vm.memory_mib"),
            "{m}"
        );
        // A named file must exist.
        let vars = env(&[(CONFIG_ENV, "/nonexistent/bulkhead.toml")]);
        let m = chain(&ShimConfig::load_in(&vars).unwrap_err());
        assert!(m.contains("/nonexistent/bulkhead.toml"), "{m}");
        // A VMM that is not there is named with the key that sets it.
        let vars = env(&[
            (CONFIG_ENV, "/dev/null"),
            ("BULKHEAD_KERNEL", "/k"),
            ("BULKHEAD_INITRD", ""),
            ("BULKHEAD_VMM", "/nonexistent/vmm"),
        ]);
        let m = chain(&ShimConfig::load_in(&vars).unwrap_err());
        assert!(
            m.contains("/nonexistent/vmm") && m.contains("vm.vmm"),
            "{m}"
        );
    }
}
