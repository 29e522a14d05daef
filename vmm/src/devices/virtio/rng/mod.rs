//! virtio-rng: entropy from the host for the guest's /dev/hwrng.
//!
//! The device (ID 4) has one request queue. Each descriptor chain the driver posts must consist
//! of device-writable buffers; the device fills them from the host's getrandom(2), at most
//! [`MAX_BYTES_PER_CHAIN`] bytes per chain, and returns the chain with the number of bytes
//! written. Malformed chains (a device-readable descriptor, a buffer outside guest memory, a
//! loop or a dangling `next`) are returned with length 0 and counted in [`RngMetrics`].
//!
//! # The device event pattern (copy it for other devices)
//!
//! A device is shared as **one `Arc<Mutex<Device>>`** by two threads:
//! - the vCPU thread, through the virtio-mmio transport, which sees it as
//!   `Arc<Mutex<dyn VirtioDevice>>`;
//! - the event loop, an `EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>`, which sees
//!   the same object as a subscriber. The device itself implements `MutEventSubscriber` (in
//!   `event_handler.rs`); no wrapper is needed, because event-manager implements the subscriber
//!   traits for `Arc<Mutex<T>>`.
//!
//! ```ignore
//! let rng = Arc::new(Mutex::new(Rng::new()?));
//! event_manager.add_subscriber(rng.clone());          // event loop side
//! let transport = MmioTransport::new(mem, rng, irqfd)?; // vCPU side
//! ```
//!
//! The hand-over between the two threads goes through one eventfd, `activate_evt`:
//! 1. `init()` (event loop) registers `activate_evt`.
//! 2. `activate()` (vCPU thread, on DRIVER_OK) stores memory, interrupt and queues, moves the
//!    device to its active state, and writes `activate_evt`. It touches no epoll state: only
//!    the event loop may (its `EventOps` is not available elsewhere).
//! 3. On `activate_evt` the event loop *syncs* its registrations with the device state: it
//!    removes the queue eventfds it registered earlier, adds the current ones if the device is
//!    active, then processes the queues once (the driver may have kicked before we listened).
//! 4. `reset()` (vCPU thread, on status 0) drops the queues, goes inactive, and writes
//!    `activate_evt` again; step 3 then only removes. Because step 3 always compares with the
//!    current state, any interleaving of activate/reset/activate before the loop runs ends
//!    with the right registrations.
//! 5. On a queue eventfd the loop reads it and processes that queue. An inactive device
//!    ignores queue work, so a stale event after a reset is harmless.
//!
//! Lock order: the vCPU thread takes the transport lock, then the device lock; the event loop
//! takes only the device lock and raises interrupts through atomics and the irqfd, never the
//! transport. So the two cannot deadlock.

mod device;
mod event_handler;
mod metrics;
#[cfg(test)]
mod test_utils;

pub use device::{Rng, RngError, MAX_BYTES_PER_CHAIN, RNG_QUEUE_SIZE};
pub use metrics::RngMetrics;
