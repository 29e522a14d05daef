//! Test helpers shared by every virtio device's tests (as Firecracker's
//! `devices/virtio/test_utils.rs`): a fake interrupt that records what was raised, split
//! descriptors for virtio-queue's `MockSplitQueue`, a queue as the transport hands it over,
//! and a reader for the used ring.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::lock;
use crate::devices::virtio::device::{ActivatedQueue, VirtioInterrupt, VirtioInterruptType};

/// Descriptor flag: the device writes this buffer.
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the chain continues at `next`.
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// A split descriptor for `MockSplitQueue::add_desc_chains` and friends.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Records every interrupt raised.
#[derive(Default)]
pub struct FakeInterrupt {
    pub raised: Mutex<Vec<VirtioInterruptType>>,
}

impl FakeInterrupt {
    /// Interrupts raised so far, of any kind.
    pub fn count(&self) -> usize {
        lock(&self.raised).len()
    }

    /// Queue interrupts raised so far.
    pub fn queue_count(&self) -> usize {
        lock(&self.raised)
            .iter()
            .filter(|k| **k == VirtioInterruptType::Queue)
            .count()
    }
}

impl VirtioInterrupt for FakeInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        lock(&self.raised).push(kind);
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

/// Counts warn and error records logged on the calling thread while `f` runs (through a
/// process-wide test logger, installed once; other threads' records are not counted). For
/// tests that a guest cannot flood the log.
pub fn warnings_during(f: impl FnOnce()) -> usize {
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }
    struct Counting;
    impl log::Log for Counting {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Counting = Counting;
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Another logger in this test binary would make the count meaningless.
        log::set_logger(&LOGGER).expect("no other logger in the unit tests");
        log::set_max_level(log::LevelFilter::Warn);
    });
    let before = COUNT.with(Cell::get);
    f();
    COUNT.with(Cell::get) - before
}
