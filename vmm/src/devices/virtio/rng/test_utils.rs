//! Test helpers for the rng device: its guest memory and an activated device. The helpers
//! every device shares (fake interrupt, descriptors, used ring) are
//! [`crate::devices::virtio::test_utils`], re-exported here.

use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::Rng;
use crate::devices::virtio::device::VirtioDevice;
pub use crate::devices::virtio::test_utils::*;

pub const TEST_MEM_SIZE: usize = 0x10_0000;
/// Where test buffers go (the mock queue's rings live below it).
pub const BUF: u64 = 0x1_0000;

pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), TEST_MEM_SIZE)]).unwrap()
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
