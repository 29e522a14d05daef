//! The CLI's configuration: one TOML file (`/etc/bulkhead/config.toml`, `--config PATH`
//! or `BULKHEAD_CONFIG`) holding every default, then environment overrides
//! (`BULKHEAD_KERNEL`, ...), then command-line flags. `config/bulkhead.toml` documents
//! every key.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Where the configuration is read from when neither `--config` nor `BULKHEAD_CONFIG`
/// names a file. A missing default file is not an error (built-in defaults apply).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bulkhead/config.toml";
/// `kernel = "auto"`: the newest `vmlinux` below this directory (the kernel build cache).
pub const KERNEL_CACHE: &str = "/var/cache/bulkhead/kernel";
/// The default initramfs: `guest-agent/build-initramfs.sh` keeps this name as a symlink to
/// its newest content-addressed `<sha256>.cpio` in the same directory.
pub const DEFAULT_INITRD: &str = "/var/cache/bulkhead/initramfs/bulkhead-agent.cpio";
/// `virtiofsd.binary = "auto"` looks here after PATH (`scripts/install-virtiofsd.sh`
/// installs `<cache>/virtiofsd-<version>/bin/virtiofsd`).
pub const TOOL_CACHE: &str = "/var/cache/bulkhead";
/// Where distributions put virtiofsd (outside PATH).
const VIRTIOFSD_PLACES: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Image store (blobs, unpacked layers, image records).
    pub store_root: PathBuf,
    /// Container state and sandbox run directories (a tmpfs: overlay upper dirs live here).
    pub run_root: PathBuf,
    /// error, warn, info, debug, trace.
    pub log_level: String,
    pub vm: VmConfig,
    pub virtiofsd: VirtiofsdConfig,
    pub container: ContainerDefaults,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel (`vmlinux` or `bzImage`), or "auto".
    pub kernel: String,
    /// Initramfs whose `/init` is `bulkhead-agent`.
    pub initrd: PathBuf,
    /// The VMM binary: "auto" (next to `bulkhead`, then PATH), a path, or a bare name
    /// looked up in PATH.
    pub vmm: PathBuf,
    /// Kernel command line; empty keeps the VMM's default.
    pub cmdline: String,
    /// vCPUs when `--cpus` is not given.
    pub vcpus: u32,
    /// Guest memory in MiB when `--memory` is not given (includes the guest's overhead).
    pub memory_mib: u64,
    /// Launch to a version-checked agent, in seconds.
    pub boot_timeout_secs: u64,
    /// VMM `--log-level`; empty keeps the VMM's default.
    pub vmm_log_level: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VirtiofsdConfig {
    /// "auto" (PATH, then the install cache), a path, or a bare name looked up in PATH.
    pub binary: PathBuf,
    /// never, auto, always.
    pub cache: String,
    pub thread_pool_size: u32,
    /// namespace, none.
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerDefaults {
    /// "vm" or "container".
    pub isolation: String,
    /// Seconds `stop` waits between SIGTERM and SIGKILL.
    pub stop_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store_root: PathBuf::from(bulkhead_images::store::DEFAULT_ROOT),
            run_root: PathBuf::from("/run/bulkhead"),
            log_level: "warn".into(),
            vm: VmConfig::default(),
            virtiofsd: VirtiofsdConfig::default(),
            container: ContainerDefaults::default(),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: "auto".into(),
            initrd: PathBuf::from(DEFAULT_INITRD),
            vmm: PathBuf::from("auto"),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 512,
            boot_timeout_secs: 60,
            vmm_log_level: String::new(),
        }
    }
}

impl Default for VirtiofsdConfig {
    fn default() -> Self {
        VirtiofsdConfig {
            binary: PathBuf::from("auto"),
            cache: "auto".into(),
            thread_pool_size: 1,
            sandbox: "namespace".into(),
        }
    }
}

impl Default for ContainerDefaults {
    fn default() -> Self {
        ContainerDefaults {
            isolation: "vm".into(),
            stop_timeout_secs: 10,
        }
    }
}

