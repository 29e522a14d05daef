//! The Intel MultiProcessor Specification 1.4 tables that tell the guest how many CPUs there
//! are and how the ISA interrupts reach the IOAPIC: a floating pointer structure followed by
//! a configuration table (processors, one ISA bus, the IOAPIC, 24 I/O interrupt entries and
//! the LINT0 = ExtINT / LINT1 = NMI local interrupt entries).
//!
//! The tables are serialised field by field (all little-endian, packed), so no `unsafe` layout
//! trick is needed.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Error, Result};
use super::layout::{APIC_ADDR, IOAPIC_ADDR, IOAPIC_NUM_PINS, MAX_VCPUS, MPTABLE_START};

const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MP_SPEC_REVISION: u8 = 4;
const OEM_ID: &[u8; 8] = b"BULKHEAD";
const PRODUCT_ID: &[u8; 12] = b"000000000000";

/// Size of the floating pointer structure.
pub const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
pub const MPC_HEADER_SIZE: usize = 44;
/// Size of a processor entry.
pub const MPC_CPU_SIZE: usize = 20;
/// Size of every other entry (bus, IOAPIC, interrupt sources).
pub const MPC_ENTRY_SIZE: usize = 8;

/// Entry types.
pub const MP_PROCESSOR: u8 = 0;
/// Bus entry type.
pub const MP_BUS: u8 = 1;
/// IOAPIC entry type.
pub const MP_IOAPIC: u8 = 2;
/// I/O interrupt assignment entry type.
pub const MP_INTSRC: u8 = 3;
/// Local interrupt assignment entry type.
pub const MP_LINTSRC: u8 = 4;

/// Interrupt types.
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
/// Family 6 signature, with the FPU and APIC feature flags, as usual for virtual CPUs.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 9) | 1;
const ISA_BUS_ID: u8 = 0;
const IOAPIC_ENABLED: u8 = 1;
/// Polarity and trigger "conform to the bus": edge, active high on ISA.
const IRQ_FLAGS_CONFORM: u16 = 0;
/// Destination "all local APICs".
const ALL_APICS: u8 = 0xff;

/// Total size of the MP tables for `num_cpus` processors.
pub fn mptable_size(num_cpus: u8) -> usize {
    MPF_SIZE
        + MPC_HEADER_SIZE
        + MPC_CPU_SIZE * usize::from(num_cpus)
        + MPC_ENTRY_SIZE * (2 + IOAPIC_NUM_PINS as usize + 2)
}

/// The IOAPIC ID: the first ID after the processors' APIC IDs.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// Builds the MP floating pointer and configuration table, to be placed at guest address
/// `base`, for `num_cpus` processors (APIC IDs 0..num_cpus, the BSP is 0).
pub fn build_mptable(base: u64, num_cpus: u8) -> Result<Vec<u8>> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(Error::VcpuCount(num_cpus));
    }
    let ioapic_id = ioapic_id(num_cpus);
    let mut entries = Vec::new();
    let mut count: u16 = 0;

    for cpu in 0..num_cpus {
        let flags = if cpu == 0 {
            CPU_ENABLED | CPU_BSP
        } else {
            CPU_ENABLED
        };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }

    entries.extend_from_slice(&[MP_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;

    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, APIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;

    for irq in 0..IOAPIC_NUM_PINS as u8 {
        entries.extend_from_slice(&[MP_INTSRC, MP_INT]);
        entries.extend_from_slice(&IRQ_FLAGS_CONFORM.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }

    // LINT0 of the BSP receives the 8259 PIC (ExtINT); LINT1 of every CPU receives NMIs.
    for (kind, dest, lint) in [(MP_EXTINT, 0, 0), (MP_NMI, ALL_APICS, 1)] {
        entries.extend_from_slice(&[MP_LINTSRC, kind]);
        entries.extend_from_slice(&IRQ_FLAGS_CONFORM.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, dest, lint]);
        count += 1;
    }

    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(MPC_SIGNATURE);
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MP_SPEC_REVISION);
    table.push(0); // checksum, set below
    table.extend_from_slice(OEM_ID);
    table.extend_from_slice(PRODUCT_ID);
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&((base + MPF_SIZE as u64) as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MP_SPEC_REVISION);
    mpf.push(0); // checksum, set below
    mpf.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table is present
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    debug_assert_eq!(mpf.len(), mptable_size(num_cpus));
    Ok(mpf)
}

