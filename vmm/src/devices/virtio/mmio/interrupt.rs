//! The virtio-mmio interrupt: the InterruptStatus bits plus the irqfd that raises the guest
//! interrupt line.

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::device::{VirtioInterrupt, VirtioInterruptType};

/// InterruptStatus bit: a used buffer was added to a queue.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Interrupt state of one virtio-mmio device. Shared by the transport (which reads and
/// acknowledges the bits on the vCPU thread) and the device (which raises it from the event
/// loop), hence atomics and no lock.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl MmioInterrupt {
    /// `irqfd` is the eventfd the device manager registered with KVM for this device's GSI.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// The irqfd, for the device manager.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// Current InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clear all bits (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        let bit = match kind {
            VirtioInterruptType::Queue => INT_VRING,
            VirtioInterruptType::Config => INT_CONFIG,
        };
        // Set the bit before raising the line, so the guest handler sees why it was called.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn trigger_sets_bits_and_signals_irqfd_ack_clears_only_given_bits() {
        let irq = MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        assert!(irq.irqfd().read().is_err(), "no interrupt yet");
        irq.trigger(VirtioInterruptType::Queue).unwrap();
        irq.trigger(VirtioInterruptType::Config).unwrap();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
