//! Validated VM configuration: what the user asked for, checked once before anything is built.

use std::path::{Path, PathBuf};

pub use bulkhead_vmm_contract::HostSocket;

use crate::devices::virtio::fs::FsConfig;

pub use bulkhead_vmm_contract::limits::{
    CMDLINE_MAX_LEN, DEFAULT_CMDLINE, MAX_MEMORY_MIB, MAX_VCPUS, MIN_GUEST_CID, MIN_MEMORY_MIB,
    MIN_VCPUS,
};
use bulkhead_vmm_contract::VmmArgs;
pub use bulkhead_vmm_contract::{NetSpec, NetSpecError, SerialOutput, TapBackend};

/// The hybrid vsock device: guest CID and the host unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub guest_cid: u64,
    /// The host listener: a path the VMM binds, or an inherited listening socket.
    pub host: HostSocket,
    /// Guest connections to host port P go to `<path>_P` (needs a path); off: reset.
    pub guest_connect: bool,
}

/// Everything needed to build and boot one microVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest kernel: ELF `vmlinux` (PVH) or `bzImage`.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line, before the VMM appends its device entries.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// Console bytes written at most (0: no limit).
    pub serial_max_bytes: u64,
    /// Whether to give the guest a virtio-rng device.
    pub rng: bool,
    /// Optional virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices, each a tag served by a vhost-user backend (virtiofsd).
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, each on a tap.
    pub net: Vec<NetSpec>,
}

/// A configuration the VMM refuses, with the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--vcpus must be between {MIN_VCPUS} and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    #[error("--memory must be at least {MIN_MEMORY_MIB} MiB, got {0} MiB")]
    MemoryTooSmall(u64),
    #[error("--memory {asked} MiB is more than {limit} MiB ({why})")]
    MemoryTooLarge {
        asked: u64,
        limit: u64,
        why: &'static str,
    },
    #[error("kernel {path}: {why}")]
    Kernel { path: PathBuf, why: String },
    #[error("initramfs {path}: {why}")]
    Initrd { path: PathBuf, why: String },
    #[error(
        "kernel command line is {len} bytes, the limit is {max} (including the VMM's own entries)"
    )]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL or newline")]
    CmdlineBadChar,
    #[error("vsock guest CID must be 3 or more (0-2 are reserved), got {0}")]
    VsockCid(u64),
    #[error("invalid --net")]
    Net(#[source] NetSpecError),
    #[error("--net {0} is given twice (one tap, one device)")]
    NetDuplicate(String),
}

impl VmConfig {
    /// The configuration the command line asks for (not yet validated).
    pub fn from_args(args: &VmmArgs) -> Self {
        VmConfig {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            vcpus: args.vcpus,
            memory_mib: args.memory,
            serial: args.serial.clone(),
            serial_max_bytes: args.serial_max_bytes,
            rng: !args.no_rng,
            vsock: args.vsock.clone().map(|host| VsockConfig {
                guest_cid: args.vsock_cid,
                host,
                guest_connect: args.vsock_guest_connect,
            }),
            fs: args.fs.iter().cloned().map(FsConfig::from).collect(),
            net: args.net.clone(),
        }
    }

    /// Check everything that can be checked before touching KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_VCPUS..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::VcpuCount(self.vcpus.into()));
        }
        validate_memory(self.memory_mib.into(), host_memory_mib())?;
        check_readable_file(&self.kernel).map_err(|why| ConfigError::Kernel {
            path: self.kernel.clone(),
            why,
        })?;
        if let Some(initrd) = &self.initrd {
            check_readable_file(initrd).map_err(|why| ConfigError::Initrd {
                path: initrd.clone(),
                why,
            })?;
        }
        if self.cmdline.contains(['\0', '\n']) {
            return Err(ConfigError::CmdlineBadChar);
        }
        // The VMM's own entries come later and are checked again when the line is built.
        if self.cmdline.len() + 1 > CMDLINE_MAX_LEN {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len() + 1,
                max: CMDLINE_MAX_LEN,
            });
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < MIN_GUEST_CID {
                return Err(ConfigError::VsockCid(v.guest_cid));
            }
        }
        for (i, net) in self.net.iter().enumerate() {
            net.validate().map_err(ConfigError::Net)?;
            // Two devices on one fd would close it twice; on one tap name, share a queue.
            if self
                .net
                .get(..i)
                .is_some_and(|before| before.iter().any(|other| other.backend == net.backend))
            {
                let what = match &net.backend {
                    TapBackend::Name(name) => format!("tap={name}"),
                    TapBackend::Fd(fd) => format!("fd={fd}"),
                };
                return Err(ConfigError::NetDuplicate(what));
            }
        }
        Ok(())
    }
}

