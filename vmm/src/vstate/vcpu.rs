//! vCPUs: creation, boot-time register set-up, and the run loop on its own thread.
//!
//! KVM exit handling is a plain function over the exit ([`handle_exit`]) that returns what to
//! do next, so it is testable with synthetic exits. A vCPU thread reports how it stopped to
//! the event loop through [`VcpuEvents`] (a channel plus an eventfd the loop watches).

use std::sync::{mpsc, Arc};
use std::thread;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::vm::Vm;
use crate::arch::x86_64 as arch;
use crate::devices::bus::Bus;
use crate::exit_status::GuestExit;
use crate::seccomp::ThreadFilter;

/// KVM_SYSTEM_EVENT_* values (include/uapi/linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}")]
    Create {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot configure vCPU {index}")]
    Configure {
        index: u8,
        #[source]
        source: arch::Error,
    },
    #[error("cannot start the thread for vCPU {index}")]
    Spawn {
        index: u8,
        #[source]
        source: std::io::Error,
    },
}

/// The port I/O and MMIO buses a vCPU routes its exits to.
#[derive(Clone, Default)]
pub struct Buses {
    /// Port I/O (serial, i8042).
    pub io: Bus,
    /// MMIO (virtio-mmio transports).
    pub mmio: Bus,
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the guest again.
    Continue,
    /// The guest stopped.
    Stop(GuestExit),
    /// KVM could not run the guest.
    Fail(String),
}

/// Route one KVM exit. Unhandled port and MMIO accesses are answered (reads with zeroes) and
/// the guest goes on, so probes of absent hardware (RTC, other UARTs) never stall a boot.
pub fn handle_exit(exit: VcpuExit<'_>, buses: &Buses) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.io.read(port.into(), data) {
                log::trace!("unhandled port read {port:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.io.write(port.into(), data) {
                log::trace!("unhandled port write {port:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                log::trace!("unhandled mmio read {addr:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                log::trace!("unhandled mmio write {addr:#x}");
            }
            ExitAction::Continue
        }
        // With the in-kernel irqchip KVM handles HLT itself; a HLT that reaches us means a
        // guest without interrupt controller halted for good.
        VcpuExit::Hlt => ExitAction::Stop(GuestExit::Shutdown),
        VcpuExit::Shutdown => ExitAction::Stop(GuestExit::Crash),
        VcpuExit::SystemEvent(kind, _) => match kind {
            SYSTEM_EVENT_SHUTDOWN | SYSTEM_EVENT_RESET => ExitAction::Stop(GuestExit::Shutdown),
            SYSTEM_EVENT_CRASH => ExitAction::Stop(GuestExit::Crash),
            other => {
                log::warn!("ignoring KVM system event {other}");
                ExitAction::Continue
            }
        },
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Fail(format!(
            "KVM could not enter the guest (hardware entry failure reason {reason:#x} on cpu {cpu})"
        )),
        VcpuExit::InternalError => ExitAction::Fail(
            "KVM internal error (the host could not emulate an instruction)".into(),
        ),
        other => ExitAction::Fail(format!("unexpected KVM exit: {other:?}")),
    }
}

/// How a vCPU thread stopped.
#[derive(Debug)]
pub enum VcpuEvent {
    /// The guest stopped itself.
    Stopped(GuestExit),
    /// The vCPU could not go on.
    Failed(String),
}

/// Sending half of the vCPU-to-event-loop channel.
#[derive(Clone)]
pub struct VcpuEvents {
    tx: mpsc::Sender<(u8, VcpuEvent)>,
    evt: Arc<EventFd>,
}

/// Receiving half: the event loop watches `evt` and drains `rx` when it fires.
pub struct VcpuEventsReceiver {
    /// Messages from the vCPU threads.
    pub rx: mpsc::Receiver<(u8, VcpuEvent)>,
    /// Signalled after every message.
    pub evt: Arc<EventFd>,
}

/// A channel for vCPU threads to report to the event loop.
pub fn vcpu_events() -> std::io::Result<(VcpuEvents, VcpuEventsReceiver)> {
    let (tx, rx) = mpsc::channel();
    let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    Ok((
        VcpuEvents {
            tx,
            evt: evt.clone(),
        },
        VcpuEventsReceiver { rx, evt },
    ))
}

impl VcpuEvents {
    fn send(&self, index: u8, event: VcpuEvent) {
        // The loop may already be gone when several vCPUs stop at once: nothing to do then.
        if self.tx.send((index, event)).is_ok() {
            let _ = self.evt.write(1);
        }
    }
}

