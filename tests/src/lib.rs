//! End-to-end test support: locating the guest kernel, building test initramfs images,
//! running the VMM with timeouts.
