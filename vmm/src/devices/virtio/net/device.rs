//! The virtio-net device model: features and configuration space, activation and reset, the
//! mapping from acknowledged features to tap offloads, and what happens when the tap goes
//! away. Moving frames is in `rx.rs` and `tx.rs`.

use std::io;
use std::sync::Arc;

use bulkhead_vmm_contract::MacAddr;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::Chain;
use super::metrics::NetMetrics;
use super::tap::{TapIo, TapOffloads, VNET_HDR_LEN};
use super::vhost::{guest_features, VhostNet, VhostNetError};
use crate::devices::virtio::device::{
    ActivateError, ActivatedQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};
use crate::devices::virtio::rate_limited::{warn_limited, LogLimiter};

/// Size of each of the two queues.
pub const NET_QUEUE_SIZE: u16 = 256;
/// Largest frame after the header: 64 KiB of TSO/GSO payload plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65562;
/// Largest frame with its header, in either direction: the size of the host buffers.
pub const MAX_BUFFER_LEN: usize = MAX_FRAME_LEN + VNET_HDR_LEN;

const QUEUE_SIZES: [u16; 2] = [NET_QUEUE_SIZE, NET_QUEUE_SIZE];
pub(super) const RX_INDEX: usize = 0;
pub(super) const TX_INDEX: usize = 1;

/// Length of the configuration space we fill: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot create the virtio-net activation eventfd")]
    ActivateEventFd(#[source] io::Error),
    #[error("cannot draw a random MAC address")]
    RandomMac(#[source] io::Error),
}

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The features offered for a tap with `offloads`, and `mtu` if one is set.
pub fn offered_features(offloads: TapOffloads, mtu: bool) -> u64 {
    let mut f = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6);
    if mtu {
        f |= bit(VIRTIO_NET_F_MTU);
    }
    if offloads.ufo {
        f |= bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_HOST_UFO);
    }
    if offloads.uso {
        f |= bit(VIRTIO_NET_F_GUEST_USO4)
            | bit(VIRTIO_NET_F_GUEST_USO6)
            | bit(VIRTIO_NET_F_HOST_USO);
    }
    f
}

/// The `TUNSETOFFLOAD` flags for the features the guest acknowledged, as QEMU computes them:
/// the tap may hand us only what the guest's receive path takes (GUEST_*). Without
/// GUEST_CSUM the guest takes no partial checksums, so no segmentation offload either.
pub fn tap_offload_flags(acked: u64) -> u32 {
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
        (VIRTIO_NET_F_GUEST_USO4, libc::TUN_F_USO4),
        (VIRTIO_NET_F_GUEST_USO6, libc::TUN_F_USO6),
    ] {
        if acked & bit(feature) != 0 {
            flags |= flag;
        }
    }
    flags
}

/// A random locally administered unicast address.
pub fn random_mac() -> io::Result<MacAddr> {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most 6 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 6 {
        return Err(io::Error::last_os_error());
    }
    b[0] = (b[0] & 0xfc) | 0x02;
    Ok(MacAddr(b))
}

/// What an activated device works with.
pub(super) struct ActiveState {
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) rx_notify: Arc<EventFd>,
    pub(super) tx_notify: Arc<EventFd>,
}

/// Receive state: a frame read from the tap that waits for guest buffers, and receive chains
/// taken from the avail ring that did not yet hold a whole frame (mergeable buffers).
#[derive(Default)]
pub(super) struct RxState {
    /// Host buffer for one frame (allocated once, [`MAX_BUFFER_LEN`]).
    pub(super) buf: Vec<u8>,
    /// Length of the frame in `buf` that waits for the guest, if any. While there is one the
    /// tap is not read (back-pressure: its EPOLLIN is not watched).
    pub(super) pending: Option<usize>,
    /// Checked chains taken from the avail ring, not yet used.
    pub(super) chains: Vec<Chain>,
}

