//! Counters of the vsock device.

use crate::devices::virtio::metrics::device_metrics;

device_metrics! {
    /// What the vsock device has done, and what it refused.
    pub struct VsockMetrics {
        /// Packets taken from the guest's tx queue and accepted.
        pub tx_packets,
        /// Payload bytes received from the guest.
        pub tx_bytes,
        /// Packets put on the guest's rx queue.
        pub rx_packets,
        /// Payload bytes sent to the guest.
        pub rx_bytes,
        /// Tx chains that were not a readable packet (short header, bad length, bad address).
        pub tx_malformed,
        /// Well-formed packets dropped (wrong CID or type, unknown op).
        pub tx_dropped,
        /// Rx chains unusable for a packet (too short, bad address).
        pub rx_malformed,
        /// Resets sent to the guest.
        pub rst_sent,
        /// Connections established (both directions).
        pub conns_opened,
        /// Connections removed.
        pub conns_closed,
        /// Host clients refused (bad handshake, too many connections).
        pub host_refused,
        /// Guest connections to a host port refused without `--vsock-guest-connect`.
        pub guest_connect_refused,
        /// Queue errors: the avail ring could not be read (a bad index from the driver).
        pub queue_errors,
    }
}
