//! x86_64 boot set-up: memory layout, boot protocols (PVH and Linux boot protocol), e820,
//! GDT, registers, CPUID, MSRs, LAPIC and the MP table.
//!
//! Boot order expected from the caller:
//! 1. guest memory from [`arch_memory_regions`]; `KVM_CREATE_IRQCHIP` before any vCPU;
//! 2. load the kernel, the command line at [`layout::CMDLINE_START`] and the initrd at
//!    [`initrd_load_addr`];
//! 3. [`configure_system`] once (MP table, zero page or PVH start info);
//! 4. [`configure_vcpu`] for each vCPU (CPUID first, then MSRs, registers, FPU, LAPIC).

pub mod boot;
pub mod cpuid;
pub mod error;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

pub use boot::{
    configure_system, e820_map, initrd_load_addr, supports_64bit_entry, BootConfig, BootProtocol,
    KERNEL_64BIT_ENTRY_OFFSET,
};
pub use cpuid::{filter_cpuid, setup_cpuid};
pub use error::{Error, Result};
pub use lapic::set_lint;
pub use layout::arch_memory_regions;
pub use msr::setup_msrs;
pub use regs::{setup_fpu, setup_regs, setup_sregs};

use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Prepares vCPU `cpu_index` of `num_cpus` to enter the kernel at `entry` (the PVH entry
/// point, or the 64-bit entry `load address + 0x200` of a `bzImage`): CPUID, MSRs, general,
/// segment and control registers (writing the boot GDT and page tables to `mem`), FPU and
/// LAPIC LINT pins. Needs the in-kernel irqchip.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    cpu_index: u8,
    num_cpus: u8,
    entry: GuestAddress,
    protocol: BootProtocol,
) -> Result<()> {
    setup_cpuid(kvm, vcpu, cpu_index, num_cpus)?;
    setup_msrs(vcpu)?;
    setup_regs(vcpu, entry, protocol)?;
    setup_sregs(mem, vcpu, protocol)?;
    setup_fpu(vcpu)?;
    set_lint(vcpu)
}

#[cfg(test)]
pub(crate) mod test_utils {
    use kvm_ioctls::{Kvm, VcpuFd, VmFd};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// Anonymous guest memory of `size` bytes from address 0.
    pub fn test_mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// A VM with an in-kernel irqchip and one vCPU, or `None` (with a message) without KVM.
    pub fn kvm_vcpu() -> Option<(Kvm, VmFd, VcpuFd)> {
        let kvm = match Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                bulkhead_test_skip::skip(format!("/dev/kvm is not usable ({e})"));
                return None;
            }
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        Some((kvm, vm, vcpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_vcpu_on_kvm() {
        let Some((kvm, _vm, vcpu)) = test_utils::kvm_vcpu() else {
            return;
        };
        let mem = test_utils::test_mem(16 << 20);
        configure_vcpu(
            &kvm,
            &vcpu,
            &mem,
            0,
            2,
            GuestAddress(0x10_0200),
            BootProtocol::LinuxBoot,
        )
        .unwrap();
        assert_eq!(vcpu.get_regs().unwrap().rip, 0x10_0200);
        assert_eq!(vcpu.get_sregs().unwrap().cr3, layout::PML4_START);
    }
}