/// Environment variables that override single keys.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("BULKHEAD_ROOT", "store_root"),
    ("BULKHEAD_RUN_ROOT", "run_root"),
    ("BULKHEAD_LOG", "log_level"),
    ("BULKHEAD_KERNEL", "vm.kernel"),
    ("BULKHEAD_INITRD", "vm.initrd"),
    ("BULKHEAD_VMM", "vm.vmm"),
    ("BULKHEAD_CMDLINE", "vm.cmdline"),
    ("BULKHEAD_VIRTIOFSD", "virtiofsd.binary"),
    ("BULKHEAD_ISOLATION", "container.isolation"),
];

impl Config {
    /// Reads `path` (or the default file when `path` is `None`; a missing default file
    /// gives the built-in defaults), then applies the environment overrides.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut cfg = match path {
            Some(p) => Self::parse_file(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::parse_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Config::default(),
        };
        for (var, key) in ENV_OVERRIDES {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    cfg.set(key, &v)
                        .with_context(|| format!("environment variable {var}"))?;
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn parse_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the configuration {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        Ok(cfg)
    }

    /// Sets one key given as `section.name`.
    pub fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        match key {
            "store_root" => self.store_root = value.into(),
            "run_root" => self.run_root = value.into(),
            "log_level" => self.log_level = value.into(),
            "vm.kernel" => self.vm.kernel = value.into(),
            "vm.initrd" => self.vm.initrd = value.into(),
            "vm.vmm" => self.vm.vmm = value.into(),
            "vm.cmdline" => self.vm.cmdline = value.into(),
            "virtiofsd.binary" => self.virtiofsd.binary = value.into(),
            "container.isolation" => self.container.isolation = value.into(),
            other => bail!("unknown configuration key {other}"),
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.log_level.parse::<log::LevelFilter>().is_err() {
            bail!(
                "log_level {:?}: expected error, warn, info, debug or trace",
                self.log_level
            );
        }
        if !matches!(self.virtiofsd.cache.as_str(), "never" | "auto" | "always") {
            bail!(
                "virtiofsd.cache {:?}: expected never, auto or always",
                self.virtiofsd.cache
            );
        }
        if !matches!(self.virtiofsd.sandbox.as_str(), "namespace" | "none") {
            bail!(
                "virtiofsd.sandbox {:?}: expected namespace or none",
                self.virtiofsd.sandbox
            );
        }
        if !matches!(self.container.isolation.as_str(), "vm" | "container") {
            bail!(
                "container.isolation {:?}: expected vm or container",
                self.container.isolation
            );
        }
        if self.vm.vcpus == 0 || self.vm.memory_mib < 64 {
            bail!("vm.vcpus must be at least 1 and vm.memory_mib at least 64");
        }
        Ok(())
    }

    pub fn log_level(&self) -> log::LevelFilter {
        self.log_level.parse().unwrap_or(log::LevelFilter::Warn)
    }

    /// The guest kernel path: the configured one, or with "auto" the most recently built
    /// `vmlinux` in the kernel cache.
    pub fn kernel_path(&self) -> Option<PathBuf> {
        if self.vm.kernel != "auto" {
            return Some(PathBuf::from(&self.vm.kernel));
        }
        newest_kernel(Path::new(KERNEL_CACHE))
    }

    /// The initramfs: the configured file; the default name, when it is missing (built
    /// before the script kept the symlink), falls back to the newest `*.cpio` beside it.
    pub fn initrd_path(&self) -> PathBuf {
        let p = &self.vm.initrd;
        if p.exists() || p != Path::new(DEFAULT_INITRD) {
            return p.clone();
        }
        p.parent()
            .and_then(newest_cpio)
            .unwrap_or_else(|| p.clone())
    }

    /// The VMM binary; "auto": `bulkhead-vmm` next to this executable, then in PATH.
    pub fn vmm_path(&self) -> Option<PathBuf> {
        if self.vm.vmm != Path::new("auto") {
            return which(&self.vm.vmm);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("bulkhead-vmm")))
            .filter(|p| p.is_file())
            .or_else(|| which(Path::new("bulkhead-vmm")))
    }

