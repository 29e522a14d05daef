//! The VMM's command line: [`VmmArgs`] (what `bulkhead-vmm --help` shows) and the value types
//! of its flags. The VMM parses it; the host builds it with [`crate::VmmCommand`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use crate::exit::EXIT_STATUS_HELP;
use crate::limits::{DEFAULT_CMDLINE, FS_TAG_MAX_LEN};
use crate::net::NetSpec;
use crate::socket::{HostSocket, HostSocketError};

/// What `bulkhead-vmm --help` says the binary is.
pub const ABOUT: &str =
    "Bulkhead's microVM monitor: KVM VM, vCPUs, Linux boot, serial and virtio-mmio devices";

/// Boot a Linux guest in a KVM microVM.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(name = "bulkhead-vmm", version, about = ABOUT, long_about = None)]
#[command(after_help = EXIT_STATUS_HELP)]
pub struct VmmArgs {
    /// Guest kernel: ELF vmlinux (booted by PVH) or bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs (newc cpio, optionally compressed as the kernel supports).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; the VMM appends its virtio-mmio device entries.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Serial console: stdout, off, or file:PATH.
    #[arg(long, default_value = "stdout")]
    pub serial: SerialOutput,
    /// Most bytes of guest console output written; past them one line says the console was
    /// capped and the rest is dropped (counted in the metrics). 0: no limit.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub serial_max_bytes: u64,
    /// Leave out the virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,
    /// Hybrid vsock: the unix socket host clients connect to (`CONNECT <port>` handshake): a
    /// path the VMM binds (a stale socket file there is replaced; it is not removed at the
    /// end), or fd=N, an inherited listening unix stream socket.
    #[arg(long, value_name = "UDS_PATH|fd=N")]
    pub vsock: Option<HostSocket>,
    /// Let the guest connect to host port P: the VMM connects to UDS_PATH_P (needs a --vsock
    /// path). Without it such a request is answered with a reset.
    #[arg(long, requires = "vsock")]
    pub vsock_guest_connect: bool,
    /// virtio-fs device: mount tag and the vhost-user socket of its virtiofsd, a path or
    /// fd=N, an inherited connected unix stream socket (repeatable).
    #[arg(long, value_name = "TAG=SOCKET|TAG=fd=N")]
    pub fs: Vec<FsSpec>,
    /// virtio-net device on a tap (repeatable): tap=NAME opens /dev/net/tun and attaches the
    /// tap NAME (needs CAP_NET_ADMIN to create it); fd=N uses an inherited fd already attached
    /// to a tap with IFF_VNET_HDR. mac= sets the guest NIC's address (default: random, locally
    /// administered), mtu= the MTU the guest is told. vhost=on has the kernel's vhost-net move
    /// the frames (needs /dev/vhost-net, module vhost_net); off (default): the VMM does.
    #[arg(long, value_name = "tap=NAME|fd=N[,mac=MAC][,mtu=N][,vhost=on|off]")]
    pub net: Vec<NetSpec>,
    /// Guest CID for the vsock device.
    #[arg(long, default_value_t = 3)]
    pub vsock_cid: u64,
    /// Seccomp per thread after set-up: strict (a syscall off the allow-list ends the VMM with
    /// status 159), log (allowed, logged by the kernel: find missing syscalls in dmesg), off.
    #[arg(long, default_value = "strict")]
    pub seccomp: SeccompMode,
    /// After set-up, switch to this user ID (run as root to use it).
    #[arg(long)]
    pub uid: Option<u32>,
    /// After set-up, switch to this group ID and drop supplementary groups.
    #[arg(long)]
    pub gid: Option<u32>,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "info", env = "BULKHEAD_VMM_LOG", value_parser = parse_log_level)]
    pub log_level: log::LevelFilter,
    /// Log format: text (human-readable) or json (one object per line); without the flag,
    /// BULKHEAD_LOG_FORMAT, else text.
    #[arg(long)]
    pub log_format: Option<bulkhead_log::Format>,
}

