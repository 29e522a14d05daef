//! Transport tests: a fake device behind [`MmioTransport`], driven through `BusDevice` reads and
//! writes the way the Linux virtio-mmio driver does it.

use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::bus::{lock, BusDevice};
use crate::devices::virtio::device::{
    ActivateError, ActivatedQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};

const MEM_SIZE: usize = 0x10_0000;
const DEVICE_FEATURE: u64 = 1 << 3;
const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
const MAX_SIZES: [u16; 2] = [16, 8];

#[derive(Default)]
struct FakeDevice {
    acked: Option<u64>,
    queues: Vec<ActivatedQueue>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    activations: usize,
    resets: usize,
    fail_activate: bool,
    refuse_reset: bool,
    config: [u8; 8],
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }
    fn avail_features(&self) -> u64 {
        VERSION_1 | EVENT_IDX | DEVICE_FEATURE
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.config.get(offset as usize + i) {
                *b = *v;
            }
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(v) = self.config.get_mut(offset as usize + i) {
                *v = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Other("fake failure".into()));
        }
        self.activations += 1;
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        if self.refuse_reset {
            return false;
        }
        self.resets += 1;
        self.queues.clear();
        self.interrupt = None;
        true
    }
    fn is_activated(&self) -> bool {
        !self.queues.is_empty()
    }
}

struct Harness<D = FakeDevice> {
    t: MmioTransport,
    dev: Arc<Mutex<D>>,
}

fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl Harness<FakeDevice> {
    fn new() -> Self {
        Self::with_device(test_mem(), FakeDevice::default())
    }
}

impl<D: VirtioDevice + 'static> Harness<D> {
    fn with_device(mem: GuestMemoryMmap, dev: D) -> Self {
        let dev = Arc::new(Mutex::new(dev));
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(mem, dev.clone(), irqfd).unwrap();
        Self { t, dev }
    }

    fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    fn status(&mut self) -> u32 {
        self.r(0x70)
    }

    fn features(&mut self) -> u64 {
        self.w(0x14, 0);
        let low = self.r(0x10);
        self.w(0x14, 1);
        let high = self.r(0x10);
        u64::from(low) | (u64::from(high) << 32)
    }

    fn ack_features(&mut self, f: u64) {
        self.w(0x24, 0);
        self.w(0x20, f as u32);
        self.w(0x24, 1);
        self.w(0x20, (f >> 32) as u32);
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK. Returns the status read back.
    fn negotiate(&mut self, f: u64) -> u32 {
        self.w(0x70, 1);
        self.w(0x70, 1 | 2);
        self.ack_features(f);
        self.w(0x70, 1 | 2 | 8);
        self.status()
    }

    /// Set up queue `i` with its rings at `base` (desc), `base + 0x1000` (avail),
    /// `base + 0x2000` (used).
    fn setup_queue(&mut self, i: u32, size: u32, base: u64) {
        self.setup_queue_at(i, size, [base, base + 0x1000, base + 0x2000]);
    }

    /// Set up queue `i` with its descriptor table, avail ring and used ring at `addrs`.
    fn setup_queue_at(&mut self, i: u32, size: u32, addrs: [u64; 3]) {
        self.w(0x30, i);
        assert_eq!(self.r(0x44), 0, "queue must not be ready before set-up");
        assert!(self.r(0x34) >= size);
        self.w(0x38, size);
        for (reg, addr) in [0x80, 0x90, 0xa0].into_iter().zip(addrs) {
            self.w(reg, addr as u32);
            self.w(reg + 4, (addr >> 32) as u32);
        }
        self.w(0x44, 1);
        assert_eq!(self.r(0x44), 1);
    }

    /// The whole Linux probe sequence, ending in DRIVER_OK.
    fn init(&mut self, f: u64) {
        assert_eq!(self.negotiate(f), 1 | 2 | 8);
        self.setup_queue(0, 16, 0x1_0000);
        self.setup_queue(1, 8, 0x2_0000);
        self.w(0x70, 1 | 2 | 8 | 4);
    }
}

