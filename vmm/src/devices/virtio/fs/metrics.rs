//! Counters of a virtio-fs device, readable from any thread.

use crate::devices::virtio::metrics::device_metrics;

device_metrics! {
    /// What the virtio-fs frontend did. The file system work itself happens in virtiofsd;
    /// these count what passes through the VMM.
    pub struct FsMetrics {
        /// Backend "used buffers" signals forwarded to the guest as queue interrupts.
        pub interrupts,
        /// Interrupts that could not be raised.
        pub interrupt_fails,
        /// Backend signals that arrived while the device was inactive (dropped).
        pub stray_calls,
        /// Activations refused or failed.
        pub activate_fails,
        /// Event-loop registration failures.
        pub event_fails,
    }
}
