//! The virtio-mmio register file: what the guest driver reads and writes, and the status
//! state machine that ends in device activation.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{MmioInterrupt, CONFIG_OFFSET, NOTIFY_OFFSET};
use crate::devices::bus::{lock, BusDevice};
use crate::devices::virtio::device::{
    ActivateError, ActivatedQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};
use crate::devices::virtio::rate_limited::{warn_limited, LogLimiter};

// Register offsets (virtio 1.x spec, 4.2.2).
const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = NOTIFY_OFFSET;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_LEN_HIGH: u64 = 0x0b4;
const SHM_BASE_LOW: u64 = 0x0b8;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;

/// "virt" in little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
const MMIO_VERSION: u32 = 2;
/// We are nobody's vendor in particular.
const MMIO_VENDOR: u32 = 0;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// Errors when building a transport (programming or host errors, never guest-triggered).
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue notification eventfd could not be created.
    #[error("cannot create queue notification eventfd")]
    NotifyEventFd(#[source] std::io::Error),
    /// The device declared a queue size virtio-queue rejects (zero, not a power of two, >32768).
    #[error("device queue {index} has invalid maximum size {size}")]
    QueueMaxSize {
        index: usize,
        size: u16,
        #[source]
        source: virtio_queue::Error,
    },
    /// The modern transport needs devices that offer VIRTIO_F_VERSION_1.
    #[error("device type {0} does not offer VIRTIO_F_VERSION_1")]
    NoVersion1(u32),
}

/// Which address of the selected queue a register writes.
#[derive(Clone, Copy)]
enum QueueAddr {
    Desc,
    Driver,
    Device,
}

/// One virtio device behind the virtio-mmio register layout.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    notify_evts: Vec<Arc<EventFd>>,
    queues: Vec<Queue>,
    // Constant properties of the device, read once.
    device_type: u32,
    avail_features: u64,
    // Driver-visible state, cleared on reset.
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Malformed accesses (size, alignment, unknown registers).
    bad_access_log: LogLimiter,
    /// Protocol violations (writes in the wrong state, bad values).
    protocol_log: LogLimiter,
}

