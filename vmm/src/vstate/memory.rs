//! Guest RAM: mappings laid out around the 32-bit MMIO gap, either anonymous (private to the
//! VMM) or backed by one memfd (shareable with vhost-user backends such as virtiofsd).

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

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
    #[error("cannot create the memfd for {mib} MiB of shared guest memory")]
    Memfd {
        mib: u64,
        #[source]
        source: io::Error,
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

/// Map `mib` MiB of guest RAM, with the same layout as [`create_guest_memory`], backed by one
/// memfd mapped `MAP_SHARED`: each region records the memfd and its offset in it, so the
/// regions can be handed to another process (vhost-user `SET_MEM_TABLE`). Pages are allocated
/// only when touched. The memfd is sealed against growing and shrinking, so the process it is
/// shared with cannot truncate it under the VMM (which would turn guest memory accesses into
/// SIGBUS).
pub fn create_shared_guest_memory(mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    let size = u64::from(mib) << 20;
    let memfd_err = |source| MemoryError::Memfd {
        mib: mib.into(),
        source,
    };
    let file = Arc::new(sealed_memfd(size).map_err(memfd_err)?);
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (addr, len) in layout::arch_memory_regions(size) {
        ranges.push((addr, len, Some(FileOffset::from_arc(file.clone(), offset))));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|source| MemoryError::Map {
        mib: mib.into(),
        source,
    })
}

/// A memfd of `size` bytes that can neither grow nor shrink any more.
fn sealed_memfd(size: u64) -> io::Result<File> {
    let name = c"bulkhead-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid memfd flags.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a valid memfd with valid seal flags.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
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

    #[test]
    fn shared_memory_has_the_same_layout_on_one_sealed_memfd() {
        use std::os::fd::AsRawFd;
        use vm_memory::Bytes;

        let private = create_guest_memory(64).unwrap();
        let shared = create_shared_guest_memory(64).unwrap();
        let layout = |m: &GuestMemoryMmap| -> Vec<(u64, u64)> {
            m.iter().map(|r| (r.start_addr().0, r.len())).collect()
        };
        assert_eq!(layout(&shared), layout(&private));

        let mut offset = 0;
        let mut fds = Vec::new();
        for r in shared.iter() {
            let fo = r.file_offset().expect("every region is file-backed");
            assert_eq!(fo.start(), offset, "regions are packed in the memfd");
            offset += r.len();
            fds.push(fo.file().as_raw_fd());
        }
        fds.dedup();
        assert_eq!(fds.len(), 1, "one memfd for all regions");

        // The mapping is shared: what the guest writes is in the file.
        shared.write_obj(0xfeed_u32, GuestAddress(0x1000)).unwrap();
        let file = shared.iter().next().unwrap().file_offset().unwrap().file();
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xfeed);

        // Sealed: the file cannot be shrunk by whoever it is shared with.
        assert!(file.set_len(4096).is_err());
    }
}
