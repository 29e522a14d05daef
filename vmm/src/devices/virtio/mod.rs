//! virtio: the device trait, the interrupt trait, the virtio-mmio transport, and the devices.

pub mod device;
pub mod fs;
pub mod metrics;
pub mod mmio;
pub mod net;
pub mod rate_limited;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod vsock;

pub use device::{ActivateError, Queue, VirtioDevice, VirtioInterrupt, VirtioInterruptType};
