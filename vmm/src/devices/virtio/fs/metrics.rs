//! Counters of a virtio-fs device, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the virtio-fs frontend did. The file system work itself happens in virtiofsd; these
/// count what passes through the VMM.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Backend "used buffers" signals forwarded to the guest as queue interrupts.
    pub interrupts: AtomicU64,
    /// Interrupts that could not be raised.
    pub interrupt_fails: AtomicU64,
    /// Backend signals that arrived while the device was inactive (dropped).
    pub stray_calls: AtomicU64,
    /// Activations refused or failed.
    pub activate_fails: AtomicU64,
    /// Event-loop registration failures.
    pub event_fails: AtomicU64,
}

impl FsMetrics {
    /// Add one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Read `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
