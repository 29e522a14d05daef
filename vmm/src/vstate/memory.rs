//! Guest RAM: anonymous mappings laid out around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Map `mib` MiB of guest RAM. Pages are touched only when the guest uses them.
pub fn create_guest_memory(mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    let size = u64::from(mib) << 20;
    let regions: Vec<(GuestAddress, usize)> = layout::arch_memory_regions(size);
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Map {
        mib: mib.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn maps_the_requested_size() {
        let mem = create_guest_memory(64).unwrap();
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 64 << 20);
    }
}
