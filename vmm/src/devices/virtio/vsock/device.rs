//! The virtio-vsock device: feature and config space, activation and reset, and moving
//! packets between the guest's queues and the muxer.

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::VsockMetrics;
use super::muxer::{Muxer, Poller};
use super::packet::{read_tx_packet, RxBuffer, HOST_CID};
use super::unix::HostListener;
use super::VsockError;
use crate::devices::virtio::device::{
    ActivateError, ActivatedQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};
use crate::devices::virtio::rate_limited::{warn_limited, LogLimiter};

/// Virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Queue indices.
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;

/// What exists only between activation and reset.
pub(crate) struct Active {
    pub(crate) mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: [Queue; 3],
    pub(crate) notify: [Arc<EventFd>; 3],
}

/// The virtio-vsock device with a unix-socket host side.
pub struct Vsock {
    guest_cid: u64,
    acked_features: u64,
    pub(crate) muxer: Muxer,
    /// Signalled on activation and reset; the event handler then (un)registers queue fds.
    pub(crate) activate_evt: EventFd,
    pub(crate) active: Option<Active>,
    /// A reset happened since the event handler last ran: drop host connections.
    pub(crate) reset_pending: bool,
    /// Queue notify fds currently registered in the event loop.
    pub(crate) registered_notify: Vec<Arc<EventFd>>,
    /// Tx processing stopped because too many replies wait for rx buffers.
    tx_paused: bool,
    metrics: Arc<VsockMetrics>,
    /// Every line a guest can cause goes through this (`warn_limited!`).
    pub(crate) log_limit: LogLimiter,
}

impl Vsock {
    /// A vsock device for a guest with context id `guest_cid`, with host clients connecting
    /// to `listener` ([`HostListener::bind`] at a path, or [`HostListener::from_fd`]).
    /// `guest_connect`: guest connections to host port P go to `<path>_P` (the listener must
    /// have a path); without it they are answered with a reset.
    pub fn new(
        guest_cid: u64,
        listener: HostListener,
        guest_connect: bool,
    ) -> Result<Self, VsockError> {
        // 0, 1 and 2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = Muxer::new(guest_cid, listener, guest_connect, metrics.clone())?;
        let activate_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?;
        Ok(Vsock {
            guest_cid,
            acked_features: 0,
            muxer,
            activate_evt,
            active: None,
            reset_pending: false,
            registered_notify: Vec::new(),
            tx_paused: false,
            metrics,
            log_limit: LogLimiter::new(),
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The host listener's path, when the VMM bound it.
    pub fn uds_path(&self) -> Option<&std::path::Path> {
        self.muxer.uds_path()
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// Take guest packets off the tx queue and hand them to the muxer.
    pub(crate) fn process_tx(&mut self, poller: &mut dyn Poller) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        self.tx_paused = false;
        loop {
            if self.muxer.tx_should_pause() {
                self.tx_paused = true;
                break;
            }
            let Some(chain) = next_chain(
                &mut active.queues[TXQ],
                &active.mem,
                &self.metrics,
                &mut self.log_limit,
            ) else {
                break;
            };
            let head = chain.head_index();
            let result = read_tx_packet(&active.mem, chain);
            if let Err(e) = active.queues[TXQ].add_used(&active.mem, head, 0) {
                warn_limited!(self.log_limit, "vsock: tx add_used failed: {e}");
            }
            used = true;
            match result {
                Ok(pkt) => self.muxer.recv_guest(pkt, poller),
                Err(e) => {
                    self.metrics.tx_malformed.inc();
                    warn_limited!(
                        self.log_limit,
                        "vsock: dropping malformed tx packet: {}",
                        e.error
                    );
                    if let Some(hdr) = e.hdr {
                        self.muxer.reject(&hdr, poller);
                    }
                }
            }
        }
        if used {
            signal(active, TXQ, &mut self.log_limit);
        }
    }

    /// Give the guest whatever the muxer has, as long as the guest has rx buffers.
    pub(crate) fn process_rx(&mut self, poller: &mut dyn Poller) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = next_chain(
                &mut active.queues[RXQ],
                &active.mem,
                &self.metrics,
                &mut self.log_limit,
            ) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::new(&active.mem, chain) {
                Ok(mut buf) => match self.muxer.fill_rx(&mut buf, poller) {
                    Some(len) => len,
                    None => {
                        // Nothing was ready after all: leave the buffer to the driver.
                        active.queues[RXQ].go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    self.metrics.rx_malformed.inc();
                    warn_limited!(self.log_limit, "vsock: unusable rx buffer: {e}");
                    0
                }
            };
            if let Err(e) = active.queues[RXQ].add_used(&active.mem, head, len) {
                warn_limited!(self.log_limit, "vsock: rx add_used failed: {e}");
            }
            used = true;
        }
        if used {
            signal(active, RXQ, &mut self.log_limit);
        }
    }

    /// Move everything that can move: rx first (it unblocks a paused tx), then tx, until
    /// neither makes progress.
    pub(crate) fn run_queues(&mut self, poller: &mut dyn Poller) {
        self.process_rx(poller);
        // Each pass either empties the control backlog or the guest ran out of rx buffers.
        for _ in 0..4 {
            if !self.tx_paused || self.muxer.tx_should_pause() {
                break;
            }
            self.process_tx(poller);
            self.process_rx(poller);
        }
    }
}

/// The next available chain of `queue`. `iter()` rather than `pop_descriptor_chain()`: the
/// latter logs a bad avail index at error level on every kick, unlimited, which a guest could
/// use to flood the log; here it is counted and logged through the device's limiter.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    metrics: &VsockMetrics,
    log_limit: &mut LogLimiter,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    match queue.iter(mem) {
        Ok(mut avail) => avail.next(),
        Err(e) => {
            metrics.queue_errors.inc();
            warn_limited!(log_limit, "vsock: cannot read the avail ring: {e}");
            None
        }
    }
}

fn signal(active: &mut Active, q: usize, log_limit: &mut LogLimiter) {
    let needed = active.queues[q]
        .needs_notification(&active.mem)
        .unwrap_or(true);
    if needed {
        if let Err(e) = active.interrupt.trigger(VirtioInterruptType::Queue) {
            warn_limited!(log_limit, "vsock: interrupt failed: {e}");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, byte) in data.iter_mut().enumerate() {
            if let Some(v) = start.checked_add(i).and_then(|at| config.get(at)) {
                *byte = *v;
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: QUEUE_SIZES.len(),
            });
        }
        for (i, q) in queues.iter().enumerate() {
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::InvalidQueue(i));
            }
        }
        let mut it = queues.into_iter();
        let (Some(rx), Some(tx), Some(ev)) = (it.next(), it.next(), it.next()) else {
            return Err(ActivateError::QueueCount { got: 0, want: 3 });
        };
        self.active = Some(Active {
            mem,
            interrupt,
            notify: [rx.notify, tx.notify, ev.notify],
            queues: [rx.queue, tx.queue, ev.queue],
        });
        self.activate_evt.write(1)?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.tx_paused = false;
        self.reset_pending = true;
        if let Err(e) = self.activate_evt.write(1) {
            warn_limited!(self.log_limit, "vsock: cannot signal reset: {e}");
            return false;
        }
        true
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