#[test]
fn identity_registers() {
    let mut h = Harness::new();
    assert_eq!(h.r(0x0), 0x7472_6976);
    assert_eq!(h.r(0x4), 2);
    assert_eq!(h.r(0x8), 4);
    assert_eq!(h.r(0xc), 0);
    assert_eq!(h.features(), VERSION_1 | EVENT_IDX | DEVICE_FEATURE);
    h.w(0x14, 2);
    assert_eq!(h.r(0x10), 0, "feature pages past 1 are empty");
    h.w(0x30, 0);
    assert_eq!(h.r(0x34), 16);
    h.w(0x30, 1);
    assert_eq!(h.r(0x34), 8);
    h.w(0x30, 2);
    assert_eq!(h.r(0x34), 0, "a nonexistent queue has max size 0");
    assert_eq!(h.r(0xb0), u32::MAX, "no shared memory regions");
}

#[test]
fn full_init_activates_device_with_configured_queues() {
    let mut h = Harness::new();
    h.init(VERSION_1 | DEVICE_FEATURE);
    assert_eq!(h.status(), 0xf);

    let notify = h.t.queue_notify_evts();
    let dev = lock(&h.dev);
    assert_eq!(dev.acked, Some(VERSION_1 | DEVICE_FEATURE));
    assert_eq!(dev.activations, 1);
    assert_eq!(dev.queues.len(), 2);
    let q0 = &dev.queues[0].queue;
    assert_eq!(q0.size(), 16);
    assert!(q0.ready());
    assert_eq!(q0.desc_table(), 0x1_0000);
    assert_eq!(q0.avail_ring(), 0x1_1000);
    assert_eq!(q0.used_ring(), 0x1_2000);
    assert!(!q0.event_idx_enabled(), "EVENT_IDX was not acked");
    assert_eq!(dev.queues[1].queue.size(), 8);
    assert_eq!(dev.queues[1].queue.desc_table(), 0x2_0000);
    for (aq, evt) in dev.queues.iter().zip(&notify) {
        assert!(Arc::ptr_eq(&aq.notify, evt));
    }
}

#[test]
fn event_idx_is_set_on_queues_when_acked() {
    let mut h = Harness::new();
    h.init(VERSION_1 | EVENT_IDX);
    assert!(lock(&h.dev).queues[0].queue.event_idx_enabled());
}

#[test]
fn unknown_features_are_refused_and_version_1_is_required() {
    let mut h = Harness::new();
    // Bit 5 and bit 40 are not offered: they must not reach the device.
    let status = h.negotiate(VERSION_1 | DEVICE_FEATURE | (1 << 5) | (1 << 40));
    assert_eq!(status, 1 | 2 | 8);
    assert_eq!(lock(&h.dev).acked, Some(VERSION_1 | DEVICE_FEATURE));

    let mut h = Harness::new();
    let status = h.negotiate(DEVICE_FEATURE);
    assert_eq!(status, 1 | 2, "FEATURES_OK refused without VERSION_1");
    assert_eq!(lock(&h.dev).acked, None);
    // The driver gives up.
    h.w(0x70, 1 | 2 | 0x80);
    assert_eq!(h.status(), 1 | 2 | 0x80);
}

#[test]
fn features_are_only_writable_between_driver_and_features_ok() {
    let mut h = Harness::new();
    h.ack_features(VERSION_1);
    h.w(0x70, 1);
    h.w(0x70, 3);
    // Nothing was recorded before DRIVER: FEATURES_OK is refused.
    h.w(0x70, 0xb);
    assert_eq!(h.status(), 3);
    h.ack_features(VERSION_1);
    h.w(0x70, 0xb);
    assert_eq!(h.status(), 0xb);
    // Too late to change features.
    h.ack_features(VERSION_1 | DEVICE_FEATURE);
    h.w(0x70, 0xf);
    assert_eq!(lock(&h.dev).acked, Some(VERSION_1));
}

