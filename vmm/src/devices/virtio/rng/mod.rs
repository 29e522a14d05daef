//! virtio-rng: entropy from the host for the guest's /dev/hwrng.