/// One vCPU, before it runs.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Create vCPU `index` (its APIC ID is the index).
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(index.into())
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Vcpu { index, fd })
    }

    /// The KVM handle (for tests that set registers by hand).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The KVM handle, mutable (for tests that drive `KVM_RUN` exit by exit).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Boot state for this vCPU: CPUID, MSRs, registers at `entry` for `protocol`, FPU and
    /// LAPIC. Every vCPU gets the same entry state; application processors are then held by
    /// the in-kernel LAPIC until the boot vCPU sends them INIT/SIPI.
    pub fn configure(
        &self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        entry: GuestAddress,
        protocol: arch::BootProtocol,
        num_vcpus: u8,
    ) -> Result<(), VcpuError> {
        arch::configure_vcpu(
            vm.kvm(),
            &self.fd,
            mem,
            self.index,
            num_vcpus,
            entry,
            protocol,
        )
        .map_err(|source| VcpuError::Configure {
            index: self.index,
            source,
        })
    }

    /// Run the guest on the calling thread until it stops; returns how.
    pub fn run(&mut self, buses: &Buses) -> VcpuEvent {
        loop {
            match self.fd.run() {
                Ok(exit) => match handle_exit(exit, buses) {
                    ExitAction::Continue => {}
                    ExitAction::Stop(how) => return VcpuEvent::Stopped(how),
                    ExitAction::Fail(why) => return VcpuEvent::Failed(why),
                },
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {}
                Err(e) => return VcpuEvent::Failed(format!("KVM_RUN failed: {e}")),
            }
        }
    }

    /// Run on a new thread named `vcpu<N>`, reporting the end to `events`. The thread confines
    /// itself with `seccomp` before its first `KVM_RUN`; if that fails the guest never runs.
    ///
    /// Every way the thread ends stays within the vCPU allow-list: a panic in a device model
    /// is caught and reported as [`VcpuEvent::Failed`] (with `panic = "abort"`, as in release
    /// builds, the process ends instead, after the panic hook's line), and the thread never
    /// drops `buses`. Once the event loop has returned, a vCPU thread may hold the last
    /// reference to the devices, and their destructors (closing a vhost-user connection, a
    /// unix listener, a tap) are main-thread work: run here they would make syscalls the vCPU
    /// filter forbids and end the VMM with status 159 instead of its own report (seen on a
    /// host whose KVM could not run the guest: `statx` from the vsock listener's drop).
    pub fn spawn(
        mut self,
        buses: Arc<Buses>,
        events: VcpuEvents,
        seccomp: ThreadFilter,
    ) -> Result<thread::JoinHandle<()>, VcpuError> {
        let index = self.index;
        thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                // Never dropped on this thread (see above); the process is ending when a vCPU
                // thread ends, so nothing is lost.
                let buses = std::mem::ManuallyDrop::new(buses);
                // seccomp: the vCPU allow-list, last step before guest code runs (fail closed).
                if let Err(e) = seccomp.apply() {
                    let why = crate::error_chain(&e);
                    events.send(index, VcpuEvent::Failed(why));
                    return;
                }
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&buses)));
                let event = run.unwrap_or_else(|payload| {
                    VcpuEvent::Failed(format!(
                        "vCPU thread panicked: {}",
                        crate::panic_hook::payload_message(&*payload)
                    ))
                });
                events.send(index, event);
            })
            .map_err(|source| VcpuError::Spawn { index, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::Mutex;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data[0] = self.0;
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_io_and_mmio_and_answers_absent_devices_with_zero() {
        let mut buses = Buses::default();
        buses
            .io
            .insert(Arc::new(Mutex::new(Reg(7))), 0x3f8, 8)
            .unwrap();
        buses
            .mmio
            .insert(Arc::new(Mutex::new(Reg(9))), 0xd000_0000, 0x1000)
            .unwrap();

        let mut data = [0xffu8];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3f8, &mut data), &buses),
            ExitAction::Continue
        );
        assert_eq!(data[0], 7);
        let mut data = [0xffu8];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x70, &mut data), &buses),
            ExitAction::Continue
        );
        assert_eq!(data[0], 0, "an absent RTC reads as zero, not 0xff");
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0xd000_0010, &[5]), &buses),
            ExitAction::Continue
        );
        let mut data = [0u8];
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut data), &buses);
        assert_eq!(data[0], 5);
    }

    #[test]
    fn maps_stops_and_failures() {
        let buses = Buses::default();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &buses),
            ExitAction::Stop(GuestExit::Crash)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, &[]), &buses),
            ExitAction::Stop(GuestExit::Shutdown)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_CRASH, &[]), &buses),
            ExitAction::Stop(GuestExit::Crash)
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &buses),
            ExitAction::Fail(_)
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(1, 0), &buses),
            ExitAction::Fail(_)
        ));
    }
}