    /// virtiofsd; "auto": PATH, then the newest `virtiofsd-*/bin/virtiofsd` of the tool
    /// cache, then the distributions' places.
    pub fn virtiofsd_path(&self) -> Option<PathBuf> {
        if self.virtiofsd.binary != Path::new("auto") {
            return which(&self.virtiofsd.binary);
        }
        which(Path::new("virtiofsd"))
            .or_else(|| newest_in_cache(Path::new(TOOL_CACHE), "virtiofsd-", "bin/virtiofsd"))
            .or_else(|| {
                VIRTIOFSD_PLACES
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
    }

    /// Where containers keep their state.
    pub fn containers_dir(&self) -> PathBuf {
        self.run_root.join("containers")
    }

    /// Root of the sandbox run directories (VM mode).
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.run_root.join("sandboxes")
    }
}

fn newest_kernel(cache: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(cache).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// The newest `*.cpio` file in `dir` (not following the default symlink's own name).
fn newest_cpio(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpio") && p.is_file())
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// `<cache>/<prefix>*/<rel>` with the highest version-sorted directory name.
fn newest_in_cache(cache: &Path, prefix: &str, rel: &str) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let key = version.split('.').map(|n| n.parse().unwrap_or(0)).collect();
            let p = e.path().join(rel);
            p.is_file().then_some((key, p))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Looks a bare program name up in PATH; paths with a slash are returned as they are.
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
    fn the_documented_file_is_the_default() {
        let text = include_str!("../../config/bulkhead.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::parse("no_such_key = 1").is_err());
        assert!(Config::parse("[vm]\nvcpu = 2").is_err());
        let cfg = Config::parse("[virtiofsd]\ncache = \"sometimes\"").unwrap();
        assert!(cfg.validate().is_err());
        let cfg = Config::parse("log_level = \"loud\"").unwrap();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn partial_files_keep_other_defaults() {
        let cfg = Config::parse("[vm]\nvcpus = 2\n").unwrap();
        assert_eq!(cfg.vm.vcpus, 2);
        assert_eq!(cfg.vm.memory_mib, VmConfig::default().memory_mib);
        assert_eq!(cfg.run_root, PathBuf::from("/run/bulkhead"));
    }

    #[test]
    fn keys_can_be_set_by_name() {
        let mut cfg = Config::default();
        cfg.set("vm.kernel", "/k").unwrap();
        assert_eq!(cfg.kernel_path(), Some(PathBuf::from("/k")));
        assert!(cfg.set("vm.nope", "x").is_err());
    }

    #[test]
    fn auto_virtiofsd_takes_the_highest_cached_version() {
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
    fn initrd_falls_back_to_the_newest_cpio_only_for_the_default_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_cpio(dir.path()), None);
        for name in ["aaa.cpio", "bbb.cpio"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(dir.path().join("zzz.txt"), "x").unwrap();
        assert_eq!(newest_cpio(dir.path()), Some(dir.path().join("bbb.cpio")));
        let mut cfg = Config::default();
        cfg.vm.initrd = dir.path().join("missing.cpio");
        assert_eq!(cfg.initrd_path(), dir.path().join("missing.cpio"));
    }

    #[test]
    fn auto_vmm_is_found_next_to_the_binary_or_not_at_all() {
        let cfg = Config::default();
        let beside = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join("bulkhead-vmm");
        match cfg.vmm_path() {
            Some(p) if p == beside => assert!(beside.is_file()),
            Some(p) => assert!(!beside.is_file() && p.ends_with("bulkhead-vmm")),
            None => assert!(!beside.is_file()),
        }
        let mut cfg = Config::default();
        cfg.vm.vmm = "/nonexistent/vmm".into();
        assert_eq!(cfg.vmm_path(), None);
    }

    #[test]
    fn auto_kernel_is_the_newest_build() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_kernel(dir.path()), None);
        for name in ["a", "b"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("vmlinux"), "k").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            newest_kernel(dir.path()),
            Some(dir.path().join("b/vmlinux"))
        );
    }
}
