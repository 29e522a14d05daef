//! CPUID seen by the guest: KVM's supported set, with per-vCPU identity (APIC IDs) and a
//! topology of `num_cpus` single-threaded cores in one package, the hypervisor bit set and
//! host power-management details hidden. KVM's own signature leaves (0x4000_0000..) are
//! passed through as KVM reports them.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};

use super::error::{Error, Result};

/// Leaf 1 ECX: TSC-deadline timer mode of the local APIC.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package (HTT).
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 ECX: performance-energy bias preference (an MSR the guest cannot use).
pub const LEAF6_ECX_EPB: u32 = 1 << 3;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE_SIZE: u32 = 8;
/// Leaf 0xb/0x1f level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// "AuthenticAMD" in leaf 0 EBX.
const AMD_VENDOR_EBX: u32 = 0x6874_7541;

/// Number of bits needed to number `n` items (ceil(log2(n))).
fn id_bits(n: u8) -> u32 {
    u32::from(n.max(1)).next_power_of_two().trailing_zeros()
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .any(|e| e.function == 0 && e.ebx == AMD_VENDOR_EBX)
}

/// Leaf 1: initial APIC ID, logical processor count, CLFLUSH size, HTT, hypervisor bit.
fn leaf_1(e: &mut kvm_cpuid_entry2, cpu_index: u8, num_cpus: u8) {
    e.ebx = (u32::from(cpu_index) << 24) | (u32::from(num_cpus) << 16) | (CLFLUSH_LINE_SIZE << 8);
    e.ecx |= LEAF1_ECX_HYPERVISOR;
    if num_cpus > 1 {
        e.edx |= LEAF1_EDX_HTT;
    } else {
        e.edx &= !LEAF1_EDX_HTT;
    }
}

/// Leaf 4 (deterministic cache parameters): cores per package, and which caches are shared
/// (L1 and L2 by one thread, L3 by the whole package).
fn leaf_4(e: &mut kvm_cpuid_entry2, num_cpus: u8) {
    let cache_type = e.eax & 0x1f;
    if cache_type == 0 {
        return;
    }
    let level = (e.eax >> 5) & 0x7;
    let cores = u32::from(num_cpus.max(1)) - 1;
    let sharing = if level >= 3 { cores } else { 0 };
    e.eax &= !(0xfc00_0000 | 0x03ff_c000);
    e.eax |= (cores << 26) | (sharing << 14);
}

/// Leaves 0xb and 0x1f (extended topology): subleaf 0 is the SMT level (one thread), 1 the
/// core level (`num_cpus` cores), the others invalid; EDX is the x2APIC ID everywhere.
fn leaf_topology(e: &mut kvm_cpuid_entry2, cpu_index: u8, num_cpus: u8) {
    let (eax, ebx, level_type) = match e.index {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (id_bits(num_cpus), u32::from(num_cpus), LEVEL_TYPE_CORE),
        _ => (0, 0, 0),
    };
    e.eax = eax;
    e.ebx = ebx;
    e.ecx = (level_type << 8) | (e.index & 0xff);
    e.edx = u32::from(cpu_index);
}

/// Leaf 6 (power management): hide the energy-performance bias.
fn leaf_6(e: &mut kvm_cpuid_entry2) {
    e.ecx &= !LEAF6_ECX_EPB;
}

/// AMD leaf 0x8000_0008 ECX: number of cores and APIC ID size.
fn amd_leaf_8000_0008(e: &mut kvm_cpuid_entry2, num_cpus: u8) {
    let cores = u32::from(num_cpus.max(1)) - 1;
    e.ecx = (e.ecx & !0xf0ff) | (id_bits(num_cpus) << 12) | cores;
}

/// AMD leaf 0x8000_001e: extended APIC ID, one thread per compute unit, one node.
fn amd_leaf_8000_001e(e: &mut kvm_cpuid_entry2, cpu_index: u8) {
    e.eax = u32::from(cpu_index);
    e.ebx = u32::from(cpu_index);
    e.ecx = 0;
}

/// Extended topology subleaves the guest must see: SMT level, core level, terminator.
const TOPOLOGY_SUBLEAVES: u32 = 3;

