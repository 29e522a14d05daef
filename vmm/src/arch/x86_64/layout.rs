//! Guest physical memory layout: where the boot structures live, where RAM is, the 32-bit
//! MMIO gap and the slots and interrupt lines given to virtio-mmio devices.
//!
//! Low memory map (first MiB):
//!
//! | address            | content                                          |
//! |--------------------|--------------------------------------------------|
//! | 0x500              | boot GDT                                         |
//! | 0x540              | boot IDT (one null gate)                         |
//! | 0x6000             | PVH `hvm_start_info`                             |
//! | 0x6040             | PVH module list (the initrd)                     |
//! | 0x6100             | PVH memory map table                             |
//! | 0x7000             | zero page (`boot_params`, Linux boot protocol)   |
//! | 0x8ff0             | boot stack pointer (grows down)                  |
//! | 0x9000 .. 0xc000   | PML4, PDPT, PD (identity map of the first GiB)   |
//! | 0x20000            | kernel command line (2048 bytes with the NUL)    |
//! | 0x9fc00 .. 1 MiB   | reserved: MP table (EBDA), legacy VGA/BIOS hole  |
//! | 1 MiB ..           | RAM: kernel, initrd at the top of low RAM        |

use bulkhead_vmm_contract::limits::{CMDLINE_MAX_LEN, MIN_MEMORY_MIB};
use vm_memory::GuestAddress;

/// Boot GDT: null, null, code (0x10), data (0x18), TSS (0x20).
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of descriptors in the boot GDT.
pub const BOOT_GDT_ENTRIES: usize = 5;
/// Boot IDT: one null gate, so an early exception shuts the guest down.
pub const BOOT_IDT_START: u64 = 0x540;

/// PVH `hvm_start_info` structure; its address is passed in `rbx`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map table (E820-style entries).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Maximum number of PVH memory map entries that fit below the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;

/// Zero page (`boot_params`) for the Linux boot protocol; its address is passed in `rsi`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the Linux 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Page map level 4 of the boot page tables (loaded in CR3).
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot page tables: 512 entries of 2 MiB pages = the first GiB.
pub const PDE_START: u64 = 0xb000;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 `COMMAND_LINE_SIZE`, including the terminating NUL (the contract's limit).
pub const CMDLINE_MAX_SIZE: usize = CMDLINE_MAX_LEN;

/// MP floating pointer and configuration table: the last KiB of base memory, which Linux scans.
pub const MPTABLE_START: u64 = 0x9fc00;
/// Start of the region reserved in the e820 map (EBDA, VGA hole, BIOS area).
pub const EBDA_START: u64 = MPTABLE_START;
/// First address above the legacy area: RAM for the kernel and the initrd starts here.
pub const HIMEM_START: u64 = 0x10_0000;

/// First address past 32 bits.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Size of the hole below 4 GiB kept for MMIO (no RAM there).
pub const MMIO_GAP_SIZE: u64 = 768 << 20;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = FIRST_ADDR_PAST_32BITS - MMIO_GAP_SIZE;
/// End (exclusive) of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = FIRST_ADDR_PAST_32BITS;

/// IOAPIC registers (inside the MMIO gap).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers (inside the MMIO gap).
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// Base of the window where virtio-mmio devices are placed, one slot each.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio slot (register block).
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Number of IOAPIC inputs (GSIs 0..=23).
pub const IOAPIC_NUM_PINS: u32 = 24;
/// Interrupt of the first serial port (COM1).
pub const SERIAL_COM1_IRQ: u32 = 4;
/// Interrupts of the i8042 controller (keyboard, aux).
pub const I8042_IRQS: [u32; 2] = [1, 12];
/// IOAPIC GSIs available to virtio-mmio devices: 5..=23 without 12 (i8042 aux).
pub const VIRTIO_MMIO_IRQS: [u32; 18] = [
    5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];
/// Maximum number of virtio-mmio devices (one IRQ each).
pub const MAX_VIRTIO_MMIO_DEVICES: usize = VIRTIO_MMIO_IRQS.len();

/// Largest number of vCPUs (APIC IDs 0..n, IOAPIC ID n, all in the MP table's base KiB): the
/// contract's limit, checked against the MP table's room in `mptable`'s tests.
pub use bulkhead_vmm_contract::limits::MAX_VCPUS;

// Layout invariants, checked at compile time: the boot stack lies between the zero page and
// the page tables, the smallest guest has RAM above 1 MiB, the device window is in the gap.
const _: () = assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 4096);
const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
const _: () = assert!(((MIN_MEMORY_MIB as u64) << 20) > HIMEM_START);
const _: () = assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START);

/// Address and IRQ of the virtio-mmio device in slot `index`, or `None` past the last slot.
pub fn virtio_mmio_slot(index: usize) -> Option<(GuestAddress, u32)> {
    let irq = *VIRTIO_MMIO_IRQS.get(index)?;
    let addr = VIRTIO_MMIO_BASE + VIRTIO_MMIO_SLOT_SIZE * index as u64;
    Some((GuestAddress(addr), irq))
}

/// Guest RAM regions for `mem_size` bytes: one region from 0 if it fits below the MMIO gap,
/// else one up to the gap and the rest from 4 GiB.
pub fn arch_memory_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(FIRST_ADDR_PAST_32BITS),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_memory_is_one_region_from_zero() {
        let regions = arch_memory_regions(128 * MIB);
        assert_eq!(regions, vec![(GuestAddress(0), (128 * MIB) as usize)]);
    }

    #[test]
    fn memory_up_to_the_gap_is_one_region() {
        let regions = arch_memory_regions(MMIO_GAP_START);
        assert_eq!(regions, vec![(GuestAddress(0), MMIO_GAP_START as usize)]);
    }

    #[test]
    fn large_memory_is_split_around_the_gap() {
        let size = 4096 * MIB;
        let regions = arch_memory_regions(size);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), 0xd000_0000),
                (GuestAddress(0x1_0000_0000), (size - 0xd000_0000) as usize),
            ]
        );
        let total: usize = regions.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, size);
    }

    #[test]
    fn gap_contains_apics_and_virtio_window() {
        assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&IOAPIC_ADDR));
        assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&APIC_ADDR));
        let (last, _) = virtio_mmio_slot(MAX_VIRTIO_MMIO_DEVICES - 1).unwrap();
        assert!(last.0 + VIRTIO_MMIO_SLOT_SIZE <= IOAPIC_ADDR);
    }

    #[test]
    fn virtio_slots_avoid_legacy_irqs_and_end() {
        for i in 0..MAX_VIRTIO_MMIO_DEVICES {
            let (addr, irq) = virtio_mmio_slot(i).unwrap();
            assert_eq!(addr.0 % VIRTIO_MMIO_SLOT_SIZE, 0);
            assert!((5..IOAPIC_NUM_PINS).contains(&irq));
            assert_ne!(irq, SERIAL_COM1_IRQ);
            assert!(!I8042_IRQS.contains(&irq));
        }
        assert_eq!(virtio_mmio_slot(1), Some((GuestAddress(0xd000_1000), 6)));
        assert_eq!(virtio_mmio_slot(MAX_VIRTIO_MMIO_DEVICES), None);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, BOOT_GDT_ENTRIES as u64 * 8),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 56),
            (PVH_MODLIST_START, 32),
            (PVH_MEMMAP_START, PVH_MEMMAP_MAX_ENTRIES as u64 * 24),
            (ZERO_PAGE_START, 4096),
            (PML4_START, 4096),
            (PDPTE_START, 4096),
            (PDE_START, 4096),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, HIMEM_START - MPTABLE_START),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
    }
}
