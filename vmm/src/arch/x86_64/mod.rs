//! x86_64 boot set-up: memory layout, boot protocols (PVH and Linux boot protocol), e820,
//! GDT, registers, CPUID, MSRs, LAPIC and the MP table.

pub mod boot;
pub mod cpuid;
pub mod error;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

pub use boot::{configure_system, e820_map, initrd_load_addr, BootConfig, BootProtocol};
pub use cpuid::{filter_cpuid, setup_cpuid};
pub use error::{Error, Result};
pub use lapic::set_lint;
pub use layout::arch_memory_regions;
pub use msr::setup_msrs;
pub use regs::{setup_fpu, setup_regs, setup_sregs};

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
                eprintln!("skipped: /dev/kvm is not usable ({e})");
                return None;
            }
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        Some((kvm, vm, vcpu))
    }
}
