//! virtio-mmio transport (virtio 1.x, "modern" register layout, Version register = 2).
//!
//! [`MmioTransport`] is the [`BusDevice`](crate::devices::bus::BusDevice) the device manager
//! puts on the MMIO bus for each virtio device (one [`MMIO_LEN`] window per device). It owns
//! the driver-facing state: feature negotiation, the device status state machine, queue
//! configuration, the interrupt status bits ([`MmioInterrupt`]) and one notification eventfd
//! per queue. On DRIVER_OK it hands the configured queues to the device
//! ([`VirtioDevice::activate`](crate::devices::virtio::VirtioDevice::activate)).
//!
//! Wiring, done by the device manager:
//! - register each of [`MmioTransport::queue_notify_evts`] as a KVM ioeventfd at
//!   `base + NOTIFY_OFFSET`, 4 bytes, datamatch = queue index (a QueueNotify write that still
//!   reaches the transport through the bus signals the same eventfd);
//! - register the irqfd passed to [`MmioTransport::new`] with KVM for the device's GSI;
//! - declare the device to the guest: `virtio_mmio.device=4K@<base>:<gsi>`.

mod interrupt;
mod transport;

#[cfg(test)]
mod tests;

pub use interrupt::{MmioInterrupt, INT_CONFIG, INT_VRING};
pub use transport::{MmioError, MmioTransport};

/// Size of one device's MMIO window (registers, then config space from [`CONFIG_OFFSET`]).
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register, where the queue ioeventfds go.
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;