#[test]
fn invalid_status_transitions_are_ignored() {
    let mut h = Harness::new();
    h.w(0x70, 1 | 2);
    assert_eq!(h.status(), 0, "cannot skip ACKNOWLEDGE");
    h.w(0x70, 1);
    h.w(0x70, 1 | 2 | 4);
    assert_eq!(h.status(), 1, "cannot jump to DRIVER_OK");
    h.w(0x70, 1 | 2);
    h.ack_features(VERSION_1);
    h.w(0x70, 1 | 2 | 4);
    assert_eq!(h.status(), 3, "DRIVER_OK needs FEATURES_OK");
    h.w(0x70, 1 | 2 | 8);
    h.w(0x70, 1 | 8);
    assert_eq!(h.status(), 0xb, "bits are only cleared by reset");
    assert_eq!(lock(&h.dev).activations, 0);
}

#[test]
fn queue_config_is_only_writable_between_features_ok_and_driver_ok() {
    let mut h = Harness::new();
    h.w(0x70, 1);
    h.w(0x70, 3);
    h.w(0x30, 0);
    h.w(0x38, 4);
    h.w(0x80, 0x5000);
    h.w(0x44, 1);
    assert_eq!(h.r(0x44), 0, "QueueReady before FEATURES_OK is ignored");

    h.ack_features(VERSION_1);
    h.w(0x70, 0xb);
    h.w(0x38, 3);
    h.w(0x80, 0x5008);
    h.w(0x90, 0x6001);
    h.w(0xa0, 0x7002);
    h.w(0x30, 7);
    h.w(0x38, 4); // nonexistent queue: no effect, no panic
    h.setup_queue(1, 8, 0x3_0000);
    // The queue is ready: its addresses are frozen.
    h.w(0x80, 0x9000);
    h.w(0x70, 0xf);

    let dev = lock(&h.dev);
    let q0 = &dev.queues[0].queue;
    assert!(!q0.ready());
    assert_eq!(q0.size(), 16, "size 3 is not a power of two");
    assert_eq!(q0.desc_table(), 0, "unaligned addresses are refused");
    assert_eq!(q0.avail_ring(), 0);
    assert_eq!(q0.used_ring(), 0);
    assert_eq!(dev.queues[1].queue.desc_table(), 0x3_0000);
    drop(dev);

    // After DRIVER_OK the transport's copy cannot change either.
    h.w(0x30, 1);
    h.w(0x44, 0);
    assert_eq!(h.r(0x44), 1);
}

#[test]
fn queue_outside_guest_memory_sets_needs_reset_and_config_interrupt() {
    let mut h = Harness::new();
    assert_eq!(h.negotiate(VERSION_1), 0xb);
    h.setup_queue(0, 16, MEM_SIZE as u64 - 0x1000); // avail and used rings past the end
    h.w(0x70, 0xf);
    assert_eq!(h.status(), 0xf | 0x40);
    assert_eq!(lock(&h.dev).activations, 0);
    assert_eq!(h.r(0x60), INT_CONFIG);
    assert_eq!(h.t.interrupt().irqfd().read().unwrap(), 1);
    // Only a reset gets the device out of there.
    h.w(0x70, 0xf | 0x40 | 1);
    assert_eq!(h.status(), 0xf | 0x40);
    h.w(0x70, 0);
    assert_eq!(h.status(), 0);
    assert_eq!(h.r(0x60), 0);
}

#[test]
fn device_activation_error_sets_needs_reset() {
    let mut h = Harness::new();
    lock(&h.dev).fail_activate = true;
    h.init(VERSION_1);
    assert_eq!(h.status(), 0xf | 0x40);
    assert_eq!(h.r(0x60), INT_CONFIG);
}

