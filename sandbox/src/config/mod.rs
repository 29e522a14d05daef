//! The configuration of both front ends, `bulkhead` (the CLI) and
//! `containerd-shim-bulkhead-v2`: one schema, one loader, one set of defaults.
//!
//! `config/bulkhead.toml` documents every key with its default and environment variable
//! (a test checks it equals [`Config::default`]). Sections: top-level paths and logging,
//! `[vm]` and `[virtiofsd]` (shared by both front ends), `[network]` (the CLI's CNI
//! networks), `[cli]` and `[shim]` (what only one front end reads). Every table refuses unknown keys; every error names the key and where
//! the value came from.
//!
//! Precedence, lowest first, as a list of [`Layer`]s given to [`Config::load`]:
//! built-in defaults < vendor defaults ([`VENDOR_DEFAULTS_PATH`], optional) < the file
//! named by `--config` / `BULKHEAD_CONFIG` (must exist) or else [`DEFAULT_CONFIG_PATH`]
//! (optional) < environment variables ([`ENV_OVERRIDES`]) < command-line flags (the front
//! end adds [`Layer::Value`]s). [`standard_layers`] builds the list up to the environment.
//!
//! `"auto"` values are resolved by [`discover`] when a front end asks for the path
//! ([`Config::kernel_path`], [`Config::vm_files`], ...).

pub mod discover;
mod error;
mod load;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `log_format`: the one log format of every Bulkhead binary (text or json).
pub use bulkhead_log::Format as LogFormat;
pub use error::ConfigError;
pub use load::{standard_layers, EnvOverride, Layer, ENV_OVERRIDES};

use crate::network::cni::{BridgeNetwork, Cni, CniError, ConfList, Ipv4Net};
use crate::sandbox::{NetBackend, SandboxConfig, DEFAULT_RUN_ROOT};
use crate::sizing::{PodResources, VmSize, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::{FsCache, FsConfinement, VirtiofsdOptions};

/// The administrator's file; a missing one is not an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bulkhead/config.toml";
/// The defaults an installation ships (read before [`DEFAULT_CONFIG_PATH`] or the file
/// named by [`CONFIG_ENV`]); a missing one is not an error.
pub const VENDOR_DEFAULTS_PATH: &str = "/opt/bulkhead/share/defaults.toml";
/// Names the configuration file instead of [`DEFAULT_CONFIG_PATH`] (the CLI's `--config`
/// reads it too); a named file must exist.
pub const CONFIG_ENV: &str = "BULKHEAD_CONFIG";
/// The default image store of the CLI.
pub const DEFAULT_STORE_ROOT: &str = "/var/lib/bulkhead";
/// `"auto"`: found by [`discover`].
pub const AUTO: &str = "auto";

/// The whole configuration. Every field has a default (`serde(default)`): a file names
/// only what it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The CLI's image store (blobs, unpacked layers, image records).
    pub store_root: PathBuf,
    /// Run directories and container state; absolute.
    pub run_root: PathBuf,
    /// error, warn, info, debug, trace or off.
    #[serde(with = "level_filter")]
    pub log_level: log::LevelFilter,
    /// text or json.
    pub log_format: LogFormat,
    pub vm: VmSection,
    pub virtiofsd: VirtiofsdSection,
    pub network: NetworkSection,
    pub jail: JailSection,
    pub cli: CliSection,
    pub shim: ShimSection,
}

/// The VMM's jail ([`crate::jail`]): its own uid, namespaces, a read-only root, a cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JailSection {
    /// Jail every VMM (needs root and a static VMM binary). Off only to debug the VMM.
    pub enabled: bool,
    /// The first of the uids (and gids) handed to sandboxes, one each.
    pub id_base: u32,
    /// How many there are.
    pub id_count: u32,
    /// Lock files of the ids in use; shared by every front end on the host.
    pub ids_dir: PathBuf,
    /// The cgroup, below the cgroup2 root, holding one cgroup per sandbox (VMM and
    /// virtiofsd); "" leaves them in the caller's cgroup.
    pub cgroup_parent: PathBuf,
    /// Memory for the VMM and virtiofsd on top of guest memory, in the cgroup's limit.
    pub memory_overhead_mib: u64,
}

