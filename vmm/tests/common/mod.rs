//! Helpers shared by the tiny-guest tests: a console sink, the `/dev/kvm` check, and the
//! register state for flat 32-bit protected mode (what PVH enters the kernel in).

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use bulkhead_vmm::device_manager::{LegacyDevices, MmioSlots};
use bulkhead_vmm::devices::legacy::ConsoleOutput;
use bulkhead_vmm::devices::virtio::rng::Rng;
use bulkhead_vmm::vstate::memory::create_guest_memory;
use bulkhead_vmm::vstate::vcpu::{Buses, Vcpu};
use bulkhead_vmm::vstate::vm::Vm;
use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest address the tiny guests' code is written to.
pub const CODE_ADDR: u64 = 0x1000;

/// A console output that keeps what the guest printed.
#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `/dev/kvm` exists; the calling test skips ([`bulkhead_test_skip::skip`]) when it
/// does not.
pub fn kvm_available() -> bool {
    let there = std::path::Path::new("/dev/kvm").exists();
    if !there {
        bulkhead_test_skip::skip("/dev/kvm is absent");
    }
    there
}

/// Flat 32-bit protected mode, no paging, and an empty IDT so that any exception ends in a
/// triple fault; execution starts at `entry`.
pub fn enter_protected_mode(vcpu: &Vcpu, entry: u64) {
    let fd = vcpu.fd();
    let mut sregs = fd.get_sregs().unwrap();
    for seg in [
        &mut sregs.cs,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        seg.base = 0;
        seg.limit = 0xffff_ffff;
        seg.g = 1;
        seg.db = 1;
        seg.present = 1;
        seg.s = 1;
        seg.type_ = 0x3; // data read/write, accessed
    }
    sregs.cs.type_ = 0xb; // code execute/read, accessed
    sregs.cs.selector = 0x10;
    sregs.cr0 |= 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    fd.set_sregs(&sregs).unwrap();
    let mut regs = fd.get_regs().unwrap();
    regs.rip = entry;
    regs.rflags = 2;
    fd.set_regs(&regs).unwrap();
}

/// A tiny guest wired the way the VMM wires a real one: 64 MiB of memory holding `code` at
/// [`CODE_ADDR`], the in-kernel irqchip, COM1 and the i8042 writing to a [`Sink`], virtio-rng
/// in the first virtio-mmio slot, and vCPU 0 in protected mode at the code.
pub struct TinyVm {
    pub _mem: GuestMemoryMmap,
    pub vm: Vm,
    pub sink: Sink,
    pub buses: Buses,
    pub legacy: LegacyDevices,
    pub cmdline: Cmdline,
    pub vcpu: Vcpu,
}

/// Attaches more virtio-mmio devices after the rng (slot 1 on).
pub type MoreDevices<'a> =
    dyn FnOnce(&Vm, &GuestMemoryMmap, &mut Buses, &mut Cmdline, &mut MmioSlots) + 'a;

impl TinyVm {
    pub fn new(code: &[u8]) -> Self {
        Self::with_devices(code, Box::new(|_, _, _, _, _| {}))
    }

    /// [`TinyVm::new`] plus the devices `more` attaches (their event handlers are dropped:
    /// the buses hold the only reference).
    pub fn with_devices(code: &[u8], more: Box<MoreDevices<'_>>) -> Self {
        let mem = create_guest_memory(64).unwrap();
        mem.write_slice(code, GuestAddress(CODE_ADDR)).unwrap();
        let vm = Vm::new().unwrap();
        vm.register_memory(&mem).unwrap();
        vm.setup_irqchip().unwrap();
        let sink = Sink::default();
        let mut buses = Buses::default();
        let legacy = LegacyDevices::attach(
            &vm,
            &mut buses,
            ConsoleOutput::new(Some(Box::new(sink.clone()))).unwrap(),
        )
        .unwrap();
        let mut cmdline = Cmdline::new(2048).unwrap();
        let mut slots = MmioSlots::new();
        slots
            .attach(
                &vm,
                &mem,
                &mut buses,
                &mut cmdline,
                "virtio-rng",
                Arc::new(Mutex::new(Rng::new().unwrap())),
            )
            .unwrap();
        more(&vm, &mem, &mut buses, &mut cmdline, &mut slots);
        drop(slots.take_subscribers());
        let vcpu = Vcpu::new(&vm, 0).unwrap();
        enter_protected_mode(&vcpu, CODE_ADDR);
        TinyVm {
            _mem: mem,
            vm,
            sink,
            buses,
            legacy,
            cmdline,
            vcpu,
        }
    }
}
