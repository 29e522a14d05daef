//! The virtio-rng device model: device state, activation, and filling the guest's buffers with
//! host entropy.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::RngMetrics;
use crate::devices::virtio::device::{
    ActivateError, ActivatedQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};
use crate::devices::virtio::rate_limited::{warn_limited, LogLimiter};

/// Size of the one request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes of entropy given for one descriptor chain: bounds the host buffer a guest can
/// make us allocate, whatever lengths its descriptors claim.
pub const MAX_BYTES_PER_CHAIN: u32 = 64 * 1024;

const QUEUE_SIZES: [u16; 1] = [RNG_QUEUE_SIZE];

/// Errors when creating the device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The activation eventfd could not be created.
    #[error("cannot create virtio-rng activation eventfd")]
    ActivateEventFd(#[source] io::Error),
}

/// Why a chain got used length 0.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChainError {
    #[error("descriptor {0} of the chain is device-readable, entropy buffers must be writable")]
    ReadOnly(usize),
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("descriptor chain is cut short (loop, or next index past the queue)")]
    Truncated,
    #[error("cannot read host entropy")]
    Entropy(#[source] io::Error),
    #[error("cannot write guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// What an activated device works with.
pub(super) struct ActiveState {
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) queue: Queue,
    pub(super) notify: Arc<EventFd>,
}

/// Inactive until the driver sets DRIVER_OK, inactive again after a reset.
pub(super) enum DeviceState {
    Inactive,
    Active(ActiveState),
}

