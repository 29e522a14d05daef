//! The virtio-fs device model: configuration space and features for the transport, and
//! activation/reset, which hand the virtqueues to virtiofsd over vhost-user.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use bulkhead_vmm_contract::HostSocket;

use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::{FsConfig, FsConfigError};
use super::failure::DeviceFailure;
use super::metrics::FsMetrics;
use super::vhost_user::{VhostUserConn, VhostUserError, REQUEST_TIMEOUT};
use crate::devices::virtio::device::{
    ActivateError, ActivatedQueue, VirtioDevice, VirtioInterrupt,
};
use crate::error_chain;

/// Errors when creating the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("invalid virtio-fs configuration")]
    Config(#[from] FsConfigError),
    #[error("cannot set up virtiofsd for tag {tag}")]
    Backend {
        tag: String,
        #[source]
        source: VhostUserError,
    },
    #[error("cannot create virtio-fs eventfd")]
    EventFd(#[source] io::Error),
    #[error("virtio-fs tag {tag}: the inherited fd={fd} must be given with Fs::over_stream")]
    InheritedFd { tag: String, fd: i32 },
}

/// What an activated device works with.
pub(super) struct ActiveState {
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    /// Kept so the regions the backend was given stay mapped while it may use them.
    _mem: GuestMemoryMmap,
    num_queues: usize,
}

/// Inactive until the driver sets DRIVER_OK, inactive again after a reset.
pub(super) enum DeviceState {
    Inactive,
    Active(ActiveState),
}

/// The virtio file system device (device ID 26), a vhost-user frontend to virtiofsd. Share it
/// as `Arc<Mutex<Fs>>`: the transport sees it as a `VirtioDevice`, the event loop as a
/// `MutEventSubscriber` (see the module doc of [`fs`](super)).
pub struct Fs {
    pub(super) config: FsConfig,
    pub(super) conn: VhostUserConn,
    queue_sizes: Vec<u16>,
    avail_features: u64,
    acked_features: u64,
    /// One per queue, signalled by virtiofsd when it used buffers (vhost-user "call").
    pub(super) calls: Vec<EventFd>,
    pub(super) state: DeviceState,
    pub(super) failure: Arc<DeviceFailure>,
    pub(super) metrics: Arc<FsMetrics>,
}

impl Fs {
    /// Connect to the virtiofsd listening on `config.socket` and negotiate with it. Fails if
    /// virtiofsd is not there (after a few seconds of retrying), does not speak the features
    /// we need, or serves fewer queues than `config` asks for.
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        config.validate()?;
        let socket = match &config.socket {
            HostSocket::Path(p) => p.clone(),
            HostSocket::Fd(fd) => {
                return Err(FsError::InheritedFd {
                    tag: config.tag.clone(),
                    fd: *fd,
                })
            }
        };
        let conn = VhostUserConn::connect(&socket, config.num_queues(), REQUEST_TIMEOUT).map_err(
            |source| FsError::Backend {
                tag: config.tag.clone(),
                source,
            },
        )?;
        Self::with_conn(config, conn)
    }

    /// As [`Fs::new`], over `stream`, already connected to virtiofsd (`--fs TAG=fd=N`, taken
    /// over by the caller after checking it is a connected unix stream socket).
    pub fn over_stream(config: FsConfig, stream: UnixStream) -> Result<Self, FsError> {
        config.validate()?;
        let conn = VhostUserConn::over_stream(stream, config.num_queues(), REQUEST_TIMEOUT)
            .map_err(|source| FsError::Backend {
                tag: config.tag.clone(),
                source,
            })?;
        Self::with_conn(config, conn)
    }

    fn with_conn(config: FsConfig, conn: VhostUserConn) -> Result<Self, FsError> {
        let calls = (0..config.num_queues())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(FsError::EventFd)?;
        Ok(Self {
            queue_sizes: vec![config.queue_size; config.num_queues()],
            avail_features: conn.guest_features(),
            acked_features: 0,
            calls,
            state: DeviceState::Inactive,
            failure: Arc::new(DeviceFailure::new().map_err(FsError::EventFd)?),
            metrics: Arc::new(FsMetrics::default()),
            config,
            conn,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.config.tag
    }

    /// Fires when virtiofsd is gone (or a request to it failed): the VM should stop, with
    /// [`DeviceFailure::reason`] as the message.
    pub fn failure(&self) -> Arc<DeviceFailure> {
        self.failure.clone()
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Record that virtiofsd can no longer serve this device; logged once.
    pub(super) fn backend_failed(&self, what: &str) {
        let reason = format!("virtiofsd for tag {} {what}", self.config.tag);
        if self.failure.fail(reason.clone()) {
            log::error!("virtio-fs: {reason}; the VM must stop");
        }
    }

    fn try_activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::Other("virtio-fs is already active".into()));
        }
        if self.failure.has_failed() {
            return Err(ActivateError::Other(format!(
                "virtiofsd for tag {} is gone",
                self.config.tag
            )));
        }
        let want = self.config.num_queues();
        if queues.len() != want {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want,
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.queue.ready()) {
            return Err(ActivateError::InvalidQueue(i));
        }
        match self
            .conn
            .start(self.acked_features, &mem, &queues, &self.calls)
        {
            Ok(()) => {}
            // The driver's rings do not fit guest memory: the guest's fault, not the backend's.
            Err(VhostUserError::RingAddress { queue, .. }) => {
                return Err(ActivateError::InvalidQueue(queue))
            }
            Err(e) => {
                self.backend_failed(&format!("failed during activation: {}", error_chain(&e)));
                return Err(ActivateError::Other(error_chain(&e)));
            }
        }
        self.state = DeviceState::Active(ActiveState {
            interrupt,
            _mem: mem,
            num_queues: want,
        });
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.config.config_space();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = space.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
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
        let DeviceState::Active(active) = &self.state else {
            return true;
        };
        let num_queues = active.num_queues;
        self.state = DeviceState::Inactive;
        match self.conn.stop(num_queues) {
            Ok(()) => true,
            Err(e) => {
                self.backend_failed(&format!("failed during reset: {}", error_chain(&e)));
                false
            }
        }
    }

    fn is_activated(&self) -> bool {
        matches!(self.state, DeviceState::Active(_))
    }
}
