//! Loading the guest kernel (ELF vmlinux with PVH note, or bzImage) and initramfs.