/// Writes the MP tables for `num_cpus` processors at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<()> {
    let bytes = build_mptable(MPTABLE_START, num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|source| Error::GuestMemory {
            what: "mp table",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::test_utils::test_mem;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    /// Parses the tables back the way a guest does, checking every checksum and length.
    /// Returns the entries as (type, bytes).
    fn parse(mem: &GuestMemoryMmap) -> Vec<(u8, Vec<u8>)> {
        let mut mpf = [0u8; MPF_SIZE];
        mem.read_slice(&mut mpf, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&mpf[0..4], b"_MP_");
        assert_eq!((mpf[8], mpf[9]), (1, 4));
        assert_eq!(sum(&mpf), 0, "floating pointer checksum");
        assert_eq!(mpf[11], 0, "default configuration must not be used");
        let table_addr = u64::from(u32_at(&mpf, 4));
        assert_eq!(table_addr, MPTABLE_START + 16);

        let mut header = [0u8; MPC_HEADER_SIZE];
        mem.read_slice(&mut header, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(&header[0..4], b"PCMP");
        let len = usize::from(u16_at(&header, 4));
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert_eq!(u32_at(&table, 36), 0xfee0_0000);
        let count = u16_at(&table, 34);

        let mut entries = Vec::new();
        let mut off = MPC_HEADER_SIZE;
        for _ in 0..count {
            let kind = table[off];
            let size = if kind == MP_PROCESSOR { 20 } else { 8 };
            entries.push((kind, table[off..off + size].to_vec()));
            off += size;
        }
        assert_eq!(off, len, "entry count and table length agree");
        entries
    }

    fn check_for_cpus(num_cpus: u8) {
        let mem = test_mem(2 << 20);
        setup_mptable(&mem, num_cpus).unwrap();
        let entries = parse(&mem);

        let cpus: Vec<_> = entries.iter().filter(|e| e.0 == MP_PROCESSOR).collect();
        assert_eq!(cpus.len(), usize::from(num_cpus));
        for (i, (_, cpu)) in cpus.iter().enumerate() {
            assert_eq!(usize::from(cpu[1]), i, "apic id");
            let bsp = if i == 0 { 2 } else { 0 };
            assert_eq!(cpu[3], 1 | bsp, "cpu flags");
        }

        let buses: Vec<_> = entries.iter().filter(|e| e.0 == MP_BUS).collect();
        assert_eq!(buses.len(), 1);
        assert_eq!(&buses[0].1[2..8], b"ISA   ");

        let ioapics: Vec<_> = entries.iter().filter(|e| e.0 == MP_IOAPIC).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = &ioapics[0].1;
        assert_eq!(ioapic[1], num_cpus, "ioapic id after the cpus");
        assert_eq!(ioapic[3], 1, "ioapic enabled");
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);

        let irqs: Vec<_> = entries.iter().filter(|e| e.0 == MP_INTSRC).collect();
        assert_eq!(irqs.len(), 24);
        for (i, (_, irq)) in irqs.iter().enumerate() {
            assert_eq!(irq[1], MP_INT);
            assert_eq!((usize::from(irq[5]), irq[6]), (i, num_cpus));
            assert_eq!(usize::from(irq[7]), i, "isa irq n goes to ioapic pin n");
        }

        let lints: Vec<_> = entries.iter().filter(|e| e.0 == MP_LINTSRC).collect();
        assert_eq!(lints.len(), 2);
        assert_eq!((lints[0].1[1], lints[0].1[7]), (MP_EXTINT, 0));
        assert_eq!(
            (lints[1].1[1], lints[1].1[6], lints[1].1[7]),
            (MP_NMI, 0xff, 1)
        );
    }

    #[test]
    fn one_cpu() {
        check_for_cpus(1);
    }

    #[test]
    fn several_cpus() {
        check_for_cpus(4);
        check_for_cpus(MAX_VCPUS);
    }

    #[test]
    fn fits_in_the_last_kib_of_base_memory() {
        assert!(mptable_size(MAX_VCPUS) <= 1024);
        assert_eq!(build_mptable(0, 3).unwrap().len(), mptable_size(3));
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(build_mptable(0, 0), Err(Error::VcpuCount(0))));
        assert!(matches!(
            build_mptable(0, MAX_VCPUS + 1),
            Err(Error::VcpuCount(_))
        ));
    }

    #[test]
    fn fails_cleanly_when_memory_is_too_small() {
        let mem = test_mem(0x9_0000);
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(Error::GuestMemory { .. })
        ));
    }
}
