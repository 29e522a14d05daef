//! Helpers shared by the tiny-guest tests: a console sink, the `/dev/kvm` check, the
//! register state for flat 32-bit protected mode (what PVH enters the kernel in), and tiny
//! PVH ELF "kernels" the `bulkhead-vmm` binary boots.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use bulkhead_vmm::arch::x86_64::layout;
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

/// Guest code: print "HI" on COM1, then reset through the i8042.
pub const SAY_HI_AND_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'H', 0xee, // 'H'
    0xb0, b'I', 0xee, // 'I'
    0xb0, b'\n', 0xee, // newline
    0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al (reset)
    0xf4, 0xeb, 0xfd, // hlt; jmp back to hlt
];

/// Guest code: print "HI", wait for a byte on COM1's receiver (the VMM's stdin), then reset.
pub const SAY_HI_WAIT_FOR_INPUT_AND_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'H', 0xee, // 'H'
    0xb0, b'I', 0xee, // 'I'
    0xb0, b'\n', 0xee, // newline
    0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (line status)
    0xec, // poll: in al, dx
    0xa8, 0x01, // test al, 1 (data ready)
    0x74, 0xfb, // jz poll
    0xb0, 0xfe, 0xe6, 0x64, // reset
    0xf4, 0xeb, 0xfd, // hlt; jmp back to hlt
];

/// A minimal ELF64 "kernel" with a PVH entry note: `code` at 1 MiB, entered in 32-bit
/// protected mode.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = layout::HIMEM_START;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD as u32).to_le_bytes());

    let phoff = 64u64;
    let note_off = phoff + 2 * 56;
    let code_off = 0x1000u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    elf.extend_from_slice(&phoff.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let phdr = |elf: &mut Vec<u8>, kind: u32, off: u64, addr: u64, len: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
        elf.extend_from_slice(&off.to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes()); // vaddr
        elf.extend_from_slice(&addr.to_le_bytes()); // paddr
        elf.extend_from_slice(&len.to_le_bytes()); // filesz
        elf.extend_from_slice(&len.to_le_bytes()); // memsz
        elf.extend_from_slice(&4u64.to_le_bytes()); // align
    };
    phdr(&mut elf, 1, code_off, LOAD, code.len() as u64); // PT_LOAD
    phdr(&mut elf, 4, note_off, 0, note.len() as u64); // PT_NOTE
    elf.extend_from_slice(&note);
    elf.resize(code_off as usize, 0);
    elf.extend_from_slice(code);
    elf
}