impl MmioTransport {
    /// Wrap `device`. `irqfd` is the eventfd the device manager registers with KVM for this
    /// device's interrupt line.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irqfd: EventFd,
    ) -> Result<Self, MmioError> {
        let (device_type, avail_features, max_sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        if avail_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(MmioError::NoVersion1(device_type));
        }
        let queues = max_sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|source| MmioError::QueueMaxSize {
                    index,
                    size,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let notify_evts = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::NotifyEventFd)?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt::new(irqfd)),
            notify_evts,
            queues,
            device_type,
            avail_features,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            bad_access_log: LogLimiter::new(),
            protocol_log: LogLimiter::new(),
        })
    }

    /// One eventfd per queue, in queue order. The device manager registers eventfd `i` as a KVM
    /// ioeventfd at `base + NOTIFY_OFFSET` with datamatch `i` (4 bytes).
    pub fn queue_notify_evts(&self) -> Vec<Arc<EventFd>> {
        self.notify_evts.clone()
    }

    /// The interrupt (status bits and irqfd) of this device.
    pub fn interrupt(&self) -> Arc<MmioInterrupt> {
        self.interrupt.clone()
    }

    /// The device behind this transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// The device status register, as the driver last set it.
    pub fn device_status(&self) -> u32 {
        self.status
    }

    /// Register accesses must be 32-bit and aligned (spec 4.2.2.2). Anything else is dropped.
    fn register_access_ok(&mut self, offset: u64, len: usize, what: &str) -> bool {
        if len == 4 && offset % 4 == 0 {
            return true;
        }
        warn_limited!(
            self.bad_access_log,
            "virtio-mmio (type {}): ignoring {len}-byte {what} at register offset {offset:#x}",
            self.device_type
        );
        false
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_register(&mut self, offset: u64) -> Option<u32> {
        let value = match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device_type,
            VENDOR_ID => MMIO_VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            // No shared memory regions: every region reads as length "all ones".
            SHM_LEN_LOW | SHM_LEN_HIGH => u32::MAX,
            SHM_BASE_LOW | SHM_BASE_HIGH => 0,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                warn_limited!(
                    self.bad_access_log,
                    "virtio-mmio (type {}): read of write-only or unknown register {offset:#x}",
                    self.device_type
                );
                return None;
            }
        };
        Some(value)
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM => self.write_queue_num(value),
            QUEUE_READY => self.write_queue_ready(value),
            QUEUE_NOTIFY => self.notify_queue(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value),
            QUEUE_DESC_LOW => self.write_queue_addr(QueueAddr::Desc, false, value),
            QUEUE_DESC_HIGH => self.write_queue_addr(QueueAddr::Desc, true, value),
            QUEUE_DRIVER_LOW => self.write_queue_addr(QueueAddr::Driver, false, value),
            QUEUE_DRIVER_HIGH => self.write_queue_addr(QueueAddr::Driver, true, value),
            QUEUE_DEVICE_LOW => self.write_queue_addr(QueueAddr::Device, false, value),
            QUEUE_DEVICE_HIGH => self.write_queue_addr(QueueAddr::Device, true, value),
            SHM_SEL => {}
            _ => warn_limited!(
                self.bad_access_log,
                "virtio-mmio (type {}): write to read-only or unknown register {offset:#x}",
                self.device_type
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & DRIVER == 0 || self.status & (FEATURES_OK | FAILED) != 0 {
            warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): driver features written in status {:#x}, ignored",
                self.device_type,
                self.status
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                if value != 0 {
                    warn_limited!(
                        self.protocol_log,
                        "virtio-mmio (type {}): driver acked features {value:#x} in page {sel}, \
                         which the device does not have",
                        self.device_type
                    );
                }
                return;
            }
        };
        let offered = (self.avail_features >> shift) as u32;
        if value & !offered != 0 {
            warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): driver acked features {:#x} the device does not offer, \
                 refused",
                self.device_type,
                u64::from(value & !offered) << shift
            );
        }
        let page = u64::from(value & offered) << shift;
        self.acked_features = (self.acked_features & !(0xffff_ffffu64 << shift)) | page;
    }

    /// Queue configuration is writable between FEATURES_OK and DRIVER_OK, and (apart from
    /// QueueReady itself) only while the selected queue is not ready (spec 4.2.2.2).
    fn queue_config_writable(&mut self, what: &str, allow_when_ready: bool) -> bool {
        let state_ok =
            self.status & FEATURES_OK != 0 && self.status & (DRIVER_OK | FAILED | NEEDS_RESET) == 0;
        let queue_ok = match self.selected_queue() {
            Some(q) => allow_when_ready || !q.ready(),
            None => false,
        };
        if !(state_ok && queue_ok) {
            warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): {what} write for queue {} in status {:#x} ignored",
                self.device_type,
                self.queue_sel,
                self.status
            );
        }
        state_ok && queue_ok
    }

    fn write_queue_num(&mut self, value: u32) {
        if !self.queue_config_writable("QueueNum", false) {
            return;
        }
        let idx = self.queue_sel as usize;
        let result = match (u16::try_from(value), self.queues.get_mut(idx)) {
            (Ok(size), Some(q)) => q.try_set_size(size).is_ok(),
            _ => false,
        };
        if !result {
            warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): invalid size {value} for queue {idx}, ignored",
                self.device_type
            );
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        // Linux tears queues down (QueueReady = 0) after resetting the device; for a queue
        // that is not ready that is a no-op in any state, not worth a warning.
        if value == 0 && self.selected_queue().is_some_and(|q| !q.ready()) {
            return;
        }
        if !self.queue_config_writable("QueueReady", true) {
            return;
        }
        if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
            q.set_ready(value == 1);
        }
    }

    fn write_queue_addr(&mut self, which: QueueAddr, high: bool, value: u32) {
        if !self.queue_config_writable("queue address", false) {
            return;
        }
        let idx = self.queue_sel as usize;
        let Some(q) = self.queues.get_mut(idx) else {
            return;
        };
        let current = match which {
            QueueAddr::Desc => q.desc_table(),
            QueueAddr::Driver => q.avail_ring(),
            QueueAddr::Device => q.used_ring(),
        };
        let addr = GuestAddress(if high {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (current & !0xffff_ffff) | u64::from(value)
        });
        let result = match which {
            QueueAddr::Desc => q.try_set_desc_table_address(addr),
            QueueAddr::Driver => q.try_set_avail_ring_address(addr),
            QueueAddr::Device => q.try_set_used_ring_address(addr),
        };
        if let Err(e) = result {
            warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): queue {idx} address {:#x} ignored: {e}",
                self.device_type,
                addr.0
            );
        }
    }

    fn notify_queue(&mut self, index: u32) {
        match self.notify_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn_limited!(
                        self.protocol_log,
                        "virtio-mmio (type {}): cannot signal queue {index}: {e}",
                        self.device_type
                    );
                }
            }
            None => warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): notify for nonexistent queue {index}",
                self.device_type
            ),
        }
    }

    /// The status state machine (spec 3.1.1). The driver only adds bits, one step at a time;
    /// writing 0 resets the device.
    fn write_status(&mut self, value: u32) {
        let old = self.status;
        if value == 0 {
            self.reset();
            return;
        }
        if value == old {
            return;
        }
        let added = value & !old;
        if old & !value != 0 {
            warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): status {old:#x} -> {value:#x} clears bits, ignored",
                self.device_type
            );
            return;
        }
        if added & FAILED != 0 {
            // The driver gave up on the device; it will reset it (or leave it alone).
            self.status |= FAILED;
            return;
        }
        if old & (FAILED | NEEDS_RESET) != 0 {
            warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): status {value:#x} written to a device that needs reset",
                self.device_type
            );
            return;
        }
        match (old, added) {
            (0, ACK) => self.status = value,
            (s, DRIVER) if s == ACK => self.status = value,
            (s, FEATURES_OK) if s == ACK | DRIVER => {
                if self.acked_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                    // Leaving FEATURES_OK unset tells the driver we refuse its features.
                    warn_limited!(
                        self.protocol_log,
                        "virtio-mmio (type {}): driver did not ack VIRTIO_F_VERSION_1, \
                         features refused",
                        self.device_type
                    );
                    return;
                }
                lock(&self.device).set_acked_features(self.acked_features);
                self.status = value;
            }
            (s, DRIVER_OK) if s == ACK | DRIVER | FEATURES_OK => {
                self.status = value;
                if let Err(e) = self.activate() {
                    self.needs_reset(&e);
                }
            }
            _ => warn_limited!(
                self.protocol_log,
                "virtio-mmio (type {}): invalid status transition {old:#x} -> {value:#x}",
                self.device_type
            ),
        }
    }

    /// Hand the driver's queues to the device.
    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut handed = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter_mut().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(ActivateError::InvalidQueue(index));
            }
            q.set_event_idx(event_idx);
            // `Queue` is not `Clone`: the device gets a copy made from the queue's state, the
            // transport keeps its own to answer register reads.
            let queue =
                Queue::try_from(q.state()).map_err(|_| ActivateError::InvalidQueue(index))?;
            let notify = self
                .notify_evts
                .get(index)
                .cloned()
                .ok_or(ActivateError::InvalidQueue(index))?;
            handed.push(ActivatedQueue { queue, notify });
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        lock(&self.device).activate(self.mem.clone(), interrupt, handed)
    }

    /// Tell the driver the device is broken until it resets it.
    fn needs_reset(&mut self, error: &ActivateError) {
        warn_limited!(
            self.protocol_log,
            "virtio-mmio (type {}): activation failed, device needs reset: {error}",
            self.device_type
        );
        self.status |= NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
            log::error!(
                "virtio-mmio (type {}): cannot raise config interrupt: {e}",
                self.device_type
            );
        }
    }

    /// Status 0: stop the device and forget everything the driver configured.
    fn reset(&mut self) {
        {
            let mut dev = lock(&self.device);
            if dev.is_activated() && !dev.reset() {
                drop(dev);
                warn_limited!(
                    self.protocol_log,
                    "virtio-mmio (type {}): device cannot be reset, marked failed",
                    self.device_type
                );
                self.status |= FAILED;
                return;
            }
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if !self.register_access_ok(offset, data.len(), "read") {
            return;
        }
        if let (Some(value), Ok(out)) = (
            self.read_register(offset),
            <&mut [u8; 4]>::try_from(&mut *data),
        ) {
            *out = value.to_le_bytes();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if self.status & DRIVER == 0 || self.status & FAILED != 0 {
                warn_limited!(
                    self.protocol_log,
                    "virtio-mmio (type {}): config write in status {:#x} ignored",
                    self.device_type,
                    self.status
                );
                return;
            }
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if !self.register_access_ok(offset, data.len(), "write") {
            return;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}
