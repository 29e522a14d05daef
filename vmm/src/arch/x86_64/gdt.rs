//! GDT descriptor encoding and the matching `kvm_segment` values for the boot GDT.
//!
//! A descriptor is described the way Linux's `GDT_ENTRY(flags, base, limit)` macro does:
//! `flags` holds the access byte in bits 0..8 and the G/D-B/L/AVL nibble in bits 12..16.

use kvm_bindings::kvm_segment;

/// Index of the boot code segment (`__BOOT_CS` = 0x10, as the Linux boot protocol requires).
pub const BOOT_CS_INDEX: u8 = 2;
/// Index of the boot data segment (`__BOOT_DS` = 0x18).
pub const BOOT_DS_INDEX: u8 = 3;
/// Index of the boot TSS.
pub const BOOT_TSS_INDEX: u8 = 4;

/// Flags of a 64-bit code segment: present, DPL 0, execute/read accessed, G and L.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit code segment: present, DPL 0, execute/read accessed, G and D.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a flat data segment: present, DPL 0, read/write accessed, G and B.
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a busy 32-bit (64-bit in long mode) TSS, byte granular.
pub const TSS_FLAGS: u16 = 0x008b;
/// Limit of the boot TSS (size of a 32-bit TSS minus one).
pub const TSS_LIMIT: u32 = 0x67;
/// Limit of a flat 4 GiB segment in 4 KiB units.
pub const FLAT_LIMIT: u32 = 0xfffff;

/// Encodes a segment descriptor.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0x0000_f0ff) << 40)
}

/// Decodes descriptor `entry`, found at `index` in the GDT, into the segment register value
/// KVM expects (selector, base, limit in bytes and the attribute bits).
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT: null, null, code, data, TSS. `long_mode` picks a 64-bit code segment
/// (Linux 64-bit entry) over a 32-bit one (PVH entry).
pub fn boot_gdt(long_mode: bool) -> [u64; super::layout::BOOT_GDT_ENTRIES] {
    let code = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        0,
        gdt_entry(code, 0, FLAT_LIMIT),
        gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT),
        gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_linux_gdt_entry_macro() {
        // Values of GDT_ENTRY(...) in the Linux source (arch/x86/include/asm/segment.h users).
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x0089, 0x1234_5678, 0x67), 0x1200_8934_5678_0067);
    }

    #[test]
    fn decodes_64bit_code_segment() {
        let seg = segment_from_gdt(gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT), BOOT_CS_INDEX);
        assert_eq!(seg.selector, 0x10);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!((seg.present, seg.dpl, seg.s), (1, 0, 1));
        assert_eq!((seg.l, seg.db, seg.g, seg.avl), (1, 0, 1, 0));
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn decodes_32bit_code_and_data_segments() {
        let code = segment_from_gdt(gdt_entry(CODE32_FLAGS, 0, FLAT_LIMIT), BOOT_CS_INDEX);
        assert_eq!((code.l, code.db, code.g, code.type_), (0, 1, 1, 0xb));
        let data = segment_from_gdt(gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT), BOOT_DS_INDEX);
        assert_eq!(data.selector, 0x18);
        assert_eq!((data.l, data.db, data.g, data.type_), (0, 1, 1, 0x3));
        assert_eq!(data.limit, 0xffff_ffff);
    }

    #[test]
    fn decodes_base_and_byte_granular_limit() {
        let seg = segment_from_gdt(gdt_entry(TSS_FLAGS, 0xdead_beef, TSS_LIMIT), 4);
        assert_eq!(seg.base, 0xdead_beef);
        assert_eq!(seg.limit, 0x67);
        assert_eq!((seg.g, seg.s, seg.type_, seg.present), (0, 0, 0xb, 1));
        assert_eq!(seg.selector, 0x20);
    }

    #[test]
    fn null_descriptor_is_unusable() {
        let seg = segment_from_gdt(0, 0);
        assert_eq!((seg.present, seg.unusable), (0, 1));
    }

    #[test]
    fn boot_gdt_picks_code_size() {
        let gdt64 = boot_gdt(true);
        let gdt32 = boot_gdt(false);
        assert_eq!((gdt64[0], gdt64[1]), (0, 0));
        assert_eq!(segment_from_gdt(gdt64[BOOT_CS_INDEX as usize], 2).l, 1);
        assert_eq!(segment_from_gdt(gdt32[BOOT_CS_INDEX as usize], 2).l, 0);
        assert_eq!(segment_from_gdt(gdt32[BOOT_CS_INDEX as usize], 2).db, 1);
        assert_eq!(gdt64[3], gdt32[3]);
    }
}