impl Default for JailSection {
    fn default() -> Self {
        let d = crate::jail::JailSettings::default();
        JailSection {
            enabled: true,
            id_base: d.id_base,
            id_count: d.id_count,
            ids_dir: d.ids_dir,
            cgroup_parent: d.cgroup_parent.unwrap_or_default(),
            memory_overhead_mib: d.memory_overhead_mib,
        }
    }
}

impl JailSection {
    /// The settings, `None` when the jail is off.
    pub fn settings(&self) -> Option<crate::jail::JailSettings> {
        self.enabled.then(|| crate::jail::JailSettings {
            id_base: self.id_base,
            id_count: self.id_count,
            ids_dir: self.ids_dir.clone(),
            cgroup_parent: (!self.cgroup_parent.as_os_str().is_empty())
                .then(|| self.cgroup_parent.clone()),
            memory_overhead_mib: self.memory_overhead_mib,
        })
    }
}

/// The microVM: guest artefacts, the VMM, the size of a VM without limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSection {
    /// Guest kernel (ELF vmlinux or bzImage), or "auto".
    pub kernel: PathBuf,
    /// Agent initramfs, "auto", or "" for none.
    pub initrd: PathBuf,
    /// The VMM binary: "auto", a path, or a bare name looked up in PATH.
    pub vmm: PathBuf,
    /// Guest kernel command line; "" keeps the VMM's default.
    pub cmdline: String,
    /// vCPUs of a VM whose pod or container has no CPU limit.
    pub vcpus: u32,
    /// Memory in MiB of a VM whose pod or container has no memory limit.
    pub memory_mib: u64,
    /// VMM launch to a version-checked agent.
    pub boot_timeout_secs: u64,
    /// How long one request to the agent may go unanswered (not the ones that wait for an
    /// exit or an OOM event).
    pub request_timeout_secs: u64,
    /// The VMM's `--log-level`; "" keeps the VMM's default.
    pub vmm_log_level: String,
    /// The data path of the guest's NIC: auto (vhost-net where `/dev/vhost-net` exists),
    /// vhost or userspace.
    pub net_backend: NetBackend,
    /// The guest console log stops growing here (the rest is dropped, and a line says so).
    pub console_max_bytes: u64,
}

/// virtiofsd, which serves the pod's shared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VirtiofsdSection {
    /// "auto", a path, a bare name looked up in PATH, or "" for no shared filesystem.
    pub binary: PathBuf,
    /// never, auto or always.
    #[serde(with = "fs_cache")]
    pub cache: FsCache,
    pub thread_pool_size: u32,
    /// namespace or none.
    #[serde(with = "fs_confinement")]
    pub confinement: FsConfinement,
}

/// The CLI's container networks, made by the CNI plugins (`run --network bridge`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// Directories searched for CNI plugin binaries, in order.
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// A conflist file for the bridge network; "" generates it from the keys below.
    pub conflist: PathBuf,
    /// The host bridge of the generated network.
    pub bridge: String,
    /// Its IPv4 subnet; the bridge takes the first address (the containers' gateway).
    pub subnet: String,
    /// host-local's store of allocated addresses (one directory per network).
    pub ipam_dir: PathBuf,
}

/// What only the `bulkhead` CLI reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CliSection {
    /// Default of `run --isolation`.
    pub isolation: Isolation,
    /// Default of `run --network`.
    pub network: NetworkMode,
    /// Default of `stop -t`: seconds between SIGTERM and SIGKILL.
    pub stop_timeout_secs: u64,
    /// Unpacking an image for `run`: decompressed tar bytes per layer (headers, PAX
    /// records and data after the end of the archive included).
    pub max_layer_bytes: u64,
    /// Decompressed tar bytes per image.
    pub max_image_bytes: u64,
    /// Tar entries per layer.
    pub max_layer_entries: u64,
}