impl VmmArgs {
    /// The file descriptors the VMM inherits on purpose: the taps of `--net fd=N`, the vsock
    /// listener of `--vsock fd=N` and the vhost-user connections of `--fs TAG=fd=N`. Every
    /// other inherited descriptor is closed at start.
    pub fn inherited_fds(&self) -> Vec<i32> {
        let taps = self.net.iter().filter_map(|n| match n.backend {
            crate::net::TapBackend::Fd(fd) => Some(fd),
            crate::net::TapBackend::Name(_) => None,
        });
        let vsock = self.vsock.iter().filter_map(HostSocket::fd);
        let fs = self.fs.iter().filter_map(|f| f.socket.fd());
        taps.chain(vsock).chain(fs).collect()
    }

    /// What clap cannot check: `--vsock-guest-connect` needs a `--vsock` path (the sockets it
    /// connects to are named after it), and each inherited descriptor has one owner. The VMM
    /// refuses its command line (status 2) when this fails.
    pub fn check(&self) -> Result<(), ArgsError> {
        if self.vsock_guest_connect && matches!(self.vsock, Some(HostSocket::Fd(_))) {
            return Err(ArgsError::GuestConnectWithoutPath);
        }
        let mut fds = self.inherited_fds();
        fds.sort_unstable();
        if let Some(pair) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(ArgsError::FdTwice(pair[0]));
        }
        Ok(())
    }
}

/// Flag combinations the VMM refuses ([`VmmArgs::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error(
        "--vsock-guest-connect needs a --vsock path (UDS_PATH_P is where port P goes), not fd=N"
    )]
    GuestConnectWithoutPath,
    #[error("inherited fd {0} is named twice (--net, --vsock, --fs: one device per descriptor)")]
    FdTwice(i32),
}

/// A flag value that is not one of the accepted words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not one of {expected}")]
pub struct ParseValueError {
    /// What was given.
    pub value: String,
    /// The accepted forms.
    pub expected: &'static str,
}

/// `--log-level`: a `log` level name.
pub fn parse_log_level(s: &str) -> Result<log::LevelFilter, ParseValueError> {
    s.parse().map_err(|_| ParseValueError {
        value: s.to_owned(),
        expected: "off, error, warn, info, debug, trace",
    })
}

/// `--serial`: where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file (`file:PATH`).
    File(PathBuf),
    /// Dropped (`off`, or `none`).
    Off,
}

impl FromStr for SerialOutput {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(SerialOutput::Stdout),
            "off" | "none" => Ok(SerialOutput::Off),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
                _ => Err(ParseValueError {
                    value: s.to_owned(),
                    expected: "stdout, off, file:PATH",
                }),
            },
        }
    }
}

impl SerialOutput {
    /// The flag value (`file:` followed by the path, which may be any bytes).
    pub fn to_arg(&self) -> std::ffi::OsString {
        match self {
            SerialOutput::Stdout => "stdout".into(),
            SerialOutput::Off => "off".into(),
            SerialOutput::File(path) => {
                let mut arg = std::ffi::OsString::from("file:");
                arg.push(path);
                arg
            }
        }
    }
}

/// `--seccomp`: how strictly the VMM's per-thread allow-lists are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// A syscall not on the list ends the VMM (status 159, after the SIGSYS reporter names it).
    #[default]
    Strict,
    /// A syscall not on the list runs and is logged by the kernel (for finding missing ones).
    Log,
    /// No filter.
    Off,
}

impl FromStr for SeccompMode {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(SeccompMode::Strict),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(ParseValueError {
                value: s.to_owned(),
                expected: "strict, log, off",
            }),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Strict => "strict",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// Errors in a `--fs TAG=SOCKET` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsSpecError {
    #[error("virtio-fs device must be given as TAG=SOCKET, got {0:?}")]
    Syntax(String),
    #[error("virtio-fs tag is empty")]
    EmptyTag,
    #[error("virtio-fs tag {tag:?} is {len} bytes long, at most {FS_TAG_MAX_LEN} are allowed")]
    TagTooLong { tag: String, len: usize },
    #[error("virtio-fs tag {0:?} contains a NUL byte")]
    TagNul(String),
    #[error("virtio-fs tag {0:?} contains '='")]
    TagEquals(String),
    #[error("virtio-fs socket")]
    Socket(#[from] HostSocketError),
}

/// `--fs TAG=SOCKET` or `--fs TAG=fd=N`: one virtio-fs device, the tag the guest mounts
/// (`mount -t virtiofs TAG /mnt`) and the vhost-user socket of the virtiofsd serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpec {
    /// Mount tag, 1 to [`FS_TAG_MAX_LEN`] bytes of UTF-8 without NUL or `=`.
    pub tag: String,
    /// virtiofsd's listening vhost-user socket (the VMM connects), or an inherited
    /// descriptor already connected to it.
    pub socket: HostSocket,
}

