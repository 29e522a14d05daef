//! Boot CPU state: general registers, segment and control registers (with the boot GDT, IDT
//! and identity-mapping page tables written to guest memory) and the FPU.
//!
//! PVH enters in 32-bit protected mode without paging; the Linux boot protocol is used
//! through its 64-bit entry, so it needs long mode with the first GiB identity-mapped by
//! 2 MiB pages.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::BootProtocol;
use super::error::{Error, Result};
use super::gdt::{boot_gdt, segment_from_gdt, BOOT_CS_INDEX, BOOT_DS_INDEX, BOOT_TSS_INDEX};
use super::layout::{
    BOOT_GDT_ENTRIES, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START,
    PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (hard-wired to 1 on every CPU since the 486).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Page table entry bits: present and writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page directory entry bit: this entry maps a 2 MiB page.
const PDE_PAGE_SIZE: u64 = 0x80;
/// Size of the pages of the boot identity map.
pub const BOOT_PAGE_SIZE: u64 = 2 << 20;
/// Entries in one page table.
const PT_ENTRIES: u64 = 512;

/// General registers at the kernel entry point `entry`.
pub fn boot_regs(entry: GuestAddress, protocol: BootProtocol) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
        BootProtocol::LinuxBoot => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// Sets the general registers of `vcpu` for entry at `entry`.
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress, protocol: BootProtocol) -> Result<()> {
    vcpu.set_regs(&boot_regs(entry, protocol))
        .map_err(|e| Error::Kvm("KVM_SET_REGS", e))
}

/// FPU state at boot: default control word and MXCSR, as after `FNINIT`/reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets the FPU state of `vcpu` for boot.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| Error::Kvm("KVM_SET_FPU", e))
}

