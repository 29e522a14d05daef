//! Wires device models to KVM: the port I/O and MMIO buses, irqfds, ioeventfds, and the
//! kernel command line entries that tell the guest where virtio-mmio devices are. This is the
//! only place that hands device eventfds to KVM.

mod legacy;
mod mmio;

pub use legacy::LegacyDevices;
pub use mmio::MmioSlots;

/// Errors wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    #[error("cannot register the interrupt for {what} (GSI {gsi}) with KVM")]
    Irqfd {
        what: String,
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot register the queue notification for {what} with KVM")]
    Ioeventfd {
        what: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot place {0} on the bus")]
    Bus(String, #[source] crate::devices::bus::BusError),
    #[error("no free virtio-mmio slot or interrupt left for {0}")]
    NoSlot(String),
    #[error("cannot add {0} to the kernel command line")]
    Cmdline(String, #[source] linux_loader::cmdline::Error),
    #[error("cannot set up the virtio-mmio transport for {0}")]
    Transport(String, #[source] crate::devices::virtio::mmio::MmioError),
}