#[test]
fn reset_stops_device_and_allows_a_second_init() {
    let mut h = Harness::new();
    h.init(VERSION_1 | DEVICE_FEATURE);
    h.t.interrupt().trigger(VirtioInterruptType::Queue).unwrap();
    h.w(0x70, 0);
    assert_eq!(h.status(), 0);
    assert_eq!(h.r(0x60), 0, "reset clears pending interrupts");
    for i in 0..2 {
        h.w(0x30, i);
        assert_eq!(h.r(0x44), 0, "queues are not ready after reset");
        h.w(0x44, 0); // Linux del_vqs after reset: harmless
        assert_eq!(h.r(0x44), 0);
    }
    {
        let dev = lock(&h.dev);
        assert_eq!(dev.resets, 1);
        assert!(!dev.is_activated());
    }
    h.init(VERSION_1);
    let dev = lock(&h.dev);
    assert_eq!(dev.activations, 2);
    assert_eq!(dev.acked, Some(VERSION_1));
}

#[test]
fn reset_of_an_inactive_device_does_not_call_device_reset() {
    let mut h = Harness::new();
    h.negotiate(VERSION_1);
    h.w(0x70, 0);
    assert_eq!(h.status(), 0);
    assert_eq!(lock(&h.dev).resets, 0);
}

#[test]
fn device_that_cannot_reset_is_marked_failed() {
    let mut h = Harness::new();
    h.init(VERSION_1);
    lock(&h.dev).refuse_reset = true;
    h.w(0x70, 0);
    assert_eq!(h.status(), 0xf | 0x80);
}

#[test]
fn bad_register_accesses_are_ignored() {
    let mut h = Harness::new();
    // Reads of the wrong size or alignment leave the buffer as the bus filled it.
    let mut b2 = [0u8; 2];
    h.t.read(0x0, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0u8; 4];
    h.t.read(0x2, &mut b4);
    assert_eq!(b4, [0; 4]);
    let mut b8 = [0u8; 8];
    h.t.read(0x0, &mut b8);
    assert_eq!(b8, [0; 8]);
    let mut b0 = [0u8; 0];
    h.t.read(0x0, &mut b0);
    // Write-only and unknown registers read as zero.
    assert_eq!(h.r(0x50), 0);
    assert_eq!(h.r(0xf0), 0);

    // Writes of the wrong size, alignment, or to read-only registers change nothing.
    h.t.write(0x70, &[1]);
    h.t.write(0x70, &[1, 0]);
    h.t.write(0x71, &[1, 0, 0, 0]);
    h.t.write(0x70, &[1, 0, 0, 0, 0, 0, 0, 0]);
    h.t.write(0x70, &[]);
    assert_eq!(h.status(), 0);
    h.w(0x0, 0);
    h.w(0x8, 99);
    h.w(0x34, 1);
    assert_eq!(h.r(0x0), 0x7472_6976);
    assert_eq!(h.r(0x8), 4);
    h.w(0x70, 1);
    assert_eq!(h.status(), 1, "a proper write still works afterwards");
}

#[test]
fn interrupt_status_and_ack() {
    let mut h = Harness::new();
    h.init(VERSION_1);
    let irq = lock(&h.dev).interrupt.clone().unwrap();
    irq.trigger(VirtioInterruptType::Queue).unwrap();
    assert_eq!(h.r(0x60), INT_VRING);
    irq.trigger(VirtioInterruptType::Config).unwrap();
    assert_eq!(h.r(0x60), INT_VRING | INT_CONFIG);
    assert_eq!(h.t.interrupt().irqfd().read().unwrap(), 2);
    h.w(0x64, INT_VRING);
    assert_eq!(h.r(0x60), INT_CONFIG);
    h.w(0x64, INT_CONFIG);
    assert_eq!(h.r(0x60), 0);
    h.w(0x60, 3);
    assert_eq!(h.r(0x60), 0, "InterruptStatus is read-only");
}

