//! Counters of the virtio-net device, readable from any thread.

use crate::devices::virtio::metrics::device_metrics;

device_metrics! {
    /// What one virtio-net device did. Shared (`Arc`) between the device and the metrics
    /// report.
    pub struct NetMetrics {
        /// Frames handed to the guest.
        pub rx_frames,
        /// Bytes handed to the guest (virtio-net headers included).
        pub rx_bytes,
        /// Frames read from the tap and dropped: too big for the guest's buffers, shorter than
        /// a header, or pending when the device was reset.
        pub rx_dropped,
        /// Times a frame had to wait for the guest to post receive buffers.
        pub rx_no_buffers,
        /// Frames written to the tap.
        pub tx_frames,
        /// Bytes written to the tap (virtio-net headers included).
        pub tx_bytes,
        /// Transmit chains not sent: malformed, refused by the tap, or the tap is gone.
        pub tx_dropped,
        /// Times the tap could not take a frame (EAGAIN); the chain is kept and retried.
        pub tx_eagain,
        /// Chains answered with length 0 because they were malformed (wrong direction,
        /// outside guest memory, loop or dangling `next`, no frame after the header, too long).
        pub malformed_chains,
        /// Tap read/write errors other than EAGAIN (the tap gone is one of them).
        pub tap_errors,
        /// `TUNSETOFFLOAD` failures after feature negotiation.
        pub offload_fails,
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
        /// vhost-net call signals relayed to the guest as queue interrupts (vhost=on; the
        /// frame and byte counters stay 0 then: the kernel moves the frames).
        pub vhost_calls,
    }
}