impl FsSpec {
    /// A checked spec on a socket path.
    pub fn new(tag: &str, socket: impl Into<PathBuf>) -> Result<Self, FsSpecError> {
        let spec = FsSpec {
            tag: tag.to_owned(),
            socket: HostSocket::Path(socket.into()),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// A spec on an inherited connected descriptor (`TAG=fd=N`); checked by
    /// [`FsSpec::validate`] and by the VMM.
    pub fn on_fd(tag: &str, fd: i32) -> Self {
        FsSpec {
            tag: tag.to_owned(),
            socket: HostSocket::Fd(fd),
        }
    }

    /// Check the tag and the socket.
    pub fn validate(&self) -> Result<(), FsSpecError> {
        validate_tag(&self.tag)?;
        self.socket.validate()?;
        Ok(())
    }

    /// The flag value `TAG=SOCKET` or `TAG=fd=N`.
    pub fn to_arg(&self) -> std::ffi::OsString {
        let mut arg = std::ffi::OsString::from(&self.tag);
        arg.push("=");
        arg.push(self.socket.to_arg());
        arg
    }
}

/// Check a virtio-fs tag: 1 to [`FS_TAG_MAX_LEN`] bytes, no NUL, no `=` (it ends the tag in
/// `TAG=SOCKET`).
pub fn validate_tag(tag: &str) -> Result<(), FsSpecError> {
    if tag.is_empty() {
        return Err(FsSpecError::EmptyTag);
    }
    if tag.len() > FS_TAG_MAX_LEN {
        return Err(FsSpecError::TagTooLong {
            tag: tag.to_owned(),
            len: tag.len(),
        });
    }
    if tag.contains('\0') {
        return Err(FsSpecError::TagNul(tag.to_owned()));
    }
    if tag.contains('=') {
        return Err(FsSpecError::TagEquals(tag.to_owned()));
    }
    Ok(())
}

/// Parses `TAG=SOCKET` (the socket path may itself contain `=`) and `TAG=fd=N`.
impl FromStr for FsSpec {
    type Err = FsSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tag, socket) = s
            .split_once('=')
            .ok_or_else(|| FsSpecError::Syntax(s.to_owned()))?;
        let spec = FsSpec {
            tag: tag.to_owned(),
            socket: socket.parse()?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        VmmArgs::command().debug_assert();
        let help = VmmArgs::command().render_help().to_string();
        assert!(help.starts_with(ABOUT), "{help}");
        assert!(help.contains("159 forbidden syscall"), "{help}");
        assert!(help.contains("--fs <TAG=SOCKET|TAG=fd=N>"), "{help}");
        assert!(help.contains("--vsock <UDS_PATH|fd=N>"), "{help}");
        assert!(
            help.contains("--net <tap=NAME|fd=N[,mac=MAC][,mtu=N][,vhost=on|off]>"),
            "{help}"
        );
    }

    #[test]
    fn parses_serial_targets() {
        assert_eq!("stdout".parse::<SerialOutput>(), Ok(SerialOutput::Stdout));
        assert_eq!("none".parse::<SerialOutput>(), Ok(SerialOutput::Off));
        assert_eq!(
            "file:/tmp/x".parse::<SerialOutput>(),
            Ok(SerialOutput::File("/tmp/x".into()))
        );
        assert!("file:".parse::<SerialOutput>().is_err());
        let err = "tty".parse::<SerialOutput>().unwrap_err().to_string();
        assert!(err.contains("file:PATH"), "{err}");
    }

    #[test]
    fn seccomp_mode_names_round_trip() {
        for m in [SeccompMode::Strict, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(m.to_string().parse::<SeccompMode>(), Ok(m));
        }
        assert!("kill".parse::<SeccompMode>().is_err());
        assert_eq!(SeccompMode::default(), SeccompMode::Strict);
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_log_level("debug"), Ok(log::LevelFilter::Debug));
        assert_eq!(parse_log_level("off"), Ok(log::LevelFilter::Off));
        assert!(parse_log_level("loud").is_err());
    }

