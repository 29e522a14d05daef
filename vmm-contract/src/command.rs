//! [`VmmCommand`]: the VMM's command line built from typed fields. The host launches the VMM
//! with [`VmmCommand::args`]; the tests below parse that output with [`VmmArgs`], the VMM's
//! own definition, so the two cannot drift apart.

use std::ffi::OsString;
use std::path::PathBuf;

#[cfg(doc)]
use crate::args::VmmArgs;
use crate::args::{FsSpec, SeccompMode, SerialOutput};
use crate::net::NetSpec;
use crate::socket::HostSocket;

/// The hybrid vsock device: the host unix socket, the guest's CID, and whether the guest may
/// connect to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The listener host clients connect to (`--vsock UDS_PATH` or `--vsock fd=N`, an
    /// inherited listening unix stream socket).
    pub host: HostSocket,
    /// The guest's context ID (`--vsock-cid`, 3 or more).
    pub cid: u64,
    /// `--vsock-guest-connect`: guest connections to host port P go to `UDS_PATH_P`. Needs
    /// a path; off, the VMM answers them with a reset.
    pub guest_connect: bool,
}

impl VsockSpec {
    /// A listener the VMM binds at `path`; no guest-initiated connections.
    pub fn on_path(path: impl Into<PathBuf>, cid: u64) -> Self {
        VsockSpec {
            host: HostSocket::Path(path.into()),
            cid,
            guest_connect: false,
        }
    }

    /// An inherited listening socket at descriptor `fd` (no guest-initiated connections).
    pub fn on_fd(fd: i32, cid: u64) -> Self {
        VsockSpec {
            host: HostSocket::Fd(fd),
            cid,
            guest_connect: false,
        }
    }
}

/// One VMM invocation. `None` and the defaults leave the VMM's own default in place (the
/// flag is not written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmCommand {
    /// Guest kernel (`--kernel`).
    pub kernel: PathBuf,
    /// Initramfs (`--initrd`).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (`--cmdline`); `None` keeps [`crate::limits::DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    /// `--vcpus`.
    pub vcpus: u8,
    /// `--memory`, in MiB.
    pub memory_mib: u32,
    /// `--serial`.
    pub serial: SerialOutput,
    /// `--serial-max-bytes`: console bytes written at most, 0 for no limit (the flag is
    /// written only when not 0).
    pub serial_max_bytes: u64,
    /// Whether the guest gets a virtio-rng device (`--no-rng` when not).
    pub rng: bool,
    /// `--vsock`, `--vsock-cid` and `--vsock-guest-connect`. An `fd=N` listener must be
    /// open in the VMM process at N.
    pub vsock: Option<VsockSpec>,
    /// `--fs`, once per device. An `fd=N` connection must be open in the VMM process at N.
    pub fs: Vec<FsSpec>,
    /// `--net`, once per virtio-net device. An `fd=N` backend must be open in the VMM
    /// process at N (the launcher passes it down without `FD_CLOEXEC`).
    pub net: Vec<NetSpec>,
    /// `--seccomp`; `None` keeps the VMM's default (strict).
    pub seccomp: Option<SeccompMode>,
    /// `--uid`.
    pub uid: Option<u32>,
    /// `--gid`.
    pub gid: Option<u32>,
    /// `--log-level`; `None` keeps the VMM's default (or its `BULKHEAD_VMM_LOG`).
    pub log_level: Option<log::LevelFilter>,
    /// `--log-format`; `None` keeps the VMM's default (or its `BULKHEAD_LOG_FORMAT`).
    pub log_format: Option<bulkhead_log::Format>,
}