/// Applies the boot segment and control registers for `protocol` to `sregs` (other fields,
/// such as the APIC base, are kept).
pub fn configure_sregs(sregs: &mut kvm_sregs, protocol: BootProtocol) {
    let long_mode = protocol == BootProtocol::LinuxBoot;
    let gdt = boot_gdt(long_mode);
    let code = segment_from_gdt(gdt[BOOT_CS_INDEX as usize], BOOT_CS_INDEX);
    let data = segment_from_gdt(gdt[BOOT_DS_INDEX as usize], BOOT_DS_INDEX);
    let tss = segment_from_gdt(gdt[BOOT_TSS_INDEX as usize], BOOT_TSS_INDEX);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT_ENTRIES * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    if long_mode {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
        sregs.cr3 = PML4_START;
        sregs.cr4 = X86_CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
}

/// Writes the boot GDT and a one-entry null IDT to guest memory.
pub fn write_gdt_idt(mem: &GuestMemoryMmap, protocol: BootProtocol) -> Result<()> {
    let gdt = boot_gdt(protocol == BootProtocol::LinuxBoot);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(|source| Error::GuestMemory {
                what: "boot gdt",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| Error::GuestMemory {
            what: "boot idt",
            source,
        })
}

/// Writes page tables identity-mapping the first GiB with 2 MiB pages (PML4 -> PDPT -> PD).
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let err = |source| Error::GuestMemory {
        what: "boot page tables",
        source,
    };
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PDE_START | PTE_PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(err)?;
    for i in 0..PT_ENTRIES {
        let entry = (i * BOOT_PAGE_SIZE) | PDE_PAGE_SIZE | PTE_PRESENT_RW;
        mem.write_obj(entry, GuestAddress(PDE_START + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

/// Writes the boot GDT/IDT (and, for the Linux protocol, the page tables) to guest memory and
/// sets the segment and control registers of `vcpu`.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd, protocol: BootProtocol) -> Result<()> {
    write_gdt_idt(mem, protocol)?;
    if protocol == BootProtocol::LinuxBoot {
        write_page_tables(mem)?;
    }
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Kvm("KVM_GET_SREGS", e))?;
    configure_sregs(&mut sregs, protocol);
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::Kvm("KVM_SET_SREGS", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::test_utils::{kvm_vcpu, test_mem};

    #[test]
    fn regs_for_pvh_point_rbx_at_start_info() {
        let regs = boot_regs(GuestAddress(0x100_0000), BootProtocol::Pvh);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0000, 0x6000, 2));
        assert_eq!(regs.rsi, 0);
    }

    #[test]
    fn regs_for_linux_point_rsi_at_zero_page() {
        let regs = boot_regs(GuestAddress(0x10_0200), BootProtocol::LinuxBoot);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rflags),
            (0x10_0200, ZERO_PAGE_START, 2)
        );
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
    }

    #[test]
    fn sregs_for_linux_are_long_mode() {
        let mut sregs = kvm_sregs {
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        configure_sregs(&mut sregs, BootProtocol::LinuxBoot);
        assert_eq!(sregs.apic_base, 0xfee0_0900);
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x10, 1, 0));
        assert_eq!((sregs.ds.selector, sregs.ss.selector), (0x18, 0x18));
        assert_eq!(sregs.tr.selector, 0x20);
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 39));
    }

    #[test]
    fn sregs_for_pvh_are_flat_protected_mode() {
        let mut sregs = kvm_sregs {
            cr4: X86_CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        configure_sregs(&mut sregs, BootProtocol::Pvh);
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        for seg in [sregs.cs, sregs.ds, sregs.es, sregs.ss] {
            assert_eq!((seg.base, seg.limit, seg.db, seg.l), (0, 0xffff_ffff, 1, 0));
        }
        assert_eq!(sregs.cs.type_, 0xb);
        assert_eq!(sregs.ds.type_, 0x3);
        assert_eq!((sregs.tr.type_, sregs.tr.present), (0xb, 1));
    }

    #[test]
    fn page_tables_identity_map_first_gib_with_2mib_pages() {
        let mem = test_mem(2 << 20);
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 3);
        // No 1 GiB page: the PDPT entry has no PS bit.
        assert_eq!(pdpte & 0x80, 0);
        for i in [0u64, 1, 255, 511] {
            let pde: u64 = mem.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "pde {i}");
        }
        let past: u64 = mem.read_obj(GuestAddress(PDE_START + 512 * 8)).unwrap();
        assert_eq!(past, 0);
    }

    #[test]
    fn gdt_in_memory_matches_segments() {
        let mem = test_mem(2 << 20);
        write_gdt_idt(&mem, BootProtocol::LinuxBoot).unwrap();
        let mut sregs = kvm_sregs::default();
        configure_sregs(&mut sregs, BootProtocol::LinuxBoot);
        let cs_entry: u64 = mem
            .read_obj(GuestAddress(sregs.gdt.base + u64::from(sregs.cs.selector)))
            .unwrap();
        assert_eq!(segment_from_gdt(cs_entry, BOOT_CS_INDEX), sregs.cs);
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_START)).unwrap();
        assert_eq!(idt, 0);
    }

    #[test]
    fn kvm_round_trip_linux_boot() {
        let Some((_kvm, _vm, vcpu)) = kvm_vcpu() else {
            return;
        };
        let mem = test_mem(16 << 20);
        let dirty = kvm_fpu {
            fcw: 0x40,
            ..Default::default()
        };
        vcpu.set_fpu(&dirty).unwrap();
        setup_regs(&vcpu, GuestAddress(0x10_0200), BootProtocol::LinuxBoot).unwrap();
        setup_sregs(&mem, &vcpu, BootProtocol::LinuxBoot).unwrap();
        setup_fpu(&vcpu).unwrap();

        let regs = vcpu.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp),
            (0x10_0200, ZERO_PAGE_START, 0x8ff0)
        );
        let sregs = vcpu.get_sregs().unwrap();
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(
            (sregs.cr3, sregs.cr4 & X86_CR4_PAE),
            (PML4_START, X86_CR4_PAE)
        );
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x10, 1));
        let fpu = vcpu.get_fpu().unwrap();
        assert_eq!(fpu.fcw, 0x37f);
        // Read MXCSR from the XSAVE legacy area (bytes 24..28): some hosts (nested PVM)
        // report 0 in KVM_GET_FPU's mxcsr whatever the state.
        let xsave = vcpu.get_xsave().unwrap();
        assert_eq!(xsave.region[6], 0x1f80);
    }

    #[test]
    fn kvm_round_trip_pvh() {
        let Some((_kvm, _vm, vcpu)) = kvm_vcpu() else {
            return;
        };
        let mem = test_mem(16 << 20);
        setup_regs(&vcpu, GuestAddress(0x100_0000), BootProtocol::Pvh).unwrap();
        setup_sregs(&mem, &vcpu, BootProtocol::Pvh).unwrap();
        let regs = vcpu.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (0x100_0000, PVH_INFO_START, 2)
        );
        let sregs = vcpu.get_sregs().unwrap();
        assert_eq!(sregs.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!(sregs.efer & EFER_LMA, 0);
        assert_eq!(
            (sregs.cs.db, sregs.cs.l, sregs.cs.limit),
            (1, 0, 0xffff_ffff)
        );
    }

    /// What a tiny guest did, exit by exit.
    #[derive(Debug, PartialEq)]
    enum Exit {
        Out(u16, u32),
        MmioRead(u64),
        Hlt,
    }

    /// Runs `code` at `entry` after the real boot set-up for `protocol`, in a VM without an
    /// in-kernel irqchip (so `hlt` exits), and returns its exits.
    fn run_tiny_guest(protocol: BootProtocol, entry: u64, code: &[u8]) -> Option<Vec<Exit>> {
        use kvm_bindings::kvm_userspace_memory_region;
        use kvm_ioctls::{Kvm, VcpuExit};
        use vm_memory::GuestMemoryBackend;

        let Ok(kvm) = Kvm::new() else {
            bulkhead_test_skip::skip("/dev/kvm is not usable");
            return None;
        };
        let vm = kvm.create_vm().unwrap();
        let size = 16 << 20;
        let mem = test_mem(size);
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: `mem` maps `size` bytes at `host` and outlives the VM, which is dropped at
        // the end of this function before `mem`.
        unsafe { vm.set_user_memory_region(region).unwrap() };
        mem.write_slice(code, GuestAddress(entry)).unwrap();

        let mut vcpu = vm.create_vcpu(0).unwrap();
        crate::arch::x86_64::cpuid::setup_cpuid(&kvm, &vcpu, 0, 1).unwrap();
        crate::arch::x86_64::msr::setup_msrs(&vcpu).unwrap();
        setup_regs(&vcpu, GuestAddress(entry), protocol).unwrap();
        setup_sregs(&mem, &vcpu, protocol).unwrap();
        setup_fpu(&vcpu).unwrap();

        let mut exits = Vec::new();
        for _ in 0..8 {
            match vcpu.run().unwrap() {
                VcpuExit::IoOut(port, data) => {
                    let mut word = [0u8; 4];
                    word[..data.len()].copy_from_slice(data);
                    exits.push(Exit::Out(port, u32::from_le_bytes(word)));
                }
                VcpuExit::MmioRead(addr, data) => {
                    data.fill(0);
                    exits.push(Exit::MmioRead(addr));
                }
                VcpuExit::Hlt => {
                    exits.push(Exit::Hlt);
                    break;
                }
                other => panic!("unexpected exit {other:?} after {exits:?}"),
            }
        }
        Some(exits)
    }

    #[test]
    fn kvm_runs_64bit_code_through_the_identity_map() {
        let code = [
            0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
            0x89, 0xf0, // mov eax, esi
            0xef, // out dx, eax
            0x8b, 0x04, 0x25, 0x00, 0xf0, 0xff, 0x3f, // mov eax, [0x3ffff000]
            0xf4, // hlt
        ];
        let Some(exits) = run_tiny_guest(BootProtocol::LinuxBoot, 0x10_0200, &code) else {
            return;
        };
        // rsi points at the zero page; the last 2 MiB page of the first GiB is mapped (to
        // unbacked memory, hence an MMIO exit rather than a page fault and shutdown).
        assert_eq!(
            exits,
            vec![
                Exit::Out(0x3f8, ZERO_PAGE_START as u32),
                Exit::MmioRead(0x3fff_f000),
                Exit::Hlt
            ]
        );
    }

    #[test]
    fn kvm_runs_32bit_pvh_entry() {
        let code = [
            0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
            0x89, 0xd8, // mov eax, ebx
            0xef, // out dx, eax
            0xa1, 0x00, 0x00, 0x00, 0xe0, // mov eax, [0xe0000000]
            0xf4, // hlt
        ];
        let Some(exits) = run_tiny_guest(BootProtocol::Pvh, 0x100_0000 - 0x1000, &code) else {
            return;
        };
        assert_eq!(
            exits,
            vec![
                Exit::Out(0x3f8, PVH_INFO_START as u32),
                Exit::MmioRead(0xe000_0000),
                Exit::Hlt
            ]
        );
    }
}
