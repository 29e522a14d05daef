//! Limits of a microVM, as the VMM enforces them and the host sizes VMs against them.

/// Fewest vCPUs a VM can have.
pub const MIN_VCPUS: u8 = 1;
/// Most vCPUs a VM can have (the MP table and the LAPIC ID space are sized for this).
pub const MAX_VCPUS: u8 = 32;
/// Least guest memory in MiB: a Linux kernel with an initramfs does not come up in less.
pub const MIN_MEMORY_MIB: u32 = 32;
/// Most guest memory in MiB, whatever the host has.
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// Longest kernel command line, including the entries the VMM adds and the final NUL
/// (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_LEN: usize = 2048;
/// The kernel command line used when none is given (`--cmdline`). `quiet`: the kernel
/// prints only warnings and worse on the serial console, where every byte is a VM exit
/// (about 10 KB of boot messages otherwise; seconds of boot under nested emulation).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 quiet reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// Longest virtio-fs tag, in bytes (the `tag[36]` field of the device's configuration space).
pub const FS_TAG_MAX_LEN: usize = 36;
/// The first guest context ID that is not reserved (0-2 are).
pub const MIN_GUEST_CID: u64 = 3;