impl VmmCommand {
    /// A command for `kernel` with the VMM's defaults: 1 vCPU, 128 MiB, console on stdout,
    /// virtio-rng, no vsock, no virtio-fs, no network.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmmCommand {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            vcpus: 1,
            memory_mib: 128,
            serial: SerialOutput::Stdout,
            serial_max_bytes: 0,
            rng: true,
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            seccomp: None,
            uid: None,
            gid: None,
            log_level: None,
            log_format: None,
        }
    }

    /// The VMM's arguments (without the binary).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--kernel", self.kernel.clone().into());
        if let Some(initrd) = &self.initrd {
            push("--initrd", initrd.clone().into());
        }
        if let Some(cmdline) = &self.cmdline {
            push("--cmdline", cmdline.into());
        }
        push("--vcpus", self.vcpus.to_string().into());
        push("--memory", self.memory_mib.to_string().into());
        push("--serial", self.serial.to_arg());
        if self.serial_max_bytes != 0 {
            push(
                "--serial-max-bytes",
                self.serial_max_bytes.to_string().into(),
            );
        }
        if let Some(vsock) = &self.vsock {
            push("--vsock", vsock.host.to_arg());
            push("--vsock-cid", vsock.cid.to_string().into());
        }
        for fs in &self.fs {
            push("--fs", fs.to_arg());
        }
        for net in &self.net {
            push("--net", net.to_string().into());
        }
        if let Some(mode) = self.seccomp {
            push("--seccomp", mode.to_string().into());
        }
        if let Some(uid) = self.uid {
            push("--uid", uid.to_string().into());
        }
        if let Some(gid) = self.gid {
            push("--gid", gid.to_string().into());
        }
        if let Some(level) = self.log_level {
            push("--log-level", level.as_str().to_ascii_lowercase().into());
        }
        if let Some(format) = self.log_format {
            push("--log-format", format.as_str().into());
        }
        if !self.rng {
            args.push("--no-rng".into());
        }
        if self.vsock.as_ref().is_some_and(|v| v.guest_connect) {
            args.push("--vsock-guest-connect".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::VmmArgs;
    use crate::limits::DEFAULT_CMDLINE;
    use clap::Parser;

    /// Parse `cmd`'s output with the VMM's own definition and check every field.
    fn round_trip(cmd: &VmmCommand) -> VmmArgs {
        let argv = std::iter::once(OsString::from("bulkhead-vmm")).chain(cmd.args());
        let parsed = VmmArgs::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}\n{cmd:?}"));
        parsed.check().unwrap_or_else(|e| panic!("{e}\n{cmd:?}"));
        assert_eq!(parsed.kernel, cmd.kernel);
        assert_eq!(parsed.initrd, cmd.initrd);
        assert_eq!(
            parsed.cmdline,
            cmd.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
        );
        assert_eq!(parsed.vcpus, cmd.vcpus);
        assert_eq!(parsed.memory, cmd.memory_mib);
        assert_eq!(parsed.serial, cmd.serial);
        assert_eq!(parsed.serial_max_bytes, cmd.serial_max_bytes);
        assert_eq!(parsed.no_rng, !cmd.rng);
        assert_eq!(parsed.vsock, cmd.vsock.as_ref().map(|v| v.host.clone()));
        assert_eq!(
            parsed.vsock_guest_connect,
            cmd.vsock.as_ref().is_some_and(|v| v.guest_connect)
        );
        assert_eq!(parsed.vsock_cid, cmd.vsock.as_ref().map_or(3, |v| v.cid));
        assert_eq!(parsed.fs, cmd.fs);
        assert_eq!(parsed.net, cmd.net);
        assert_eq!(parsed.seccomp, cmd.seccomp.unwrap_or_default());
        assert_eq!(parsed.uid, cmd.uid);
        assert_eq!(parsed.gid, cmd.gid);
        if let Some(level) = cmd.log_level {
            assert_eq!(parsed.log_level, level);
        }
        assert_eq!(parsed.log_format, cmd.log_format);
        parsed
    }

    /// `cmd`'s arguments as one line.
    fn line(cmd: &VmmCommand) -> String {
        let args: Vec<String> = cmd
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        args.join(" ")
    }

    fn fs(tag: &str, socket: &str) -> FsSpec {
        FsSpec::new(tag, socket).unwrap()
    }

    #[test]
    fn defaults_round_trip() {
        let cmd = VmmCommand::new("/k/vmlinux");
        round_trip(&cmd);
        assert_eq!(
            line(&cmd),
            "--kernel /k/vmlinux --vcpus 1 --memory 128 --serial stdout"
        );
    }

    #[test]
    fn a_sandbox_command_round_trips() {
        let cmd = VmmCommand {
            initrd: Some("/k/initrd.img".into()),
            vcpus: 2,
            memory_mib: 384,
            serial: SerialOutput::File("/run/bulkhead/p/console.log".into()),
            vsock: Some(VsockSpec::on_path("/run/bulkhead/p/vsock.sock", 3)),
            fs: vec![fs("bulkhead", "/run/bulkhead/p/fs.sock")],
            ..VmmCommand::new("/k/vmlinux")
        };
        round_trip(&cmd);
        assert_eq!(
            line(&cmd),
            "--kernel /k/vmlinux --initrd /k/initrd.img --vcpus 2 --memory 384 \
             --serial file:/run/bulkhead/p/console.log --vsock /run/bulkhead/p/vsock.sock \
             --vsock-cid 3 --fs bulkhead=/run/bulkhead/p/fs.sock"
        );
    }

    #[test]
    fn every_field_round_trips() {
        let cmd = VmmCommand {
            kernel: "/path with spaces/vmlinux".into(),
            initrd: None,
            cmdline: Some("console=ttyS0 quiet init=/sbin/my init".into()),
            vcpus: crate::limits::MAX_VCPUS,
            memory_mib: crate::limits::MAX_MEMORY_MIB,
            serial: SerialOutput::Off,
            rng: false,
            vsock: Some(VsockSpec {
                guest_connect: true,
                ..VsockSpec::on_path("/tmp/a dir/v.sock", u64::from(u32::MAX) + 7)
            }),
            serial_max_bytes: u64::MAX,
            fs: vec![
                fs("rootfs", "/run/b/p/fs 1.sock"),
                fs("data", "/run/b/p/fs=2.sock"),
                fs(&"t".repeat(crate::limits::FS_TAG_MAX_LEN), "/s"),
            ],
            net: vec![
                "tap=bh0".parse().unwrap(),
                "fd=9,mac=02:42:0a:58:00:05,mtu=9000".parse().unwrap(),
                "tap=t1,mtu=68".parse().unwrap(),
                "tap=t2,vhost=on".parse().unwrap(),
            ],
            seccomp: Some(SeccompMode::Log),
            uid: Some(1000),
            gid: Some(0),
            log_level: Some(log::LevelFilter::Trace),
            log_format: Some(bulkhead_log::Format::Json),
        };
        let parsed = round_trip(&cmd);
        assert_eq!(parsed.fs.len(), 3);
        assert_eq!(parsed.net.len(), 4);
        assert!(parsed.net[3].vhost);
        for seccomp in [SeccompMode::Strict, SeccompMode::Off] {
            for level in [log::LevelFilter::Off, log::LevelFilter::Warn] {
                round_trip(&VmmCommand {
                    seccomp: Some(seccomp),
                    log_level: Some(level),
                    log_format: Some(bulkhead_log::Format::Text),
                    serial: SerialOutput::File("/var/log/console with space.log".into()),
                    ..cmd.clone()
                });
            }
        }
    }

    #[test]
    fn a_jailed_sandbox_command_passes_every_socket_as_a_descriptor() {
        let cmd = VmmCommand {
            serial_max_bytes: 16 << 20,
            vsock: Some(VsockSpec::on_fd(5, 3)),
            fs: vec![FsSpec::on_fd("bulkhead", 4)],
            net: vec!["fd=3,mac=02:42:0a:58:00:05".parse().unwrap()],
            ..VmmCommand::new("/kernel")
        };
        let parsed = round_trip(&cmd);
        assert_eq!(parsed.inherited_fds(), vec![3, 5, 4]);
        assert_eq!(
            line(&cmd),
            "--kernel /kernel --vcpus 1 --memory 128 --serial stdout \
             --serial-max-bytes 16777216 --vsock fd=5 --vsock-cid 3 --fs bulkhead=fd=4 \
             --net fd=3,mac=02:42:0a:58:00:05"
        );
        // Guest-initiated connections need a path: the VMM refuses this command line.
        let bad = VmmCommand {
            vsock: Some(VsockSpec {
                guest_connect: true,
                ..VsockSpec::on_fd(5, 3)
            }),
            ..cmd
        };
        let parsed = VmmArgs::try_parse_from(
            std::iter::once(OsString::from("bulkhead-vmm")).chain(bad.args()),
        )
        .unwrap();
        assert!(parsed.check().is_err());
    }

    #[test]
    fn non_utf8_paths_pass_through_unchanged() {
        use std::os::unix::ffi::OsStringExt;
        let kernel = PathBuf::from(OsString::from_vec(b"/k/vm\xfflinux".to_vec()));
        let cmd = VmmCommand::new(kernel.clone());
        let parsed =
            VmmArgs::try_parse_from(std::iter::once(OsString::from("vmm")).chain(cmd.args()))
                .unwrap();
        assert_eq!(parsed.kernel, kernel);
    }
}