/// The virtio entropy device (device ID 4). Share it as `Arc<Mutex<Rng>>`: the transport sees
/// it as a `VirtioDevice`, the event loop as a `MutEventSubscriber` (see the module doc of
/// [`rng`](super)).
pub struct Rng {
    acked_features: u64,
    pub(super) state: DeviceState,
    /// Written by `activate()`/`reset()` on the vCPU thread; tells the event loop to
    /// (un)register the queue eventfd.
    pub(super) activate_evt: EventFd,
    /// Queue eventfds currently registered with the event loop (event-loop bookkeeping).
    pub(super) registered: Vec<Arc<EventFd>>,
    pub(super) metrics: Arc<RngMetrics>,
    pub(super) log: LogLimiter,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Result<Self, RngError> {
        Ok(Self {
            acked_features: 0,
            state: DeviceState::Inactive,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(RngError::ActivateEventFd)?,
            registered: Vec::new(),
            metrics: Arc::new(RngMetrics::default()),
            log: LogLimiter::new(),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Answer every available descriptor chain, then interrupt the guest if it wants to know.
    /// Called from the event loop.
    pub(super) fn process_queue(&mut self) {
        let DeviceState::Active(active) = &mut self.state else {
            return;
        };
        let mut used_any = false;
        loop {
            // `iter()` rather than `pop_descriptor_chain()`: the latter logs a bad avail index
            // at error level on every kick, which a guest could use to flood the log.
            let chain = match active.queue.iter(&active.mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    self.metrics.queue_errors.inc();
                    warn_limited!(self.log, "virtio-rng: cannot read the avail ring: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let len = match fill_chain(&active.mem, chain) {
                Ok(len) => {
                    self.metrics.requests.inc();
                    self.metrics.entropy_bytes.add(u64::from(len));
                    len
                }
                Err(e) => {
                    let counter = match e {
                        ChainError::Entropy(_) => &self.metrics.host_rng_fails,
                        _ => &self.metrics.malformed_chains,
                    };
                    counter.inc();
                    warn_limited!(self.log, "virtio-rng: chain {head} answered empty: {e}");
                    0
                }
            };
            if let Err(e) = active.queue.add_used(&active.mem, head, len) {
                self.metrics.used_ring_fails.inc();
                warn_limited!(
                    self.log,
                    "virtio-rng: cannot add chain {head} to used ring: {e}"
                );
                break;
            }
            used_any = true;
        }
        if !used_any {
            return;
        }
        // Without EVENT_IDX this is always true; with it, the driver may have asked for quiet.
        let notify = active.queue.needs_notification(&active.mem).unwrap_or(true);
        if notify {
            if let Err(e) = active.interrupt.trigger(VirtioInterruptType::Queue) {
                self.metrics.interrupt_fails.inc();
                warn_limited!(self.log, "virtio-rng: cannot raise queue interrupt: {e}");
            }
        }
    }

    /// The queue eventfd, while active.
    pub(super) fn active_notify(&self) -> Option<Arc<EventFd>> {
        match &self.state {
            DeviceState::Active(a) => Some(a.notify.clone()),
            DeviceState::Inactive => None,
        }
    }
}

/// Fill the writable buffers of `chain` with entropy, up to [`MAX_BYTES_PER_CHAIN`]. Returns the
/// number of bytes written. The whole chain is checked before anything is written, so a
/// malformed chain leaves guest memory untouched.
pub(super) fn fill_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<u32, ChainError> {
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut cut_short = false;
    // The chain iterator stops after queue-size descriptors (loops) or at a `next` past the
    // table; either way the last descriptor it yields still says "next".
    for (i, desc) in chain.enumerate() {
        if !desc.is_write_only() {
            return Err(ChainError::ReadOnly(i));
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        cut_short = desc.has_next();
        descs.push(desc);
    }
    if cut_short {
        return Err(ChainError::Truncated);
    }

    let wanted = descs
        .iter()
        .fold(0u64, |sum, d| sum.saturating_add(u64::from(d.len())));
    let total = wanted.min(u64::from(MAX_BYTES_PER_CHAIN)) as usize;
    let mut buf = vec![0u8; total];
    fill_random(&mut buf).map_err(ChainError::Entropy)?;

    let mut rest = buf.as_slice();
    for desc in descs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(desc.len() as usize);
        let (now, later) = rest.split_at(n);
        mem.write_slice(now, desc.addr())
            .map_err(ChainError::GuestMemory)?;
        rest = later;
    }
    // `total` is at most MAX_BYTES_PER_CHAIN, so it fits.
    Ok(u32::try_from(total).unwrap_or(MAX_BYTES_PER_CHAIN))
}

/// Fill `buf` from the kernel's entropy pool (getrandom(2), which does not block once the pool
/// is initialised; on a booted host it always is).
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        // SAFETY: the kernel writes at most `rest.len()` bytes into the valid, writable
        // memory `rest` points to.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += ret as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        // No EVENT_IDX: entropy requests are rare and small.
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {
        // virtio-rng has no configuration space.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        let result = self.try_activate(mem, interrupt, queues);
        if result.is_err() {
            self.metrics.activate_fails.inc();
        }
        result
    }

    fn reset(&mut self) -> bool {
        self.state = DeviceState::Inactive;
        // Tell the event loop to drop the queue eventfd. If that fails, the stale registration
        // only delivers events the inactive device ignores.
        if let Err(e) = self.activate_evt.write(1) {
            self.metrics.event_fails.inc();
            log::error!("virtio-rng: cannot signal reset to the event loop: {e}");
        }
        true
    }

    fn is_activated(&self) -> bool {
        matches!(self.state, DeviceState::Active(_))
    }
}

impl Rng {
    fn try_activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::Other("virtio-rng is already active".into()));
        }
        let got = queues.len();
        let Ok([q]) = <[ActivatedQueue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { got, want: 1 });
        };
        if !q.queue.ready() {
            return Err(ActivateError::InvalidQueue(0));
        }
        self.state = DeviceState::Active(ActiveState {
            mem,
            interrupt,
            queue: q.queue,
            notify: q.notify,
        });
        if let Err(e) = self.activate_evt.write(1) {
            self.state = DeviceState::Inactive;
            return Err(ActivateError::Io(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::test_utils::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn m(counter: &crate::devices::virtio::metrics::Counter) -> u64 {
        counter.get()
    }

    #[test]
    fn good_chain_gets_random_bytes_and_its_length() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        mem.write_slice(&[0xaa; 0x1000], GuestAddress(BUF)).unwrap();
        vq.add_desc_chains(
            &[
                desc(BUF, 100, WRITE | NEXT, 1),
                desc(BUF + 0x200, 200, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let (mut rng, irq) = active_rng(&mem, &vq);
        rng.process_queue();

        assert_eq!(used(&vq), vec![(0, 300)]);
        assert_eq!(irq.queue_count(), 1);
        let mut out = [0u8; 0x400];
        mem.read_slice(&mut out, GuestAddress(BUF)).unwrap();
        assert!(out[..100].iter().any(|&b| b != 0xaa), "first buffer filled");
        assert!(out[0x200..0x200 + 200].iter().any(|&b| b != 0xaa));
        assert!(out[100..0x200].iter().all(|&b| b == 0xaa), "gap untouched");
        assert!(
            out[0x200 + 200..].iter().all(|&b| b == 0xaa),
            "tail untouched"
        );
        let metrics = rng.metrics();
        assert_eq!(m(&metrics.requests), 1);
        assert_eq!(m(&metrics.entropy_bytes), 300);
        assert_eq!(m(&metrics.malformed_chains), 0);
    }

    #[test]
    fn bytes_per_chain_are_capped() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        let big = 4 * MAX_BYTES_PER_CHAIN;
        vq.add_desc_chains(&[desc(BUF, big, WRITE, 0)], 0).unwrap();
        let (mut rng, _irq) = active_rng(&mem, &vq);
        rng.process_queue();
        assert_eq!(used(&vq), vec![(0, MAX_BYTES_PER_CHAIN)]);
        let mut after = [0u8; 64];
        mem.read_slice(
            &mut after,
            GuestAddress(BUF + u64::from(MAX_BYTES_PER_CHAIN)),
        )
        .unwrap();
        assert_eq!(after, [0; 64], "nothing written past the cap");
    }

    #[test]
    fn malformed_chains_get_zero_and_are_counted() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        let end = TEST_MEM_SIZE as u64;
        vq.add_desc_chains(
            &[
                // 0: read-only buffer.
                desc(BUF, 64, 0, 0),
                // 1-2: writable then read-only.
                desc(BUF, 64, WRITE | NEXT, 2),
                desc(BUF + 0x100, 64, 0, 0),
                // 3: straddles the end of guest memory.
                desc(end - 16, 64, WRITE, 0),
                // 4: entirely past guest memory.
                desc(end + 0x1000, 64, WRITE, 0),
                // 5-6: a loop.
                desc(BUF, 64, WRITE | NEXT, 6),
                desc(BUF + 0x100, 64, WRITE | NEXT, 5),
            ],
            0,
        )
        .unwrap();
        // 7: next index past the queue. (Separate calls: the mock takes a descriptor whose
        // predecessor says "next" as part of the same chain.)
        vq.add_desc_chains(&[desc(BUF, 64, WRITE | NEXT, 1000)], 7)
            .unwrap();
        // 8: a good one after all that.
        vq.add_desc_chains(&[desc(BUF + 0x1000, 32, WRITE, 0)], 8)
            .unwrap();
        let (mut rng, irq) = active_rng(&mem, &vq);
        rng.process_queue();

        assert_eq!(
            used(&vq),
            vec![(0, 0), (1, 0), (3, 0), (4, 0), (5, 0), (7, 0), (8, 32)]
        );
        let mut first = [0u8; 0x200];
        mem.read_slice(&mut first, GuestAddress(BUF)).unwrap();
        assert_eq!(first, [0; 0x200], "malformed chains write nothing");
        let metrics = rng.metrics();
        assert_eq!(m(&metrics.malformed_chains), 6);
        assert_eq!(m(&metrics.requests), 1);
        assert_eq!(irq.queue_count(), 1, "one interrupt for the whole batch");
    }

    #[test]
    fn corrupted_avail_index_is_counted_not_served() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        vq.add_desc_chains(&[desc(BUF, 16, WRITE, 0)], 0).unwrap();
        // The driver claims more new entries than the queue holds.
        vq.avail().idx().store(RNG_QUEUE_SIZE + 5);
        let (mut rng, irq) = active_rng(&mem, &vq);
        rng.process_queue();
        assert!(used(&vq).is_empty());
        assert_eq!(irq.queue_count(), 0);
        assert_eq!(m(&rng.metrics().queue_errors), 1);
    }

    #[test]
    fn no_interrupt_without_used_buffers() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        let (mut rng, irq) = active_rng(&mem, &vq);
        rng.process_queue();
        assert_eq!(irq.queue_count(), 0);
        assert!(used(&vq).is_empty());
    }

    #[test]
    fn inactive_device_does_nothing() {
        let mut rng = Rng::new().unwrap();
        rng.process_queue();
        assert!(!rng.is_activated());
        assert!(rng.active_notify().is_none());
    }

    #[test]
    fn activation_checks_queues_and_signals_the_event_loop() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        let irq = Arc::new(FakeInterrupt::default());
        let mut rng = Rng::new().unwrap();

        let err = rng.activate(mem.clone(), irq.clone(), vec![]).unwrap_err();
        assert!(matches!(err, ActivateError::QueueCount { got: 0, want: 1 }));
        let mut unready = activated_queue(&vq);
        unready.queue.set_ready(false);
        let err = rng
            .activate(mem.clone(), irq.clone(), vec![unready])
            .unwrap_err();
        assert!(matches!(err, ActivateError::InvalidQueue(0)));
        assert!(!rng.is_activated());
        assert!(
            rng.activate_evt.read().is_err(),
            "failed activations signal nothing"
        );
        assert_eq!(m(&rng.metrics().activate_fails), 2);

        rng.activate(mem.clone(), irq.clone(), vec![activated_queue(&vq)])
            .unwrap();
        assert!(rng.is_activated());
        assert_eq!(rng.activate_evt.read().unwrap(), 1);
        let err = rng
            .activate(mem.clone(), irq.clone(), vec![activated_queue(&vq)])
            .unwrap_err();
        assert!(matches!(err, ActivateError::Other(_)));

        assert!(rng.reset());
        assert!(!rng.is_activated());
        assert_eq!(
            rng.activate_evt.read().unwrap(),
            1,
            "reset signals the event loop"
        );
        rng.activate(mem.clone(), irq, vec![activated_queue(&vq)])
            .unwrap();
        assert!(rng.is_activated(), "can be activated again after reset");
    }

    #[test]
    fn only_offered_features_are_recorded() {
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        rng.set_acked_features(u64::MAX);
        assert_eq!(rng.acked_features(), 1 << 32);
    }
}