/// What only the containerd shim reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShimSection {
    /// The pod annotations (`io.bulkhead.vm.<name>`) a pod may use to change its VM, like
    /// Kata's `enable_annotations`; an annotation not named here is refused. None by
    /// default: a pod author must not size the VM unless the administrator says so.
    pub enable_annotations: Vec<VmAnnotation>,
}

/// A per-pod VM knob, set by the pod annotation `io.bulkhead.vm.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAnnotation {
    /// `io.bulkhead.vm.vcpus`: the VM's vCPUs (instead of the pod's CPU limit).
    Vcpus,
    /// `io.bulkhead.vm.memory_mib`: the VM's memory in MiB (instead of the pod's limit).
    MemoryMib,
    /// `io.bulkhead.vm.kernel_params`: parameters appended to the guest kernel's command
    /// line.
    KernelParams,
}

impl VmAnnotation {
    pub const ALL: [VmAnnotation; 3] = [
        VmAnnotation::Vcpus,
        VmAnnotation::MemoryMib,
        VmAnnotation::KernelParams,
    ];

    /// The name in the configuration and the annotation (`vcpus`, ...).
    pub fn name(self) -> &'static str {
        match self {
            VmAnnotation::Vcpus => "vcpus",
            VmAnnotation::MemoryMib => "memory_mib",
            VmAnnotation::KernelParams => "kernel_params",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A microVM per container (the CLI) or per pod (the shim).
    #[default]
    Vm,
    /// Namespaces on the host kernel.
    Container,
}

/// A container's network in the CLI (`run --network`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A namespace on the bridge network ([`NetworkSection`]).
    #[default]
    Bridge,
    /// A namespace with only loopback.
    None,
    /// The host's network (container isolation only).
    Host,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store_root: DEFAULT_STORE_ROOT.into(),
            run_root: DEFAULT_RUN_ROOT.into(),
            log_level: log::LevelFilter::Warn,
            log_format: LogFormat::Text,
            vm: VmSection::default(),
            virtiofsd: VirtiofsdSection::default(),
            network: NetworkSection::default(),
            jail: JailSection::default(),
            cli: CliSection::default(),
            shim: ShimSection::default(),
        }
    }
}

impl Default for VmSection {
    fn default() -> Self {
        VmSection {
            kernel: AUTO.into(),
            initrd: AUTO.into(),
            vmm: AUTO.into(),
            cmdline: String::new(),
            // What the sizing rule gives a pod without limits (a test checks).
            vcpus: 1,
            memory_mib: 384,
            boot_timeout_secs: 60,
            request_timeout_secs: crate::agent::DEFAULT_RPC_TIMEOUT.as_secs(),
            vmm_log_level: String::new(),
            net_backend: NetBackend::Auto,
            console_max_bytes: crate::sandbox::CONSOLE_LOG_MAX_BYTES,
        }
    }
}

impl Default for VirtiofsdSection {
    fn default() -> Self {
        VirtiofsdSection {
            binary: AUTO.into(),
            cache: FsCache::Auto,
            thread_pool_size: 1,
            confinement: FsConfinement::Namespace,
        }
    }
}

/// The name of the CLI's default network (it names its IPAM store and iptables chains).
pub const BRIDGE_NETWORK_NAME: &str = "bulkhead";

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            cni_plugin_dirs: crate::network::cni::DEFAULT_PLUGIN_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            conflist: PathBuf::new(),
            bridge: "bulkhead0".into(),
            subnet: "10.89.0.0/24".into(),
            ipam_dir: "/run/bulkhead/ipam".into(),
        }
    }
}

impl Default for CliSection {
    fn default() -> Self {
        CliSection {
            isolation: Isolation::Vm,
            network: NetworkMode::Bridge,
            stop_timeout_secs: 10,
            // bulkhead_images::Limits::default() (a CLI test checks).
            max_layer_bytes: 32 << 30,
            max_image_bytes: 64 << 30,
            max_layer_entries: 2_000_000,
        }
    }
}

