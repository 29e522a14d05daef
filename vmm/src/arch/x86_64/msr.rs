//! Model-specific registers set before boot: the syscall/sysenter MSRs cleared, the TSC at
//! zero, fast string operations enabled and MTRRs enabled with write-back as default type.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::error::{Error, Result};

/// `IA32_TIME_STAMP_COUNTER`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MISC_ENABLE` bit 0: fast string operations.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
/// `IA32_MTRR_DEF_TYPE`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `IA32_MTRR_DEF_TYPE` value: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;
/// `IA32_STAR`.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `IA32_CSTAR`.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `IA32_FMASK` (syscall flag mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `IA32_KERNEL_GS_BASE`.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The boot MSR values, in the order they are given to KVM.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
}

/// Sets the boot MSRs of `vcpu`; fails if KVM accepts fewer than all of them.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|e| Error::FamList("msr", e))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| Error::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(Error::MsrsNotAllSet {
            requested: entries.len(),
            set,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::test_utils::kvm_vcpu;

    #[test]
    fn boot_list_has_each_msr_once_with_its_value() {
        let entries = boot_msr_entries();
        let mut indices: Vec<u32> = entries.iter().map(|e| e.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), entries.len());
        let value = |index| entries.iter().find(|e| e.index == index).unwrap().data;
        assert_eq!(value(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(value(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(value(MSR_LSTAR), 0);
        assert_eq!(value(MSR_IA32_SYSENTER_CS), 0);
    }

    #[test]
    fn kvm_round_trip() {
        let Some((_kvm, _vm, vcpu)) = kvm_vcpu() else {
            return;
        };
        // Dirty a few values first so the round trip shows setup_msrs wrote them.
        let dirty = Msrs::from_entries(&[entry(MSR_LSTAR, 0xffff_ffff_8100_0000)]).unwrap();
        assert_eq!(vcpu.set_msrs(&dirty).unwrap(), 1);

        setup_msrs(&vcpu).unwrap();

        let expected = boot_msr_entries();
        let query: Vec<_> = expected.iter().map(|e| entry(e.index, 0xdead)).collect();
        let mut msrs = Msrs::from_entries(&query).unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), expected.len());
        for (got, want) in msrs.as_slice().iter().zip(&expected) {
            assert_eq!(got.index, want.index);
            if want.index == MSR_IA32_TSC {
                // KVM treats a host write of 0 as "synchronise with the VM's other vCPUs",
                // so the value read back is not 0; setup_msrs checked that KVM took it.
            } else if want.index == MSR_IA32_MISC_ENABLE {
                assert_eq!(got.data & 1, 1, "fast strings");
            } else {
                assert_eq!(got.data, want.data, "msr {:#x}", want.index);
            }
        }
    }
}
