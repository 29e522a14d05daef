//! virtio-mmio devices: one 4 KiB window and one interrupt each, announced to the guest on
//! the kernel command line (`virtio_mmio.device=4K@0x...:IRQ`).

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::DeviceManagerError;
use crate::arch::x86_64::layout;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_LEN, NOTIFY_OFFSET};
use crate::devices::virtio::VirtioDevice;
use crate::vstate::vcpu::Buses;
use crate::vstate::vm::Vm;

/// Hands out virtio-mmio windows and interrupts in order.
#[derive(Default)]
pub struct MmioSlots {
    used: usize,
    subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
}

impl MmioSlots {
    /// No devices yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` behind a new virtio-mmio transport: bus window, irqfd, one ioeventfd per
    /// queue, and a command line entry. `name` is used in errors and logs.
    pub fn attach<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        buses: &mut Buses,
        cmdline: &mut Cmdline,
        name: &str,
        device: Arc<Mutex<D>>,
    ) -> Result<(), DeviceManagerError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let (base, gsi) = layout::virtio_mmio_slot(self.used)
            .ok_or_else(|| DeviceManagerError::NoSlot(name.into()))?;
        let base = base.0;

        let irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| DeviceManagerError::EventFd("a virtio interrupt", e))?;
        vm.fd()
            .register_irqfd(&irq, gsi)
            .map_err(|source| DeviceManagerError::Irqfd {
                what: name.into(),
                gsi,
                source,
            })?;
        let transport = MmioTransport::new(mem.clone(), device.clone(), irq)
            .map_err(|e| DeviceManagerError::Transport(name.into(), e))?;
        for (index, evt) in transport.queue_notify_evts().iter().enumerate() {
            vm.fd()
                .register_ioevent(
                    evt.as_ref(),
                    &IoEventAddress::Mmio(base + NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(|source| DeviceManagerError::Ioeventfd {
                    what: format!("{name} queue {index}"),
                    source,
                })?;
        }
        buses
            .mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_LEN)
            .map_err(|e| DeviceManagerError::Bus(name.into(), e))?;
        cmdline
            .add_virtio_mmio_device(MMIO_LEN, GuestAddress(base), gsi, None)
            .map_err(|e| DeviceManagerError::Cmdline(name.into(), e))?;
        self.subscribers.push(device);
        self.used += 1;
        log::info!("devices: {name} at {base:#x}, irq {gsi}");
        Ok(())
    }

    /// The devices' event handlers, for the event loop.
    pub fn take_subscribers(&mut self) -> Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        std::mem::take(&mut self.subscribers)
    }
}