/// The files a VM boots with, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub vmm: PathBuf,
    /// `None`: no shared filesystem (`virtiofsd.binary = ""`).
    pub virtiofsd: Option<VirtiofsdOptions>,
}

impl Config {
    /// Loads the layers in order (later ones win) onto the built-in defaults.
    pub fn load(layers: &[Layer]) -> Result<Config, ConfigError> {
        load::load(layers)
    }

    /// Parses one TOML text alone onto the defaults (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::load(&[Layer::Text {
            origin: origin.to_owned(),
            text: text.to_owned(),
        }])
    }

    /// The checks serde's types do not make. `origin` names the layer in errors.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            value,
            reason,
        };
        for (key, path) in [
            ("run_root", &self.run_root),
            ("store_root", &self.store_root),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{path:?}"),
                    "must be an absolute path".into(),
                ));
            }
        }
        for (key, path) in [("vm.kernel", &self.vm.kernel), ("vm.vmm", &self.vm.vmm)] {
            if path.as_os_str().is_empty() {
                return Err(invalid(
                    key,
                    "\"\"".into(),
                    "must be \"auto\" or a path".into(),
                ));
            }
        }
        if !(1..=MAX_VCPUS).contains(&self.vm.vcpus) {
            return Err(invalid(
                "vm.vcpus",
                self.vm.vcpus.to_string(),
                format!("must be within 1..={MAX_VCPUS}"),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.vm.memory_mib) {
            return Err(invalid(
                "vm.memory_mib",
                self.vm.memory_mib.to_string(),
                format!("must be within {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}"),
            ));
        }
        for (key, secs) in [
            ("vm.boot_timeout_secs", self.vm.boot_timeout_secs),
            ("vm.request_timeout_secs", self.vm.request_timeout_secs),
        ] {
            if secs == 0 {
                return Err(invalid(key, "0".into(), "must be at least 1".into()));
            }
        }
        self.validate_network(origin)?;
        let level = &self.vm.vmm_log_level;
        if !level.is_empty() && level.parse::<log::LevelFilter>().is_err() {
            return Err(invalid(
                "vm.vmm_log_level",
                format!("{level:?}"),
                format!("expected \"\" or {}", level_filter::EXPECTED),
            ));
        }
        Ok(())
    }

    fn validate_network(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            value,
            reason,
        };
        let n = &self.network;
        if let Err(reason) = n.subnet.parse::<Ipv4Net>() {
            return Err(invalid("network.subnet", format!("{:?}", n.subnet), reason));
        }
        let name_ok = (1..=15).contains(&n.bridge.len())
            && n.bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(invalid(
                "network.bridge",
                format!("{:?}", n.bridge),
                "must be an interface name: 1 to 15 letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let relative = |p: &PathBuf| !p.is_absolute();
        if relative(&n.ipam_dir) {
            return Err(invalid(
                "network.ipam_dir",
                format!("{:?}", n.ipam_dir),
                "must be an absolute path".into(),
            ));
        }
        if let Some(d) = n.cni_plugin_dirs.iter().find(|d| relative(d)) {
            return Err(invalid(
                "network.cni_plugin_dirs",
                format!("{d:?}"),
                "must be absolute paths".into(),
            ));
        }
        if !n.conflist.as_os_str().is_empty() && relative(&n.conflist) {
            return Err(invalid(
                "network.conflist",
                format!("{:?}", n.conflist),
                "must be \"\" or an absolute path".into(),
            ));
        }
        Ok(())
    }

    /// The bridge network's conflist: `network.conflist` if set, else generated.
    pub fn bridge_conflist(&self) -> Result<ConfList, CniError> {
        let n = &self.network;
        if !n.conflist.as_os_str().is_empty() {
            return ConfList::load(&n.conflist);
        }
        let subnet = n.subnet.parse().map_err(|reason| CniError::Conflist {
            origin: "network.subnet".into(),
            reason,
        })?;
        Ok(BridgeNetwork {
            name: BRIDGE_NETWORK_NAME.into(),
            bridge: n.bridge.clone(),
            subnet,
            ipam_dir: n.ipam_dir.clone(),
        }
        .conflist())
    }

    /// The CNI runner with `network.cni_plugin_dirs`.
    pub fn cni(&self) -> Cni {
        Cni::new(self.network.cni_plugin_dirs.clone())
    }

    /// The guest kernel: the configured path, or with "auto" the newest cached build, then
    /// the installed kernel.
    pub fn kernel_path(&self) -> Result<PathBuf, ConfigError> {
        if self.vm.kernel != Path::new(AUTO) {
            return Ok(self.vm.kernel.clone());
        }
        discover::auto_kernel().ok_or_else(|| ConfigError::NotFound {
            what: "guest kernel",
            key: "vm.kernel",
            env: "BULKHEAD_KERNEL",
            looked: discover::looked_for("kernel"),
        })
    }

    /// The initramfs: the configured path, `None` for "", or with "auto" the cache's, then
    /// the installed one.
    pub fn initrd_path(&self) -> Result<Option<PathBuf>, ConfigError> {
        if self.vm.initrd.as_os_str().is_empty() {
            return Ok(None);
        }
        if self.vm.initrd != Path::new(AUTO) {
            return Ok(Some(self.vm.initrd.clone()));
        }
        discover::auto_initrd()
            .map(Some)
            .ok_or_else(|| ConfigError::NotFound {
                what: "agent initramfs",
                key: "vm.initrd",
                env: "BULKHEAD_INITRD",
                looked: discover::looked_for("initrd"),
            })
    }

    /// The VMM binary: "auto" (next to this executable, PATH, the install directory), a
    /// bare name in PATH, or a path that exists.
    pub fn vmm_path(&self) -> Result<PathBuf, ConfigError> {
        let found = if self.vm.vmm == Path::new(AUTO) {
            discover::auto_vmm()
        } else {
            discover::which(&self.vm.vmm)
        };
        found.ok_or_else(|| ConfigError::NotFound {
            what: "VMM binary",
            key: "vm.vmm",
            env: "BULKHEAD_VMM",
            looked: if self.vm.vmm == Path::new(AUTO) {
                discover::looked_for("vmm")
            } else {
                self.vm.vmm.display().to_string()
            },
        })
    }

    /// virtiofsd: `None` for "" (no shared filesystem); "auto" (PATH, the tool cache, the
    /// distributions' places), a bare name in PATH, or a path that exists.
    pub fn virtiofsd_path(&self) -> Result<Option<PathBuf>, ConfigError> {
        let binary = &self.virtiofsd.binary;
        if binary.as_os_str().is_empty() {
            return Ok(None);
        }
        let found = if binary == Path::new(AUTO) {
            discover::auto_virtiofsd()
        } else {
            discover::which(binary)
        };
        found.map(Some).ok_or_else(|| ConfigError::NotFound {
            what: "virtiofsd",
            key: "virtiofsd.binary",
            env: "BULKHEAD_VIRTIOFSD",
            looked: if binary == Path::new(AUTO) {
                discover::looked_for("virtiofsd")
            } else {
                binary.display().to_string()
            },
        })
    }

    /// virtiofsd's options with the binary resolved; `None` boots without a shared
    /// filesystem.
    pub fn virtiofsd_options(&self) -> Result<Option<VirtiofsdOptions>, ConfigError> {
        Ok(self.virtiofsd_path()?.map(|binary| VirtiofsdOptions {
            binary,
            cache: self.virtiofsd.cache,
            confinement: self.virtiofsd.confinement,
            thread_pool_size: self.virtiofsd.thread_pool_size,
            ..Default::default()
        }))
    }

    /// Everything a VM boots with, resolved; the first missing one is the error.
    pub fn vm_files(&self) -> Result<VmFiles, ConfigError> {
        Ok(VmFiles {
            kernel: self.kernel_path()?,
            initrd: self.initrd_path()?,
            vmm: self.vmm_path()?,
            virtiofsd: self.virtiofsd_options()?,
        })
    }

    /// The VM size: the sizing rule for the limits there are, `vm.vcpus` (at most the
    /// host's CPUs) and `vm.memory_mib` for those there are not.
    pub fn vm_size(&self, resources: &PodResources, host_cpus: u32) -> VmSize {
        let rule = VmSize::for_pod(resources, host_cpus);
        VmSize {
            vcpus: match resources.cpu_millis {
                Some(_) => rule.vcpus,
                None => self.vm.vcpus.min(host_cpus.max(1)),
            },
            memory_mib: match resources.memory_bytes {
                Some(_) => rule.memory_mib,
                None => self.vm.memory_mib,
            },
        }
    }

    /// `vm.cmdline`, `None` when empty (the VMM's default).
    pub fn cmdline(&self) -> Option<String> {
        (!self.vm.cmdline.is_empty()).then(|| self.vm.cmdline.clone())
    }

    /// `vm.vmm_log_level`, `None` when empty (the VMM's default).
    pub fn vmm_log_level(&self) -> Option<String> {
        (!self.vm.vmm_log_level.is_empty()).then(|| self.vm.vmm_log_level.clone())
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.vm.boot_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.vm.request_timeout_secs)
    }

    /// `log_level` as the lowercase name the `log` crate and the VMM take.
    pub fn log_level_name(&self) -> String {
        self.log_level.as_str().to_ascii_lowercase()
    }

    /// A sandbox of these files and this configuration: `id` below `run_root`, of `size`.
    pub fn sandbox_config(
        &self,
        files: &VmFiles,
        id: &str,
        run_root: &Path,
        size: VmSize,
    ) -> SandboxConfig {
        let mut c = SandboxConfig::new(id, &files.vmm, &files.kernel);
        c.run_root = run_root.to_path_buf();
        c.initrd = files.initrd.clone();
        c.cmdline = self.cmdline();
        c.size = size;
        c.virtiofsd = files.virtiofsd.clone();
        c.agent_timeout = self.boot_timeout();
        c.rpc_timeout = self.request_timeout();
        c.vmm_log_level = self.vmm_log_level();
        c.net_backend = self.vm.net_backend;
        c.log_format = Some(self.log_format);
        c.jail = self.jail.settings();
        c.console_max_bytes = self.vm.console_max_bytes;
        c
    }
}

