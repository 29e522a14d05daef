//! virtio-net: a network device (ID 1) whose frames go to and from a host tap.
//!
//! Two queues, receive (0) and transmit (1), no control queue. The tap is attached with a
//! 12-byte virtio-net header (`virtio_net_hdr_v1`) on every frame, so offload metadata
//! (partial checksums, GSO) passes between guest and host kernel unchanged:
//! - `tap.rs`: attaching the tap (by name, or an inherited fd), probing its offloads;
//! - `device.rs`: features, configuration space (MAC, link status, MTU), activation, and the
//!   `TUNSETOFFLOAD` mapping of the features the guest accepted;
//! - `chain.rs`: checking a guest descriptor chain before any byte moves;
//! - `rx.rs` / `tx.rs`: moving frames, with receive back-pressure and transmit EAGAIN;
//! - `event_handler.rs`: the event-loop side (the pattern of [`rng`](super::rng));
//! - `vhost.rs`: the optional vhost-net backend (`--net ...,vhost=on`): the kernel moves the
//!   frames between tap and rings, the VMM only sets it up on activation, stops it on reset
//!   and relays its interrupts.
//!
//! What a guest can do wrong (malformed chains, buffers too short, a broken ring) is answered
//! with a used length of 0, counted in [`NetMetrics`] and logged through a rate limiter; a tap
//! that fails for good (deleted: EBADFD) is logged once, reported to the guest as link down,
//! and no longer watched, so nothing spins.

mod chain;
mod device;
mod event_handler;
mod metrics;
mod rx;
mod tap;
mod tx;
mod vhost;

#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;

pub use device::{
    offered_features, random_mac, tap_offload_flags, Net, NetError, MAX_BUFFER_LEN, MAX_FRAME_LEN,
    NET_QUEUE_SIZE,
};
pub use metrics::NetMetrics;
pub use tap::{Tap, TapError, TapIo, TapOffloads, VNET_HDR_LEN};
pub use vhost::{VhostNet, VhostNetError, VHOST_NET_PATH};
