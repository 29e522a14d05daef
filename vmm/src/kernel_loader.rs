//! Loading the guest kernel (ELF `vmlinux`, preferably with a PVH entry note, or `bzImage`)
//! and the initramfs into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64 as arch;
use crate::arch::x86_64::BootProtocol;

/// Errors loading the kernel or initramfs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read kernel {path}")]
    KernelIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(PathBuf),
    #[error(
        "cannot load kernel {path} into guest memory (corrupt image or too little guest memory)"
    )]
    Kernel {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("bzImage {0} has no setup header")]
    NoSetupHeader(PathBuf),
    #[error(
        "bzImage {0} has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64 needed)"
    )]
    No64BitEntry(PathBuf),
    #[error("cannot read initramfs {path}")]
    InitrdIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        #[source]
        source: Option<arch::Error>,
    },
    #[error("cannot copy initramfs {path} into guest memory")]
    InitrdCopy {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the kernel landed and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The first instruction the boot vCPU runs.
    pub entry: GuestAddress,
    /// PVH (32-bit entry, `hvm_start_info`) or the Linux boot protocol (64-bit, zero page).
    pub protocol: BootProtocol,
    /// The bzImage's setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// First guest address after the kernel image.
    pub end: GuestAddress,
}

/// Where the initramfs landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: usize,
}

enum Format {
    Elf,
    BzImage,
}

fn sniff(file: &mut File) -> std::io::Result<Option<Format>> {
    let mut head = [0u8; 0x206];
    let n = read_up_to(file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(Format::Elf));
    }
    // Linux boot protocol: "HdrS" at 0x202.
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Some(Format::BzImage));
    }
    Ok(None)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Load the kernel at `path`. An ELF with a PVH note boots by PVH; an ELF without one boots
/// at its 64-bit entry with the Linux boot protocol; a bzImage boots by the Linux boot protocol.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoadError> {
    let io_err = |source| LoadError::KernelIo {
        path: path.to_path_buf(),
        source,
    };
    let load_err = |source| LoadError::Kernel {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let himem = Some(GuestAddress(arch::layout::HIMEM_START));
    match sniff(&mut file).map_err(io_err)? {
        Some(Format::Elf) => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            let (entry, protocol) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr, BootProtocol::Pvh),
                _ => (r.kernel_load, BootProtocol::LinuxBoot),
            };
            Ok(LoadedKernel {
                entry,
                protocol,
                setup_header: None,
                end: GuestAddress(r.kernel_end),
            })
        }
        Some(Format::BzImage) => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            let header = r
                .setup_header
                .ok_or_else(|| LoadError::NoSetupHeader(path.to_path_buf()))?;
            if !arch::supports_64bit_entry(&header) {
                return Err(LoadError::No64BitEntry(path.to_path_buf()));
            }
            Ok(LoadedKernel {
                entry: GuestAddress(r.kernel_load.0 + arch::KERNEL_64BIT_ENTRY_OFFSET),
                protocol: BootProtocol::LinuxBoot,
                setup_header: Some(header),
                end: GuestAddress(r.kernel_end),
            })
        }
        None => Err(LoadError::UnknownFormat(path.to_path_buf())),
    }
}

/// Copy the initramfs at `path` to the highest place in low memory it fits.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: GuestAddress,
) -> Result<LoadedInitrd, LoadError> {
    let io_err = |source| LoadError::InitrdIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let too_big = |source| LoadError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        source,
    };
    let size_usize = usize::try_from(size).map_err(|_| LoadError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        source: None,
    })?;
    let addr = arch::initrd_load_addr(mem, size_usize, kernel_end).map_err(|e| too_big(Some(e)))?;
    mem.read_exact_volatile_from(addr, &mut file, size_usize)
        .map_err(|source| LoadError::InitrdCopy {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(LoadedInitrd {
        addr,
        size: size_usize,
    })
}