#[test]
fn queue_notify_through_the_bus_signals_the_queue_eventfd() {
    let mut h = Harness::new();
    h.init(VERSION_1);
    let evts = h.t.queue_notify_evts();
    assert!(evts[0].read().is_err() && evts[1].read().is_err());
    h.w(0x50, 1);
    assert!(evts[0].read().is_err());
    assert_eq!(evts[1].read().unwrap(), 1);
    h.w(0x50, 0);
    h.w(0x50, 0);
    assert_eq!(evts[0].read().unwrap(), 2);
    h.w(0x50, 2); // nonexistent queue: logged, nothing signalled
    h.w(0x50, u32::MAX);
    assert!(evts[0].read().is_err() && evts[1].read().is_err());
}

#[test]
fn config_space_is_delegated_to_the_device() {
    let mut h = Harness::new();
    lock(&h.dev).config = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut b = [0u8; 2];
    h.t.read(0x102, &mut b);
    assert_eq!(b, [3, 4]);
    let mut b = [0u8; 1];
    h.t.read(0x200, &mut b);
    assert_eq!(b, [0], "past the device's config space");

    h.t.write(0x100, &[9]);
    assert_eq!(lock(&h.dev).config[0], 1, "config writes need DRIVER");
    h.w(0x70, 1);
    h.w(0x70, 3);
    h.t.write(0x100, &[9]);
    assert_eq!(lock(&h.dev).config[0], 9);
}

#[test]
fn transport_rejects_devices_without_version_1() {
    struct Legacy;
    impl VirtioDevice for Legacy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            0
        }
        fn set_acked_features(&mut self, _: u64) {}
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Arc<dyn VirtioInterrupt>,
            _: Vec<ActivatedQueue>,
        ) -> Result<(), ActivateError> {
            Ok(())
        }
        fn is_activated(&self) -> bool {
            false
        }
    }
    let mem = test_mem();
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(matches!(
        MmioTransport::new(mem, Arc::new(Mutex::new(Legacy)), irqfd),
        Err(MmioError::NoVersion1(4))
    ));
}

/// The whole path with a real device: driver init through the bus, the rng device on a real
/// event loop, a QueueNotify write reaching the transport, entropy in the used ring, the
/// interrupt seen in InterruptStatus and on the irqfd, then reset.
#[test]
fn rng_device_behind_the_transport_on_a_real_event_loop() {
    use crate::devices::virtio::rng::{Rng, RNG_QUEUE_SIZE};
    use crate::devices::virtio::test_utils::{desc, WRITE};
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;

    let mem = test_mem();
    let mut h = Harness::with_device(mem.clone(), Rng::new().unwrap());
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(h.dev.clone());

    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), RNG_QUEUE_SIZE);
    assert_eq!(h.negotiate(VERSION_1), 0xb);
    h.setup_queue_at(
        0,
        u32::from(RNG_QUEUE_SIZE),
        [vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0],
    );
    h.w(0x70, 0xf);
    assert_eq!(h.status(), 0xf);
    assert_eq!(
        manager.run_with_timeout(100).unwrap(),
        1,
        "activation event"
    );

    let buf = desc(0x8_0000, 64, WRITE, 0);
    vq.add_desc_chains(&[buf], 0).unwrap();
    h.w(0x50, 0); // QueueNotify through the bus (no ioeventfd in this test)
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1, "queue event");
    assert_eq!(vq.used().idx().load(), 1);
    let elem = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((elem.id(), elem.len()), (0, 64));
    assert_eq!(h.r(0x60), INT_VRING);
    assert_eq!(h.t.interrupt().irqfd().read().unwrap(), 1);
    h.w(0x64, INT_VRING);

    h.w(0x70, 0);
    assert!(!lock(&h.dev).is_activated());
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1, "reset event");
    h.w(0x50, 0);
    assert_eq!(
        manager.run_with_timeout(50).unwrap(),
        0,
        "queue no longer watched"
    );
}
