//! Boot protocol data in guest memory: the e820 memory map, the Linux zero page
//! (`boot_params`) or the PVH `hvm_start_info`, the MP table, and where the initrd goes.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{Error, Result};
use super::layout::{
    CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::mptable::setup_mptable;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `setup_header.boot_flag` magic.
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `setup_header.header` magic ("HdrS").
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `setup_header.type_of_loader`: undefined boot loader.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Kernel alignment used when the image has no setup header (ELF `vmlinux`).
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `setup_header.xloadflags`: the kernel has the 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
pub const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Page size used to align the initrd.
const PAGE_SIZE: u64 = 4096;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode entry from the ELF note, `hvm_start_info` in `rbx`.
    Pvh,
    /// Linux boot protocol, 64-bit entry (`bzImage` load address + 0x200), zero page in `rsi`.
    LinuxBoot,
}

/// What [`configure_system`] needs to describe the machine to the kernel.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig {
    /// Boot protocol.
    pub protocol: BootProtocol,
    /// Guest address of the NUL-terminated kernel command line (normally
    /// [`super::layout::CMDLINE_START`]).
    pub cmdline_addr: GuestAddress,
    /// Size of the command line including its NUL.
    pub cmdline_size: usize,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(GuestAddress, usize)>,
    /// Number of vCPUs.
    pub num_vcpus: u8,
    /// The `bzImage` setup header (`KernelLoaderResult::setup_header`), for the Linux boot
    /// protocol; `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
}

/// One entry of the e820 map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Whether a `bzImage` with this setup header can be entered through the 64-bit entry point
/// (boot protocol 2.12+ with `XLF_KERNEL_64`), as [`BootProtocol::LinuxBoot`] does.
pub fn supports_64bit_entry(hdr: &setup_header) -> bool {
    hdr.header == KERNEL_HDR_MAGIC && hdr.version >= 0x20c && hdr.xloadflags & XLF_KERNEL_64 != 0
}

/// End (exclusive) of the first memory region, which must start at 0 and reach past 1 MiB.
fn low_ram_end(mem: &GuestMemoryMmap) -> Result<u64> {
    let first = mem
        .iter()
        .next()
        .ok_or(Error::MemoryLayout { min: HIMEM_START })?;
    let end = first.start_addr().0 + first.len();
    if first.start_addr().0 != 0 || end <= HIMEM_START {
        return Err(Error::MemoryLayout { min: HIMEM_START });
    }
    Ok(end)
}

/// The e820 map of `mem`: RAM below the EBDA, the legacy area reserved (MP table, VGA, BIOS),
/// RAM from 1 MiB to the end of the first region, then every further region as RAM. The
/// 32-bit MMIO gap, having no memory region, is not in the map.
pub fn e820_map(mem: &GuestMemoryMmap) -> Result<Vec<E820Entry>> {
    let low_end = low_ram_end(mem)?;
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    map.extend(mem.iter().skip(1).map(|region| E820Entry {
        addr: region.start_addr().0,
        size: region.len(),
        kind: E820_RAM,
    }));
    Ok(map)
}

/// Highest page-aligned address at which an initrd of `initrd_size` bytes fits in low RAM
/// (below the end of the first region, so below the 32-bit MMIO gap) and at or above
/// `kernel_end` (the end of the loaded kernel, `KernelLoaderResult::kernel_end`).
pub fn initrd_load_addr(
    mem: &GuestMemoryMmap,
    initrd_size: usize,
    kernel_end: GuestAddress,
) -> Result<GuestAddress> {
    let high = low_ram_end(mem)?.min(MMIO_GAP_START);
    let low = kernel_end.0.max(HIMEM_START);
    let too_big = Error::InitrdTooBig {
        size: initrd_size,
        low,
        high,
    };
    let addr = high.checked_sub(initrd_size as u64).ok_or(too_big)? & !(PAGE_SIZE - 1);
    if addr < low {
        return Err(Error::InitrdTooBig {
            size: initrd_size,
            low,
            high,
        });
    }
    Ok(GuestAddress(addr))
}

fn check_cmdline(cfg: &BootConfig) -> Result<u32> {
    let bad = Error::Cmdline {
        size: cfg.cmdline_size,
        max: CMDLINE_MAX_SIZE,
    };
    if cfg.cmdline_size == 0 || cfg.cmdline_size > CMDLINE_MAX_SIZE {
        return Err(bad);
    }
    u32::try_from(cfg.cmdline_addr.0).map_err(|_| bad)
}

