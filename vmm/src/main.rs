//! `bulkhead-vmm`: parse flags, set up logging, boot the microVM, exit with a status that says
//! how it ended (see `exit_status`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bulkhead_vmm::builder::build_microvm;
use bulkhead_vmm::devices::virtio::fs::FsConfig;
use bulkhead_vmm::exit_status::STATUS_VMM_ERROR;
use bulkhead_vmm::seccomp::{privileges, Confinement, Identity, SeccompMode};
use bulkhead_vmm::vmm_config::{SerialOutput, VmConfig, VsockConfig, DEFAULT_CMDLINE};
use clap::Parser;

/// Boot a Linux guest in a KVM microVM.
#[derive(Parser, Debug)]
#[command(name = "bulkhead-vmm", version, about, long_about = None)]
#[command(
    after_help = "Exit status: 0 guest rebooted or powered off, 1 VMM error, \
3 guest kernel panic or crash, 159 forbidden syscall (seccomp)."
)]
struct Args {
    /// Guest kernel: ELF vmlinux (booted by PVH) or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (newc cpio, optionally compressed as the kernel supports).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line; the VMM appends its virtio-mmio device entries.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// Serial console: stdout, off, or file:PATH.
    #[arg(long, default_value = "stdout")]
    serial: SerialOutput,
    /// Leave out the virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// Hybrid vsock: host unix socket path; guest connections to host port P go to PATH_P.
    #[arg(long, value_name = "UDS_PATH")]
    vsock: Option<PathBuf>,
    /// virtio-fs device: mount tag and the vhost-user socket of its virtiofsd (repeatable).
    #[arg(long, value_name = "TAG=SOCKET")]
    fs: Vec<FsConfig>,
    /// Guest CID for the vsock device.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
    /// Seccomp per thread after set-up: strict (a syscall off the allow-list ends the VMM with
    /// status 159), log (allowed, logged by the kernel: find missing syscalls in dmesg), off.
    #[arg(long, default_value = "strict")]
    seccomp: SeccompMode,
    /// After set-up, switch to this user ID (run as root to use it).
    #[arg(long)]
    uid: Option<u32>,
    /// After set-up, switch to this group ID and drop supplementary groups.
    #[arg(long)]
    gid: Option<u32>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", env = "BULKHEAD_VMM_LOG", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    // seccomp/confinement: nothing the VMM did not open itself stays reachable.
    let closed = privileges::close_inherited_fds();
    let args = Args::parse();
    bulkhead_vmm::logger::init(args.log_level);
    if let Err(e) = closed {
        log::error!("cannot close inherited file descriptors: {e}");
        return ExitCode::from(STATUS_VMM_ERROR as u8);
    }
    match run(args) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            log::error!("{}", error_chain(&e));
            ExitCode::from(STATUS_VMM_ERROR as u8)
        }
    }
}

fn run(args: Args) -> anyhow::Result<i32> {
    let vsock_path = args.vsock.clone();
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        serial: args.serial,
        rng: !args.no_rng,
        vsock: args.vsock.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
        fs: args.fs,
    };
    let identity = Identity {
        uid: args.uid,
        gid: args.gid,
    };
    let confinement =
        Confinement::compile(args.seccomp, identity).context("cannot build the seccomp filters")?;
    let mut vm = build_microvm(&config, &confinement).context("cannot start the microVM")?;
    // On a terminal, keys go to the guest unprocessed (Ctrl-C included), as on a serial line.
    let _raw = (config.serial == SerialOutput::Stdout).then(|| {
        vm.attach_console_input(std::io::stdin());
        RawTerminal::enter()
    });
    let result = vm.wait().context("the microVM failed");
    if let Some(path) = vsock_path {
        let _ = std::fs::remove_file(path);
    }
    let how = result?;
    Ok(how.status())
}

/// Puts a terminal stdin in raw mode and restores it when dropped.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> Self {
        let fd = libc::STDIN_FILENO;
        // SAFETY: isatty/tcgetattr/tcsetattr only read and write the termios struct we own.
        unsafe {
            if libc::isatty(fd) != 1 {
                return RawTerminal(None);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return RawTerminal(None);
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return RawTerminal(None);
            }
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not one of off, error, warn, info, debug, trace"))
}

/// "a: b: c" from an error and its sources, printed once at the edge.
fn error_chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