/// The virtio network device (ID 1) on a tap. Share it as `Arc<Mutex<Net>>`: the transport
/// sees a `VirtioDevice`, the event loop a `MutEventSubscriber` (the pattern of
/// [`rng`](crate::devices::virtio::rng)).
pub struct Net {
    pub(super) tap: Box<dyn TapIo>,
    pub(super) mac: MacAddr,
    mtu: Option<u16>,
    avail_features: u64,
    pub(super) acked_features: u64,
    pub(super) state: Option<ActiveState>,
    /// The tap failed for good (EIO, EBADFD, ENODEV...): link down, no more tap I/O.
    pub(super) tap_gone: bool,
    pub(super) rx: RxState,
    /// Host buffer for one transmitted frame (allocated once).
    pub(super) tx_buf: Vec<u8>,
    /// The tap refused a frame with EAGAIN; its chain is still in the avail ring and the tap's
    /// EPOLLOUT is watched until it can be sent.
    pub(super) tx_blocked: bool,
    /// Written by `activate()`/`reset()` on the vCPU thread for the event loop.
    pub(super) activate_evt: EventFd,
    /// Event-loop bookkeeping: the queue eventfds and tap events registered.
    pub(super) registered: Vec<Arc<EventFd>>,
    pub(super) tap_events: Option<event_manager::EventSet>,
    pub(super) metrics: Arc<NetMetrics>,
    /// `vhost=on`: the kernel moves the frames; the event loop neither reads the queues nor
    /// watches the tap, it only relays vhost-net's call eventfds.
    pub(super) vhost: Option<VhostNet>,
    pub(super) rx_log: LogLimiter,
    pub(super) tx_log: LogLimiter,
    pub(super) tap_log: LogLimiter,
}

impl Net {
    /// A new, inactive device on `tap`, offering the offloads the tap accepted.
    pub fn new(
        tap: Box<dyn TapIo>,
        offloads: TapOffloads,
        mac: Option<MacAddr>,
        mtu: Option<u16>,
    ) -> Result<Self, NetError> {
        let mac = match mac {
            Some(mac) => mac,
            None => random_mac().map_err(NetError::RandomMac)?,
        };
        Ok(Net {
            tap,
            mac,
            mtu,
            avail_features: offered_features(offloads, mtu.is_some()),
            acked_features: 0,
            state: None,
            tap_gone: false,
            rx: RxState {
                buf: vec![0; MAX_BUFFER_LEN],
                ..RxState::default()
            },
            tx_buf: Vec::with_capacity(MAX_BUFFER_LEN),
            tx_blocked: false,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(NetError::ActivateEventFd)?,
            registered: Vec::new(),
            tap_events: None,
            metrics: Arc::new(NetMetrics::default()),
            vhost: None,
            rx_log: LogLimiter::new(),
            tx_log: LogLimiter::new(),
            tap_log: LogLimiter::new(),
        })
    }

    /// Serve the queues with vhost-net instead of the event loop. The features offered to the
    /// guest lose the ring features `vhost` lacks; everything else (MAC, MTU, offloads, the
    /// configuration space) stays as it is.
    pub fn with_vhost(mut self, vhost: VhostNet) -> Self {
        self.avail_features = guest_features(self.avail_features, vhost.features());
        self.vhost = Some(vhost);
        self
    }

    /// Whether vhost-net serves the queues.
    pub fn uses_vhost(&self) -> bool {
        self.vhost.is_some()
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// The guest NIC's address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub(super) fn has_feature(&self, feature: u32) -> bool {
        self.acked_features & bit(feature) != 0
    }

    /// Give the tap the offloads the guest accepted (event loop, on activation).
    pub(super) fn apply_offloads(&mut self) {
        let flags = tap_offload_flags(self.acked_features);
        if let Err(e) = self.tap.set_offload(flags) {
            // The tap keeps the offloads it had: none since open, so frames stay plain.
            self.metrics.offload_fails.inc();
            warn_limited!(
                self.tap_log,
                "virtio-net {}: TUNSETOFFLOAD {flags:#x} failed: {e}",
                self.tap.name()
            );
        }
    }

    /// The tap failed for good: stop using it, drop what waits for it, tell the guest the link
    /// is down. Logged once.
    pub(super) fn tap_failed(&mut self, what: &str, e: &io::Error) {
        self.metrics.tap_errors.inc();
        if self.tap_gone {
            return;
        }
        self.tap_gone = true;
        log::error!(
            "virtio-net {}: tap {what} failed, link down: {e}",
            self.tap.name()
        );
        if self.rx.pending.take().is_some() {
            self.metrics.rx_dropped.inc();
        }
        self.tx_blocked = false;
        if let Some(active) = &self.state {
            if let Err(e) = active.interrupt.trigger(VirtioInterruptType::Config) {
                self.metrics.interrupt_fails.inc();
                warn_limited!(
                    self.tap_log,
                    "virtio-net: cannot raise config interrupt: {e}"
                );
            }
        }
    }

