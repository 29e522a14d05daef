//! The boot recipe: a straight list of steps, each logged with a timestamp and each returning
//! a typed error. [`build_microvm`] ends with the vCPUs running; [`MicroVm::wait`] runs the
//! event loop until the guest stops.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64 as arch;
use crate::device_manager::{DeviceManagerError, LegacyDevices, MmioSlots};
use crate::devices::legacy::{ConsoleOutput, SerialConsole, SerialInput};
use crate::devices::unix_fd::{self, Expect};
use crate::devices::virtio::fs::{Fs, FsConfig};
use crate::devices::virtio::net::{Net, Tap, VhostNet};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::unix::HostListener;
use crate::devices::virtio::vsock::Vsock;
use crate::event_loop::{run_until_exit, ExitMonitor, RunError};
use crate::exit_status::GuestExit;
use crate::kernel_loader::{self, LoadError};
use crate::metrics_report::{MetricsReport, ReportOnSignal};
use crate::seccomp::{self, Confinement, PrivilegeError, SeccompError, StartGate, ThreadFilter};
use crate::vmm_config::{
    ConfigError, HostSocket, NetSpec, SerialOutput, TapBackend, VmConfig, CMDLINE_MAX_LEN,
};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{self, Buses, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// Errors building and starting a microVM, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("KVM")]
    Vm(#[from] VmError),
    #[error("kernel or initramfs")]
    Load(#[from] LoadError),
    #[error("cannot open the serial output {path}")]
    SerialFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the console")]
    Console(#[source] std::io::Error),
    #[error("devices")]
    Devices(#[from] DeviceManagerError),
    #[error("cannot create the {0} device")]
    Device(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    #[error("cannot create the signalfd for SIGUSR1 metrics reports")]
    MetricsSignal(#[source] std::io::Error),
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error(
        "kernel command line is longer than {CMDLINE_MAX_LEN} bytes with the VMM's device entries"
    )]
    CmdlineTooLong,
    #[error("cannot write the kernel command line into guest memory")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    #[error("cannot write the boot parameters")]
    BootParams(#[source] arch::Error),
    #[error("vCPU set-up")]
    Vcpu(#[from] VcpuError),
    #[error("cannot create the vCPU event channel")]
    VcpuEvents(#[source] std::io::Error),
    #[error("cannot drop privileges")]
    Privileges(#[from] PrivilegeError),
    #[error("cannot confine the VMM's threads")]
    Seccomp(#[from] SeccompError),
}

/// Errors of a running microVM.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("cannot confine the main thread")]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// A booted microVM. Dropping it does not stop the vCPU threads: the VMM process ends after
/// [`MicroVm::wait`] returns.
pub struct MicroVm {
    // Kept alive for as long as the vCPUs run: KVM maps this memory.
    _mem: GuestMemoryMmap,
    _vm: Vm,
    _vcpu_threads: Vec<JoinHandle<()>>,
    subscribers: Vec<crate::event_loop::Subscriber>,
    monitor: Arc<Mutex<ExitMonitor>>,
    serial: Arc<Mutex<SerialConsole>>,
    // seccomp: applied by `wait` on the main thread before the event loop starts.
    main_filter: ThreadFilter,
    /// Each virtio device's counters, logged when the guest stops (and on SIGUSR1).
    metrics: Arc<MetricsReport>,
}

impl MicroVm {
    /// Feed `input` (normally stdin) to the guest's serial console.
    pub fn attach_console_input<R>(&mut self, input: R)
    where
        R: std::io::Read + std::os::fd::AsRawFd + Send + 'static,
    {
        let forwarder = SerialInput::new(input, self.serial.clone());
        self.subscribers.push(Arc::new(Mutex::new(forwarder)));
    }

    /// Confine the calling (main) thread with the main seccomp filter, then run the event loop
    /// until the guest stops; returns how it stopped.
    pub fn wait(self) -> Result<GuestExit, WaitError> {
        self.main_filter.apply()?;
        if self.main_filter.is_active() {
            log::info!("seccomp: main thread confined");
        }
        let result = run_until_exit(self.subscribers, self.monitor, &self.serial);
        self.metrics.log();
        Ok(result?)
    }
}

fn console_output(serial: &SerialOutput, max_bytes: u64) -> Result<ConsoleOutput, StartError> {
    let out: Option<Box<dyn Write + Send>> = match serial {
        SerialOutput::Stdout => Some(Box::new(std::io::stdout())),
        SerialOutput::Off => None,
        SerialOutput::File(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| StartError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        )),
    };
    Ok(ConsoleOutput::new(out)
        .map_err(StartError::Console)?
        .with_limit(max_bytes))
}

/// A virtio-net device on the tap `spec` names: opened by name, or the inherited fd (which
/// `main` kept open and `VmConfig::validate` made sure is named once). With `vhost=on`,
/// `/dev/vhost-net` is opened and owned here, before confinement, for guest memory `mem`.
fn open_net(spec: &NetSpec, mem: &GuestMemoryMmap) -> Result<Net, StartError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| StartError::Device("virtio-net", e);
    let tap = match &spec.backend {
        TapBackend::Name(name) => Tap::open(name),
        TapBackend::Fd(fd) => Tap::check_open(*fd).and_then(|()| {
            // SAFETY: the fd was inherited for this device (`--net fd=N`), kept open by
            // `close_inherited_fds`, and is named by one `--net` only; nothing else in the
            // process owns it, so the device may own (and close) it.
            Tap::from_fd(unsafe { OwnedFd::from_raw_fd(*fd) })
        }),
    }
    .map_err(|e| err(Box::new(e)))?;
    let offloads = tap.offloads();
    let vhost = if spec.vhost {
        let tap_file = tap.try_clone_file().map_err(|e| err(Box::new(e)))?;
        Some(VhostNet::open(mem, tap_file).map_err(|e| err(Box::new(e)))?)
    } else {
        None
    };
    let net =
        Net::new(Box::new(tap), offloads, spec.mac, spec.mtu).map_err(|e| err(Box::new(e)))?;
    Ok(match vhost {
        Some(vhost) => net.with_vhost(vhost),
        None => net,
    })
}

/// A virtio-fs device on virtiofsd's socket path, or on the inherited connection.
fn open_fs(config: &FsConfig) -> Result<Fs, StartError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| StartError::Device("virtio-fs", e);
    match &config.socket {
        HostSocket::Path(_) => Fs::new(config.clone()).map_err(|e| err(Box::new(e))),
        HostSocket::Fd(fd) => {
            // SAFETY: the fd was inherited for this device (`--fs TAG=fd=N`), kept open by
            // `close_inherited_fds`, and named by no other flag (`VmmArgs::check`).
            let owned =
                unsafe { unix_fd::take(*fd, Expect::Connected) }.map_err(|e| err(Box::new(e)))?;
            Fs::over_stream(config.clone(), UnixStream::from(owned)).map_err(|e| err(Box::new(e)))
        }
    }
}

/// Build the VM described by `config` and start its vCPUs, confined as `confinement` says:
/// privileges dropped before the vCPU threads start, each vCPU thread under the vCPU filter
/// from its first `KVM_RUN`, the main thread under the main filter from [`MicroVm::wait`].
pub fn build_microvm(config: &VmConfig, confinement: &Confinement) -> Result<MicroVm, StartError> {
    config.validate()?;

    // A vhost-user backend maps guest memory itself, so it must be a shared memfd then.
    let mem = if config.fs.is_empty() {
        memory::create_guest_memory(config.memory_mib)?
    } else {
        memory::create_shared_guest_memory(config.memory_mib)?
    };
    log::info!(
        "memory: {} MiB guest RAM mapped{}",
        config.memory_mib,
        if config.fs.is_empty() {
            ""
        } else {
            " (shared memfd)"
        }
    );

    let vm = Vm::new()?;
    vm.register_memory(&mem)?;
    vm.setup_irqchip()?;
    log::info!("kvm: VM created, irqchip and PIT ready");

    let kernel = kernel_loader::load_kernel(&mem, &config.kernel)?;
    log::info!(
        "kernel: {} loaded, entry {:#x} ({:?})",
        config.kernel.display(),
        kernel.entry.0,
        kernel.protocol
    );
    let initrd = match &config.initrd {
        Some(path) => {
            let initrd = kernel_loader::load_initrd(&mem, path, kernel.end)?;
            log::info!("initramfs: {} bytes at {:#x}", initrd.size, initrd.addr.0);
            Some(initrd)
        }
        None => None,
    };

    let mut buses = Buses::default();
    let console = console_output(&config.serial, config.serial_max_bytes)?;
    let console_metrics = console.metrics();
    let legacy = LegacyDevices::attach(&vm, &mut buses, console)?;
    let mut cmdline = Cmdline::new(CMDLINE_MAX_LEN).map_err(StartError::Cmdline)?;
    cmdline
        .insert_str(&config.cmdline)
        .map_err(|_| StartError::CmdlineTooLong)?;
    let mut slots = MmioSlots::new();
    let mut metrics = MetricsReport::new();
    metrics.add("serial", console_metrics);
    if config.rng {
        let rng = Rng::new().map_err(|e| StartError::Device("virtio-rng", Box::new(e)))?;
        metrics.add("virtio-rng", rng.metrics());
        slots.attach(
            &vm,
            &mem,
            &mut buses,
            &mut cmdline,
            "virtio-rng",
            Arc::new(Mutex::new(rng)),
        )?;
    }
    if let Some(v) = &config.vsock {
        let err = |e| StartError::Device("virtio-vsock", Box::new(e));
        let listener = match &v.host {
            HostSocket::Path(path) => HostListener::bind(path),
            // SAFETY: the fd was inherited for this listener (`--vsock fd=N`), kept open by
            // `close_inherited_fds`, and named by no other flag (`VmmArgs::check`).
            HostSocket::Fd(fd) => unsafe { HostListener::from_fd(*fd) },
        }
        .map_err(err)?;
        let vsock = Vsock::new(v.guest_cid, listener, v.guest_connect).map_err(err)?;
        metrics.add("virtio-vsock", vsock.metrics().clone());
        slots.attach(
            &vm,
            &mem,
            &mut buses,
            &mut cmdline,
            "virtio-vsock",
            Arc::new(Mutex::new(vsock)),
        )?;
    }
    let mut device_failures = Vec::new();
    for fs_config in &config.fs {
        let fs = open_fs(fs_config)?;
        device_failures.push(fs.failure());
        metrics.add(format!("virtio-fs {}", fs.tag()), fs.metrics());
        slots.attach(
            &vm,
            &mem,
            &mut buses,
            &mut cmdline,
            "virtio-fs",
            Arc::new(Mutex::new(fs)),
        )?;
    }
    for spec in &config.net {
        let net = open_net(spec, &mem)?;
        log::info!(
            "virtio-net: tap {} ({spec}), guest MAC {}, {}",
            net.tap_name(),
            net.mac(),
            if net.uses_vhost() {
                "vhost-net"
            } else {
                "userspace queues"
            }
        );
        metrics.add(format!("virtio-net {}", net.tap_name()), net.metrics());
        slots.attach(
            &vm,
            &mem,
            &mut buses,
            &mut cmdline,
            "virtio-net",
            Arc::new(Mutex::new(net)),
        )?;
    }
    log::info!("devices: serial, i8042 and virtio-mmio devices attached");
    let metrics = Arc::new(metrics);
    // Before confinement: creating the signalfd is not on any allow-list.
    let report_on_signal =
        ReportOnSignal::new(metrics.clone()).map_err(StartError::MetricsSignal)?;

    let cmdline_str = cmdline.as_cstring().map_err(StartError::Cmdline)?;
    let cmdline_addr = GuestAddress(arch::layout::CMDLINE_START);
    linux_loader::loader::load_cmdline(&mem, cmdline_addr, &cmdline)
        .map_err(StartError::CmdlineLoad)?;
    arch::configure_system(
        &mem,
        &arch::BootConfig {
            cmdline_addr,
            cmdline_size: cmdline_str.as_bytes_with_nul().len(),
            initrd: initrd.map(|i| (i.addr, i.size)),
            num_vcpus: config.vcpus,
            protocol: kernel.protocol,
            setup_header: kernel.setup_header,
        },
    )
    .map_err(StartError::BootParams)?;
    log::info!("boot: command line {:?}", cmdline_str);

    let buses = Arc::new(buses);
    let (events, receiver) = vcpu::vcpu_events().map_err(StartError::VcpuEvents)?;
    let mut vcpus = Vec::with_capacity(config.vcpus.into());
    for index in 0..config.vcpus {
        let vcpu = Vcpu::new(&vm, index)?;
        vcpu.configure(&vm, &mem, kernel.entry, kernel.protocol, config.vcpus)?;
        vcpus.push(vcpu);
    }
    let monitor = Arc::new(Mutex::new(ExitMonitor::new(
        legacy.reset_evt,
        receiver,
        legacy.console_watch,
        device_failures,
    )));
    // seccomp: everything is open; give up privileges before any thread runs guest code. The
    // vCPU threads start held by a gate, every thread then gets the process-wide filter at once,
    // and each vCPU thread adds its own filter before its first KVM_RUN.
    seccomp::privileges::drop_privileges(confinement.identity)?;
    let gate = StartGate::new();
    let mut threads = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let filter = confinement.filters.vcpu.gated(&gate);
        threads.push(vcpu.spawn(buses.clone(), events.clone(), filter)?);
    }
    gate.wait_for_arrivals(threads.len());
    let confined = confinement.filters.process.apply_all_threads();
    gate.open(confined.is_ok());
    confined?;
    log::info!(
        "confinement: capabilities dropped, no_new_privs set, seccomp {}",
        confinement.mode
    );
    log::info!("vcpus: {} started", config.vcpus);

    Ok(MicroVm {
        _mem: mem,
        _vm: vm,
        _vcpu_threads: threads,
        subscribers: {
            let mut subscribers = slots.take_subscribers();
            subscribers.push(Arc::new(Mutex::new(report_on_signal)));
            subscribers
        },
        monitor,
        serial: legacy.serial,
        main_filter: confinement.filters.main.clone(),
        metrics,
    })
}
