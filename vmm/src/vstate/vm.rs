//! The KVM VM: capability checks, guest memory slots, the in-kernel irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Where KVM puts the three-page TSS it needs on Intel hosts (just below 4 GiB, in the gap).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Where KVM puts its identity-map page (the page before the TSS).
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Capabilities the VMM cannot work without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::Irqfd, "irqfd"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::ExtCpuid, "CPUID set-up"),
];

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm (is KVM enabled and do you have access to it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM lacks a capability the VMM needs: {0}")]
    MissingCap(&'static str),
    #[error("cannot create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot register guest memory slot {slot} with KVM")]
    MemorySlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// An open KVM VM.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Open `/dev/kvm`, check the capabilities we rely on and create a VM.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        Ok(Vm { kvm, fd })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM handle.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Give KVM every region of guest memory, one slot each.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MemorySlot {
                    slot,
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the caller keeps
            // alive for as long as the VM runs (the VMM holds both until it exits).
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        Ok(())
    }

    /// Create the in-kernel interrupt controllers (PIC, IOAPIC, per-vCPU LAPIC) and the PIT.
    /// Must come before the vCPUs are created.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        let setup = |what, r: Result<(), kvm_ioctls::Error>| {
            r.map_err(|source| VmError::Setup { what, source })
        };
        setup("the TSS address", self.fd.set_tss_address(KVM_TSS_ADDRESS))?;
        setup(
            "the identity map address",
            self.fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS),
        )?;
        setup("the in-kernel irqchip", self.fd.create_irq_chip())?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        setup("the in-kernel PIT", self.fd.create_pit2(pit))
    }
}