/// Adds the missing subleaves of the topology leaves (0xb, 0x1f) that KVM reports: recent
/// kernels give only subleaf 0, which would make every vCPU its own package.
fn add_topology_subleaves(cpuid: &mut CpuId) -> Result<()> {
    for function in [0xb, 0x1f] {
        let has = |cpuid: &CpuId, index| {
            cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == function && e.index == index)
        };
        if !has(cpuid, 0) {
            continue;
        }
        for index in 1..TOPOLOGY_SUBLEAVES {
            if !has(cpuid, index) {
                cpuid
                    .push(kvm_cpuid_entry2 {
                        function,
                        index,
                        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                        ..Default::default()
                    })
                    .map_err(|e| Error::FamList("cpuid", e))?;
            }
        }
    }
    Ok(())
}

/// Adjusts KVM's supported CPUID for vCPU `cpu_index` of `num_cpus`. Fails only if the
/// topology subleaves it adds do not fit in a `CpuId`.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, num_cpus: u8) -> Result<()> {
    add_topology_subleaves(cpuid)?;
    let amd = is_amd(cpuid.as_slice());
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => leaf_1(e, cpu_index, num_cpus),
            0x4 => leaf_4(e, num_cpus),
            0x6 => leaf_6(e),
            0xb | 0x1f => leaf_topology(e, cpu_index, num_cpus),
            0x8000_0008 if amd => amd_leaf_8000_0008(e, num_cpus),
            0x8000_001e if amd => amd_leaf_8000_001e(e, cpu_index),
            _ => {}
        }
    }
    Ok(())
}

