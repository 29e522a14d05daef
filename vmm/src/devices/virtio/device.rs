//! The contract between the virtio-mmio transport and a virtio device.
//!
//! The transport owns feature negotiation, the status state machine and queue set-up. When the
//! driver sets DRIVER_OK it hands the device its queues, each with the eventfd that the device
//! manager registered as the queue's ioeventfd, and an interrupt handle. The device then does
//! its work from the event loop (it is also an event-manager subscriber).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use virtio_queue::Queue;

/// Why an interrupt is raised; sets the matching bit of the virtio-mmio InterruptStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// A used buffer was added to a queue (bit 0).
    Queue,
    /// The device configuration changed (bit 1).
    Config,
}

/// How a device signals the guest. Implemented by the transport (ISR bits + irqfd).
pub trait VirtioInterrupt: Send + Sync {
    /// Raise the interrupt.
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()>;
}

/// Errors a device can return on activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device needs.
    #[error("driver activated {got} queues, device needs {want}")]
    QueueCount { got: usize, want: usize },
    /// A queue the driver set up is not valid in guest memory.
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    /// A host-side resource could not be set up.
    #[error("device activation failed: {0}")]
    Io(#[from] std::io::Error),
    /// Device-specific failure.
    #[error("device activation failed: {0}")]
    Other(String),
}

/// A queue handed to a device on activation.
pub struct ActivatedQueue {
    /// The queue, as the driver configured it.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (the queue's ioeventfd).
    pub notify: Arc<EventFd>,
}

/// A virtio device model behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (4 = entropy, 19 = vsock, 26 = fs, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64;
    /// Record the features the driver acknowledged (a subset of `avail_features`).
    fn set_acked_features(&mut self, features: u64);
    /// Read the device-specific configuration space at `offset`. Out-of-range bytes stay 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space. Default: ignore (read-only config).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start the device with the driver's queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError>;
    /// Stop the device and drop its queues, so the driver can set it up again.
    /// Returns false if the device cannot be reset (the transport then marks it failed).
    fn reset(&mut self) -> bool {
        false
    }
    /// Whether the device is activated.
    fn is_activated(&self) -> bool;
}
