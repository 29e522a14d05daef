//! Counters of the virtio-rng device, readable from any thread.

use crate::devices::virtio::metrics::device_metrics;

device_metrics! {
    /// What the entropy device did. Shared (`Arc`) between the device and whoever reports
    /// metrics.
    pub struct RngMetrics {
        /// Descriptor chains filled with entropy.
        pub requests,
        /// Bytes of entropy written to the guest.
        pub entropy_bytes,
        /// Chains answered with used length 0 because they were malformed (read-only
        /// descriptor, buffer outside guest memory, loop or dangling `next`).
        pub malformed_chains,
        /// Chains answered with used length 0 because the host entropy source failed.
        pub host_rng_fails,
        /// Avail-ring reads that failed (e.g. the driver published an impossible index).
        pub queue_errors,
        /// Used-ring updates that failed (the queue is broken; processing stops).
        pub used_ring_fails,
        /// Interrupts that could not be raised.
        pub interrupt_fails,
        /// Activations refused.
        pub activate_fails,
        /// Event-loop registration failures.
        pub event_fails,
    }
}