    #[test]
    fn parses_fs_specs() {
        let c: FsSpec = "rootfs=/run/bulkhead/vfs=1.sock".parse().unwrap();
        assert_eq!(c.tag, "rootfs");
        assert_eq!(
            c.socket,
            HostSocket::Path(PathBuf::from("/run/bulkhead/vfs=1.sock"))
        );
        assert_eq!(c.to_arg(), "rootfs=/run/bulkhead/vfs=1.sock");
        assert!(matches!(
            "rootfs".parse::<FsSpec>(),
            Err(FsSpecError::Syntax(_))
        ));
        assert_eq!("=/tmp/s".parse::<FsSpec>(), Err(FsSpecError::EmptyTag));
        assert_eq!(
            "t=".parse::<FsSpec>(),
            Err(FsSpecError::Socket(HostSocketError::Empty))
        );
        let f: FsSpec = "data=fd=5".parse().unwrap();
        assert_eq!(f, FsSpec::on_fd("data", 5));
        assert_eq!(f.to_arg(), "data=fd=5");
        assert!(matches!(
            "data=fd=1".parse::<FsSpec>(),
            Err(FsSpecError::Socket(HostSocketError::Fd(_)))
        ));
        assert!(FsSpec::on_fd("a=b", 5).validate().is_err());
        let long = "x".repeat(FS_TAG_MAX_LEN + 1);
        assert!(matches!(
            format!("{long}=/s").parse::<FsSpec>(),
            Err(FsSpecError::TagTooLong { len: 37, .. })
        ));
        // Counted in bytes, not chars.
        assert!(format!("{}=/s", "x".repeat(FS_TAG_MAX_LEN))
            .parse::<FsSpec>()
            .is_ok());
        assert!(matches!(
            format!("{}=/s", "é".repeat(19)).parse::<FsSpec>(),
            Err(FsSpecError::TagTooLong { len: 38, .. })
        ));
        assert!(matches!(
            "a\0b=/s".parse::<FsSpec>(),
            Err(FsSpecError::TagNul(_))
        ));
        assert!(matches!(
            FsSpec::new("a=b", "/s"),
            Err(FsSpecError::TagEquals(_))
        ));
    }

    fn parse(args: &[&str]) -> Result<VmmArgs, clap::Error> {
        VmmArgs::try_parse_from(["bulkhead-vmm", "--kernel", "/k"].iter().chain(args))
    }

    #[test]
    fn vsock_takes_a_path_or_a_descriptor_and_guest_connect_needs_a_path() {
        let a = parse(&["--vsock", "fd=4", "--fs", "t=fd=5", "--net", "fd=6"]).unwrap();
        assert_eq!(a.vsock, Some(HostSocket::Fd(4)));
        assert_eq!(a.inherited_fds(), vec![6, 4, 5]);
        assert!(!a.vsock_guest_connect);
        a.check().unwrap();

        let a = parse(&["--vsock", "fd=4", "--vsock-guest-connect"]).unwrap();
        assert_eq!(a.check(), Err(ArgsError::GuestConnectWithoutPath));
        let a = parse(&["--vsock", "/r/v.sock", "--vsock-guest-connect"]).unwrap();
        a.check().unwrap();
        assert!(a.inherited_fds().is_empty());
        assert!(
            parse(&["--vsock-guest-connect"]).is_err(),
            "guest connect without vsock"
        );
        assert!(parse(&["--vsock", "fd=1"]).is_err());

        let a = parse(&["--vsock", "fd=4", "--fs", "t=fd=4"]).unwrap();
        assert_eq!(a.check(), Err(ArgsError::FdTwice(4)));
    }

    #[test]
    fn serial_cap_defaults_to_unlimited() {
        assert_eq!(parse(&[]).unwrap().serial_max_bytes, 0);
        assert_eq!(
            parse(&["--serial-max-bytes", "16777216"])
                .unwrap()
                .serial_max_bytes,
            16 << 20
        );
        assert!(parse(&["--serial-max-bytes", "-1"]).is_err());
    }
}
