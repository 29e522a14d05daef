//! Test helpers for the rng device: guest memory, descriptors, a fake interrupt, used-ring
//! readers. Other devices' tests can borrow the shape.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Rng;
use crate::devices::virtio::device::{
    ActivatedQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};

pub const TEST_MEM_SIZE: usize = 0x10_0000;
/// Where test buffers go (the mock queue's rings live below it).
pub const BUF: u64 = 0x1_0000;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), TEST_MEM_SIZE)]).unwrap()
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Records every interrupt raised.
#[derive(Default)]
pub struct FakeInterrupt {
    pub raised: Mutex<Vec<VirtioInterruptType>>,
}

impl FakeInterrupt {
    pub fn queue_count(&self) -> usize {
        self.raised
            .lock()
            .unwrap()
            .iter()
            .filter(|k| **k == VirtioInterruptType::Queue)
            .count()
    }
}

impl VirtioInterrupt for FakeInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        self.raised.lock().unwrap().push(kind);
        Ok(())
    }
}

/// The mock queue as the transport would hand it over, with a fresh notify eventfd.
pub fn activated_queue(vq: &MockSplitQueue<GuestMemoryMmap>) -> ActivatedQueue {
    ActivatedQueue {
        queue: vq.create_queue().unwrap(),
        notify: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
    }
}

/// An rng device activated on `vq` (activation event already consumed).
pub fn active_rng(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
) -> (Rng, Arc<FakeInterrupt>) {
    let irq = Arc::new(FakeInterrupt::default());
    let mut rng = Rng::new().unwrap();
    rng.activate(mem.clone(), irq.clone(), vec![activated_queue(vq)])
        .unwrap();
    rng.activate_evt.read().unwrap();
    (rng, irq)
}

/// The used ring as (descriptor head, length) pairs.
pub fn used(vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}