/// The zero page for the Linux boot protocol.
pub fn build_boot_params(cfg: &BootConfig, e820: &[E820Entry]) -> Result<boot_params> {
    let cmdline_ptr = check_cmdline(cfg)?;
    let mut params = boot_params::default();
    match cfg.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES,
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = cmdline_ptr;
    params.ext_cmd_line_ptr = 0;
    if let Some((addr, size)) = cfg.initrd {
        let bad = || Error::InitrdAddress { addr: addr.0, size };
        params.hdr.ramdisk_image = u32::try_from(addr.0).map_err(|_| bad())?;
        params.hdr.ramdisk_size = u32::try_from(size).map_err(|_| bad())?;
    }
    if e820.len() > params.e820_table.len() {
        return Err(Error::TooManyE820Entries(e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// The PVH start info, memory map and module list.
pub fn build_pvh_info(
    cfg: &BootConfig,
    e820: &[E820Entry],
) -> Result<(
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Option<hvm_modlist_entry>,
)> {
    check_cmdline(cfg)?;
    if e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::TooManyE820Entries(e820.len()));
    }
    let memmap: Vec<_> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let module = cfg.initrd.map(|(addr, size)| hvm_modlist_entry {
        paddr: addr.0,
        size: size as u64,
        cmdline_paddr: 0,
        reserved: 0,
    });
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: cfg.cmdline_addr.0,
        rsdp_paddr: 0,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    Ok((start_info, memmap, module))
}

/// Writes everything the kernel reads at boot except the kernel, initrd and command line
/// themselves: the MP table and, depending on the protocol, the zero page or the PVH start
/// info with its memory map and module list.
pub fn configure_system(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<()> {
    setup_mptable(mem, cfg.num_vcpus)?;
    let e820 = e820_map(mem)?;
    match cfg.protocol {
        BootProtocol::LinuxBoot => {
            let params = build_boot_params(cfg, &e820)?;
            let boot = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&boot, mem)
                .map_err(Error::BootConfigurator)
        }
        BootProtocol::Pvh => {
            let (start_info, memmap, module) = build_pvh_info(cfg, &e820)?;
            let mut boot = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
            boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if let Some(module) = module {
                boot.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&boot, mem)
                .map_err(Error::BootConfigurator)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{arch_memory_regions, CMDLINE_START, MPTABLE_START};
    use crate::arch::x86_64::test_utils::test_mem;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    fn config(protocol: BootProtocol) -> BootConfig {
        BootConfig {
            protocol,
            cmdline_addr: GuestAddress(CMDLINE_START),
            cmdline_size: 20,
            initrd: Some((GuestAddress(0x3f0_0000), 0x8_0000)),
            num_vcpus: 2,
            setup_header: None,
        }
    }

    #[test]
    fn e820_for_small_memory() {
        let mem = test_mem(64 * MIB as usize);
        let map = e820_map(&mem).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9_fc00,
                    size: 0x6_0400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: 63 * MIB,
                    kind: E820_RAM
                },
            ]
        );
        // The MP table is inside the reserved range, not RAM.
        assert!((map[1].addr..map[1].addr + map[1].size).contains(&MPTABLE_START));
    }

    #[test]
    fn e820_skips_the_mmio_gap() {
        let size = 5 << 30;
        let mem = GuestMemoryMmap::<()>::from_ranges(&arch_memory_regions(size)).unwrap();
        let map = e820_map(&mem).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!((map[3].addr, map[3].size), (1 << 32, size - MMIO_GAP_START));
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_rejects_memory_not_starting_at_zero() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x20_0000)]).unwrap();
        assert!(matches!(e820_map(&mem), Err(Error::MemoryLayout { .. })));
    }

    #[test]
    fn initrd_goes_to_top_of_low_ram_page_aligned() {
        let mem = test_mem(64 * MIB as usize);
        let addr = initrd_load_addr(&mem, 0x1234, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(addr.0, 64 * MIB - 0x2000);
        let exact = initrd_load_addr(&mem, 0x1000, GuestAddress(0)).unwrap();
        assert_eq!(exact.0, 64 * MIB - 0x1000);
    }

    #[test]
    fn initrd_stays_below_the_gap_with_large_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&arch_memory_regions(5 << 30)).unwrap();
        let addr = initrd_load_addr(&mem, 4096, GuestAddress(0)).unwrap();
        assert_eq!(addr.0, MMIO_GAP_START - 4096);
    }

    #[test]
    fn initrd_that_does_not_fit_is_an_error() {
        let mem = test_mem(64 * MIB as usize);
        // Larger than memory.
        assert!(matches!(
            initrd_load_addr(&mem, 65 * MIB as usize, GuestAddress(0)),
            Err(Error::InitrdTooBig { .. })
        ));
        // Fits in memory but would overlap the kernel.
        assert!(matches!(
            initrd_load_addr(&mem, 40 * MIB as usize, GuestAddress(30 * MIB)),
            Err(Error::InitrdTooBig { .. })
        ));
        assert!(initrd_load_addr(&mem, 34 * MIB as usize, GuestAddress(30 * MIB)).is_ok());
    }

    #[test]
    fn linux_zero_page_read_back() {
        let mem = test_mem(64 * MIB as usize);
        let mut hdr = setup_header {
            loadflags: 1,
            kernel_alignment: 0x20_0000,
            version: 0x20f,
            ..Default::default()
        };
        hdr.cmdline_size = 2047;
        let cfg = BootConfig {
            setup_header: Some(hdr),
            ..config(BootProtocol::LinuxBoot)
        };
        configure_system(&mem, &cfg).unwrap();

        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.ramdisk_image }, 0x3f0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x8_0000);
        // Fields from the kernel's own header are kept.
        assert_eq!({ hdr.loadflags }, 1);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.version }, 0x20f);
        assert_eq!(params.e820_entries, 3);
        let e = params.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (0x9_fc00, 0x6_0400, 2)
        );
        let e = params.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM_START, 63 * MIB, 1)
        );
        // The MP table was written too.
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }

    #[test]
    fn linux_zero_page_without_setup_header_or_initrd() {
        let mem = test_mem(64 * MIB as usize);
        let cfg = BootConfig {
            initrd: None,
            ..config(BootProtocol::LinuxBoot)
        };
        configure_system(&mem, &cfg).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.kernel_alignment }, KERNEL_MIN_ALIGNMENT_BYTES);
        assert_eq!(
            ({ params.hdr.ramdisk_image }, { params.hdr.ramdisk_size }),
            (0, 0)
        );
    }

    #[test]
    fn pvh_start_info_read_back() {
        let mem = test_mem(64 * MIB as usize);
        configure_system(&mem, &config(BootProtocol::Pvh)).unwrap();

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!((info.magic, info.version), (0x336e_c578, 1));
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        assert_eq!(
            (info.memmap_paddr, info.memmap_entries),
            (PVH_MEMMAP_START, 3)
        );

        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x3f0_0000, 0x8_0000));

        let entries: Vec<hvm_memmap_table_entry> = (0..u64::from(info.memmap_entries))
            .map(|i| {
                mem.read_obj(GuestAddress(info.memmap_paddr + i * 24))
                    .unwrap()
            })
            .collect();
        assert_eq!(
            (entries[0].addr, entries[0].size, entries[0].type_),
            (0, 0x9_fc00, 1)
        );
        assert_eq!((entries[1].addr, entries[1].type_), (0x9_fc00, 2));
        assert_eq!(
            (entries[2].addr, entries[2].size, entries[2].type_),
            (HIMEM_START, 63 * MIB, 1)
        );
        // Nothing was written to the zero page.
        let zero: u64 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1f0)).unwrap();
        assert_eq!(zero, 0);
    }

    #[test]
    fn pvh_without_initrd_has_no_modules() {
        let mem = test_mem(64 * MIB as usize);
        let cfg = BootConfig {
            initrd: None,
            ..config(BootProtocol::Pvh)
        };
        configure_system(&mem, &cfg).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn detects_the_64bit_entry() {
        let hdr = setup_header {
            header: KERNEL_HDR_MAGIC,
            version: 0x20f,
            xloadflags: 0x7f,
            ..Default::default()
        };
        assert!(supports_64bit_entry(&hdr));
        assert!(!supports_64bit_entry(&setup_header {
            xloadflags: 0x7e,
            ..hdr
        }));
        assert!(!supports_64bit_entry(&setup_header {
            version: 0x20b,
            ..hdr
        }));
        assert!(!supports_64bit_entry(&setup_header { header: 0, ..hdr }));
    }

    #[test]
    fn bad_cmdline_size_is_rejected() {
        let mem = test_mem(64 * MIB as usize);
        for size in [0, CMDLINE_MAX_SIZE + 1] {
            for protocol in [BootProtocol::Pvh, BootProtocol::LinuxBoot] {
                let cfg = BootConfig {
                    cmdline_size: size,
                    ..config(protocol)
                };
                assert!(matches!(
                    configure_system(&mem, &cfg),
                    Err(Error::Cmdline { .. })
                ));
            }
        }
    }
}