/// `log::LevelFilter` as a lowercase string.
mod level_filter {
    use serde::{Deserialize, Deserializer, Serializer};

    pub const EXPECTED: &str = "error, warn, info, debug, trace or off";

    pub fn serialize<S: Serializer>(l: &log::LevelFilter, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&l.as_str().to_ascii_lowercase())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<log::LevelFilter, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!("unknown log level {s:?}, expected {EXPECTED}"))
        })
    }
}

/// The spellings of virtiofsd's options in the configuration.
macro_rules! string_enum {
    ($module:ident, $ty:ty, $($name:literal => $variant:path),+ $(,)?) => {
        mod $module {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                match v {
                    $($variant => s.serialize_str($name),)+
                }
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let s = String::deserialize(d)?;
                match s.as_str() {
                    $($name => return Ok($variant),)+
                    _ => {}
                }
                let expected = [$($name),+].join(", ");
                Err(serde::de::Error::custom(format!("unknown value {s:?}, expected one of {expected}")))
            }
        }
    };
}

string_enum!(fs_cache, crate::FsCache,
    "never" => crate::FsCache::Never,
    "auto" => crate::FsCache::Auto,
    "always" => crate::FsCache::Always,
);
string_enum!(fs_confinement, crate::FsConfinement,
    "namespace" => crate::FsConfinement::Namespace,
    "none" => crate::FsConfinement::None,
);

#[cfg(test)]
mod tests;
