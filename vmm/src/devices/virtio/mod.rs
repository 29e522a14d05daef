//! virtio: the device trait, the interrupt trait, the virtio-mmio transport, and the devices.

pub mod device;
pub mod fs;
pub mod mmio;
pub mod rate_limited;
pub mod rng;
pub mod vsock;

pub use device::{ActivateError, Queue, VirtioDevice, VirtioInterrupt, VirtioInterruptType};