    /// Interrupt the guest for `queue` if it wants to know.
    pub(super) fn notify_queue(&mut self, which: usize) {
        let Some(active) = &mut self.state else {
            return;
        };
        let queue = if which == RX_INDEX {
            &mut active.rx
        } else {
            &mut active.tx
        };
        // Without EVENT_IDX this honours the driver's NO_INTERRUPT flag.
        if queue.needs_notification(&active.mem).unwrap_or(true) {
            if let Err(e) = active.interrupt.trigger(VirtioInterruptType::Queue) {
                self.metrics.interrupt_fails.inc();
                warn_limited!(
                    self.tap_log,
                    "virtio-net: cannot raise queue interrupt: {e}"
                );
            }
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let status: u16 = if self.tap_gone {
            0
        } else {
            VIRTIO_NET_S_LINK_UP as u16
        };
        c[..6].copy_from_slice(&self.mac.0);
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        c
    }

    fn try_activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.state.is_some() {
            return Err(ActivateError::Other("virtio-net is already active".into()));
        }
        let got = queues.len();
        let Ok([rx, tx]) = <[ActivatedQueue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { got, want: 2 });
        };
        for (index, q) in [(RX_INDEX, &rx), (TX_INDEX, &tx)] {
            if !q.queue.ready() {
                return Err(ActivateError::InvalidQueue(index));
            }
        }
        if let Some(vhost) = &mut self.vhost {
            match vhost.start(self.acked_features, &mem, &rx, &tx) {
                // The guest decides how often: through the limiter.
                Ok(()) => {
                    if self.tap_log.check().is_some() {
                        log::info!(
                            "virtio-net {}: vhost-net started (features {:#x})",
                            self.tap.name(),
                            self.acked_features
                        );
                    }
                }
                // The driver's rings do not fit guest memory: the guest's fault.
                Err(VhostNetError::RingAddress { index, .. }) => {
                    return Err(ActivateError::InvalidQueue(index))
                }
                Err(e) => {
                    let msg = format!(
                        "virtio-net {}: vhost-net: {}",
                        self.tap.name(),
                        crate::error_chain(&e)
                    );
                    warn_limited!(self.tap_log, "{msg}");
                    return Err(ActivateError::Other(msg));
                }
            }
        }
        self.state = Some(ActiveState {
            mem,
            interrupt,
            rx: rx.queue,
            tx: tx.queue,
            rx_notify: rx.notify,
            tx_notify: tx.notify,
        });
        self.rx.pending = None;
        self.rx.chains.clear();
        self.tx_blocked = false;
        if let Err(e) = self.activate_evt.write(1) {
            self.state = None;
            if let Some(vhost) = &mut self.vhost {
                if let Err(stop) = vhost.stop() {
                    log::error!("virtio-net: cannot stop vhost-net: {stop}");
                }
            }
            return Err(ActivateError::Io(e));
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        // Applied to the tap by the event loop on activation (TUNSETOFFLOAD is on the main
        // thread's allow-list only); before DRIVER_OK no frame moves.
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
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
        if let Some(vhost) = &mut self.vhost {
            if let Err(e) = vhost.stop() {
                // The kernel may still use the rings: the device cannot be handed back.
                log::error!(
                    "virtio-net {}: cannot stop vhost-net: {}",
                    self.tap.name(),
                    crate::error_chain(&e)
                );
                return false;
            }
            if self.tap_log.check().is_some() {
                log::info!("virtio-net {}: vhost-net stopped (reset)", self.tap.name());
            }
        }
        self.state = None;
        self.acked_features = 0;
        if self.rx.pending.take().is_some() {
            self.metrics.rx_dropped.inc();
        }
        self.rx.chains.clear();
        self.tx_blocked = false;
        // The event loop drops the queue eventfds and stops watching the tap.
        if let Err(e) = self.activate_evt.write(1) {
            self.metrics.event_fails.inc();
            log::error!("virtio-net: cannot signal reset to the event loop: {e}");
        }
        true
    }

    fn is_activated(&self) -> bool {
        self.state.is_some()
    }
}
