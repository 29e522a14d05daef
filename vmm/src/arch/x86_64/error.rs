//! The error type of the x86_64 boot set-up.

use vm_memory::GuestMemoryError;

/// Everything that can go wrong while preparing guest memory and vCPUs for boot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a boot structure to guest memory failed.
    #[error("failed to write the {what} to guest memory")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The underlying failure.
        #[source]
        source: GuestMemoryError,
    },
    /// Guest memory does not have the shape the layout expects.
    #[error("guest memory must start at address 0 and extend past {min:#x}")]
    MemoryLayout {
        /// Smallest acceptable end of the first region.
        min: u64,
    },
    /// The kernel command line does not fit or is empty.
    #[error("kernel command line of {size} bytes is invalid (1..={max} bytes with the NUL)")]
    Cmdline {
        /// Size given (with the NUL).
        size: usize,
        /// Largest size accepted.
        max: usize,
    },
    /// The initrd does not fit in low memory above the kernel.
    #[error("initrd of {size} bytes does not fit in low memory between {low:#x} and {high:#x}")]
    InitrdTooBig {
        /// Size of the initrd.
        size: usize,
        /// Lowest usable address (end of the kernel).
        low: u64,
        /// End of low RAM.
        high: u64,
    },
    /// The initrd address or size does not fit the 32-bit fields of the boot protocol.
    #[error("initrd at {addr:#x} of {size} bytes is not addressable by the boot protocol")]
    InitrdAddress {
        /// Guest address of the initrd.
        addr: u64,
        /// Size of the initrd.
        size: usize,
    },
    /// The memory map has more entries than the boot protocol can carry.
    #[error("memory map has {0} entries, more than the boot protocol can carry")]
    TooManyE820Entries(usize),
    /// The vCPU count is zero or larger than the MP table supports.
    #[error("{0} vcpus requested, between 1 and {max} are supported", max = super::layout::MAX_VCPUS)]
    VcpuCount(u8),
    /// linux-loader refused to write the boot parameters.
    #[error("failed to write the boot parameters")]
    BootConfigurator(#[source] linux_loader::configurator::Error),
    /// A KVM ioctl failed.
    #[error("kvm ioctl {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM set fewer MSRs than asked.
    #[error("kvm set {set} of {requested} boot msrs")]
    MsrsNotAllSet {
        /// Number of MSRs asked for.
        requested: usize,
        /// Number of MSRs KVM accepted.
        set: usize,
    },
    /// A KVM list (MSRs, CPUID entries) could not be built.
    #[error("failed to build the {0} list for kvm")]
    FamList(&'static str, #[source] vmm_sys_util::fam::Error),
}

/// Result of the x86_64 boot set-up.
pub type Result<T> = std::result::Result<T, Error>;
