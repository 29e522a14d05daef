//! Counters of the virtio-rng device, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the entropy device did. Shared (`Arc`) between the device and whoever reports metrics.
#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Descriptor chains filled with entropy.
    pub requests: AtomicU64,
    /// Bytes of entropy written to the guest.
    pub entropy_bytes: AtomicU64,
    /// Chains answered with used length 0 because they were malformed (read-only descriptor,
    /// buffer outside guest memory, loop or dangling `next`).
    pub malformed_chains: AtomicU64,
    /// Chains answered with used length 0 because the host entropy source failed.
    pub host_rng_fails: AtomicU64,
    /// Avail-ring reads that failed (e.g. the driver published an impossible index).
    pub queue_errors: AtomicU64,
    /// Used-ring updates that failed (the queue is broken; processing stops).
    pub used_ring_fails: AtomicU64,
    /// Interrupts that could not be raised.
    pub interrupt_fails: AtomicU64,
    /// Activations refused.
    pub activate_fails: AtomicU64,
    /// Event-loop registration failures.
    pub event_fails: AtomicU64,
}

impl RngMetrics {
    /// Add one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Read `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