/// Advertises (or hides) the LAPIC TSC-deadline timer in leaf 1. KVM emulates it with the
/// in-kernel LAPIC but leaves it out of the supported set; ask `KVM_CAP_TSC_DEADLINE_TIMER`.
pub fn set_tsc_deadline(cpuid: &mut CpuId, enabled: bool) {
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
        if enabled {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        } else {
            e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

/// Sets the CPUID of `vcpu` (number `cpu_index` of `num_cpus`) from KVM's supported set.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, cpu_index: u8, num_cpus: u8) -> Result<()> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    filter_cpuid(&mut cpuid, cpu_index, num_cpus)?;
    set_tsc_deadline(&mut cpuid, kvm.check_extension(Cap::TscDeadlineTimer));
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::test_utils::kvm_vcpu;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if matches!(function, 0x4 | 0xb | 0x1f) {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    /// A host-like Intel CPUID: 8 threads (HT), caches L1d/L1i/L2/L3.
    fn intel_cpuid() -> CpuId {
        CpuId::from_entries(&[
            // "GenuineIntel"
            leaf(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            leaf(1, 0, [0x906ea, 0x0710_0800, 0x7ffa_fbff, 0xbfeb_fbff]),
            leaf(4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            leaf(4, 1, [0x1c00_4122, 0x01c0_003f, 0x3f, 0]),
            leaf(4, 2, [0x1c00_4143, 0x00c0_003f, 0x3ff, 0]),
            leaf(4, 3, [0x1c03_c163, 0x02c0_003f, 0x1fff, 6]),
            leaf(4, 4, [0, 0, 0, 0]),
            leaf(6, 0, [0x4, 0, 0x9, 0]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 8, 0x201, 7]),
            leaf(0xb, 2, [0, 0, 2, 7]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            leaf(0x8000_0008, 0, [0x3027, 0, 0, 0]),
        ])
        .unwrap()
    }

    #[test]
    fn leaf_1_identity_and_flags() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 3, 4).unwrap();
        let e = find(&cpuid, 1, 0);
        assert_eq!(e.ebx >> 24, 3, "initial apic id");
        assert_eq!((e.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!((e.ebx >> 8) & 0xff, 8, "clflush 64 bytes");
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
        // Feature bits are otherwise untouched.
        assert_eq!(e.eax, 0x906ea);
        assert_eq!(e.ecx & !LEAF1_ECX_HYPERVISOR, 0x7ffa_fbff);

        let mut one = intel_cpuid();
        filter_cpuid(&mut one, 0, 1).unwrap();
        let e = find(&one, 1, 0);
        assert_eq!((e.ebx >> 24, (e.ebx >> 16) & 0xff), (0, 1));
        assert_eq!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn leaf_4_cores_and_cache_sharing() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 4).unwrap();
        for index in 0..4 {
            let e = find(&cpuid, 4, index);
            assert_eq!(e.eax >> 26, 3, "cores per package - 1 (subleaf {index})");
            let level = (e.eax >> 5) & 7;
            let sharing = (e.eax >> 14) & 0xfff;
            assert_eq!(sharing, if level == 3 { 3 } else { 0 }, "subleaf {index}");
            // Cache type and level are kept.
            assert_eq!(
                e.eax & 0x3ff,
                intel_cpuid().as_slice()[2 + index as usize].eax & 0x3ff
            );
        }
        assert_eq!(find(&cpuid, 4, 4).eax, 0, "terminator stays empty");
    }

    #[test]
    fn extended_topology_matches_vcpu_count() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 5, 6).unwrap();
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let end = find(&cpuid, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 5));
        // The x2APIC ID shifted right by the core level width is the package: 0 for all.
        assert_eq!(5 >> core.eax, 0);
    }

    #[test]
    fn missing_topology_subleaves_are_added() {
        // What KVM reports on recent kernels: only subleaf 0, all zero.
        let mut cpuid = CpuId::from_entries(&[
            leaf(0, 0, [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            leaf(0xb, 0, [0, 0, 0, 0]),
            leaf(0x1f, 0, [0, 0, 0, 0]),
        ])
        .unwrap();
        filter_cpuid(&mut cpuid, 1, 2).unwrap();
        assert_eq!(cpuid.as_slice().len(), 7);
        for function in [0xb, 0x1f] {
            let core = find(&cpuid, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
            assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
            let end = find(&cpuid, function, 2);
            assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
        }
        // A CPU without the topology leaves gets none.
        let mut plain = CpuId::from_entries(&[leaf(1, 0, [0; 4])]).unwrap();
        filter_cpuid(&mut plain, 0, 1).unwrap();
        assert_eq!(plain.as_slice().len(), 1);
    }

    #[test]
    fn leaf_6_hides_epb_and_kvm_leaves_are_kept() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 2).unwrap();
        let e = find(&cpuid, 6, 0);
        assert_eq!((e.eax, e.ecx), (0x4, 0x1));
        let kvm = find(&cpuid, 0x4000_0000, 0);
        assert_eq!(
            (kvm.ebx, kvm.ecx, kvm.edx),
            (0x4b4d_564b, 0x564b_4d56, 0x4d)
        );
        // Intel: the AMD core count field is left alone.
        assert_eq!(find(&cpuid, 0x8000_0008, 0).ecx, 0);
    }

    #[test]
    fn amd_topology_leaves() {
        let mut cpuid = CpuId::from_entries(&[
            // "AuthenticAMD"
            leaf(0, 0, [0x10, AMD_VENDOR_EBX, 0x444d_4163, 0x6974_6e65]),
            leaf(1, 0, [0xa20f10, 0, 0, 0]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0x700f, 0]),
            leaf(0x8000_001e, 0, [0x10, 0x105, 0x300, 0]),
        ])
        .unwrap();
        filter_cpuid(&mut cpuid, 2, 3).unwrap();
        let e = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(e.ecx, (2 << 12) | 2);
        let e = find(&cpuid, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx), (2, 2, 0));
    }

    #[test]
    fn tsc_deadline_toggle() {
        let mut cpuid = intel_cpuid();
        set_tsc_deadline(&mut cpuid, false);
        assert_eq!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        set_tsc_deadline(&mut cpuid, true);
        assert_ne!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn id_bits_values() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(id_bits), [0, 1, 2, 2, 3, 5]);
    }

    #[test]
    fn kvm_round_trip() {
        let Some((kvm, _vm, vcpu)) = kvm_vcpu() else {
            return;
        };
        setup_cpuid(&kvm, &vcpu, 0, 2).unwrap();
        let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let e = find(&cpuid, 1, 0);
        assert_eq!(e.ebx >> 24, 0);
        assert_eq!((e.ebx >> 16) & 0xff, 2);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        if cpuid.as_slice().iter().any(|e| e.function == 0xb) {
            let core = find(&cpuid, 0xb, 1);
            assert_eq!((core.ebx, core.ecx >> 8), (2, 2));
        }
        assert!(cpuid.as_slice().iter().any(|e| e.function == 0x4000_0000));
    }
}