/// Check a memory size against the fixed bounds and the host's RAM (when known).
pub fn validate_memory(mib: u64, host_mib: Option<u64>) -> Result<(), ConfigError> {
    if mib < u64::from(MIN_MEMORY_MIB) {
        return Err(ConfigError::MemoryTooSmall(mib));
    }
    if mib > u64::from(MAX_MEMORY_MIB) {
        return Err(ConfigError::MemoryTooLarge {
            asked: mib,
            limit: MAX_MEMORY_MIB.into(),
            why: "the VMM's maximum",
        });
    }
    if let Some(host) = host_mib {
        if mib > host {
            return Err(ConfigError::MemoryTooLarge {
                asked: mib,
                limit: host,
                why: "the host's total RAM",
            });
        }
    }
    Ok(())
}

fn host_memory_mib() -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page_size > 0).then(|| (pages as u64 * page_size as u64) >> 20)
}

fn check_readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() == 0 {
        return Err("file is empty".into());
    }
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    fn config(kernel: &Path) -> VmConfig {
        VmConfig {
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            vcpus: 1,
            memory_mib: 128,
            serial: SerialOutput::Stdout,
            serial_max_bytes: 0,
            rng: true,
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
        }
    }

    fn temp_kernel() -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().write_all(b"\x7fELF not really").unwrap();
        f
    }

    #[test]
    fn accepts_a_sane_config() {
        let k = temp_kernel();
        config(k.as_path()).validate().unwrap();
    }

    #[test]
    fn refuses_bad_vcpus_memory_and_files() {
        let k = temp_kernel();
        let mut c = config(k.as_path());
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::VcpuCount(0)));
        c.vcpus = MAX_VCPUS + 1;
        assert!(matches!(c.validate(), Err(ConfigError::VcpuCount(_))));

        assert_eq!(
            validate_memory(8, None),
            Err(ConfigError::MemoryTooSmall(8))
        );
        assert!(matches!(
            validate_memory(4096, Some(1024)),
            Err(ConfigError::MemoryTooLarge { limit: 1024, .. })
        ));
        assert!(validate_memory(u64::from(MAX_MEMORY_MIB) + 1, None).is_err());

        let mut c = config(Path::new("/nonexistent/vmlinux"));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vmlinux"), "{err}");
        c.kernel = PathBuf::from("/");
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }

    #[test]
    fn refuses_long_or_broken_cmdline() {
        let k = temp_kernel();
        let mut c = config(k.as_path());
        c.cmdline = "a".repeat(CMDLINE_MAX_LEN);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
        c.cmdline = "console=ttyS0\nroot=x".into();
        assert_eq!(c.validate(), Err(ConfigError::CmdlineBadChar));
    }

    #[test]
    fn refuses_the_same_tap_twice() {
        let k = temp_kernel();
        let mut c = config(k.as_path());
        c.net = vec!["tap=t0".parse().unwrap(), "fd=7".parse().unwrap()];
        c.validate().unwrap();
        c.net.push("fd=7,mac=02:00:00:00:00:01".parse().unwrap());
        assert_eq!(c.validate(), Err(ConfigError::NetDuplicate("fd=7".into())));
        c.net = vec!["tap=t0".parse().unwrap(), "tap=t0".parse().unwrap()];
        assert_eq!(
            c.validate(),
            Err(ConfigError::NetDuplicate("tap=t0".into()))
        );
        c.net = vec![NetSpec {
            backend: TapBackend::Fd(2),
            mac: None,
            mtu: None,
            vhost: false,
        }];
        assert!(matches!(c.validate(), Err(ConfigError::Net(_))));
    }
}
