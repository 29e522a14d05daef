//! virtio-fs: the guest mounts a host directory (`mount -t virtiofs TAG /mnt`), served by the
//! real `virtiofsd` over vhost-user. The VMM is only the vhost-user *frontend*: it owns the
//! virtio device (ID 26, config space `tag[36]` + `num_request_queues`), and hands virtiofsd
//! guest memory and the virtqueues; virtiofsd reads the FUSE requests from the rings itself.
//!
//! # Data path
//!
//! - Queue 0 is the high-priority queue (FUSE interrupts/forgets), queues 1..=N the request
//!   queues ([`FsConfig::num_request_queues`], default 1; virtiofsd 1.14 serves one request
//!   queue, and [`Fs::new`] refuses more than the backend reports with GET_QUEUE_NUM).
//! - Guest memory must be shareable: the VMM builds it with
//!   `vstate::memory::create_shared_guest_memory` (one sealed memfd, `MAP_SHARED`) whenever a
//!   vhost-user device is configured; SET_MEM_TABLE passes the memfd and each region's offset.
//! - Guest → virtiofsd: each queue's ioeventfd (the transport's notify eventfd) is given to
//!   virtiofsd as the vring *kick* fd, so a guest notification wakes virtiofsd directly
//!   through KVM, without the VMM.
//! - virtiofsd → guest: virtiofsd signals a *call* eventfd the device owns; the event loop
//!   reads it and raises the interrupt through [`VirtioInterrupt::trigger`]. It cannot be the
//!   irqfd itself: the virtio-mmio driver only looks at the rings when the InterruptStatus bit
//!   is set, which only the transport's interrupt does.
//!
//! # When virtiofsd dies
//!
//! The event loop watches the vhost-user socket for hang-up. When virtiofsd exits (or a
//! request to it fails or times out, [`vhost_user::REQUEST_TIMEOUT`], enforced by a watchdog
//! thread per device that shuts the socket down), the device records
//! "virtiofsd for tag X exited ..." in its [`DeviceFailure`] and signals its eventfd; the VMM's
//! exit monitor watches `Fs::failure().evt()` and stops the VM with that reason. We stop the
//! VM rather than fail the guest's file operations: the guest's FUSE requests already in the
//! rings would never be answered (only the backend could), so the guest file system would
//! hang, and the container's root file system is gone anyway. Nothing in the VMM waits on
//! virtiofsd without a timeout, so the VMM itself never hangs.
//!
//! # Threads and locks
//!
//! Same pattern as [`rng`](super::rng): one `Arc<Mutex<Fs>>` seen by the transport (vCPU
//! thread: activate/reset, which talk to virtiofsd synchronously) and by the event loop (call
//! eventfds and the socket, registered once in `init`). The event loop only reads eventfds and
//! raises interrupts; it never sends vhost-user requests.
//!
//! ```ignore
//! let config: FsConfig = "rootfs=/run/bulkhead/vfs.sock".parse()?;
//! let fs = Arc::new(Mutex::new(Fs::new(config)?));
//! exit_monitor.watch(lock(&fs).failure());             // stop the VM when virtiofsd dies
//! event_manager.add_subscriber(fs.clone());             // call eventfds + socket hang-up
//! let transport = MmioTransport::new(mem, fs, irqfd)?;  // guest memory from
//!                                                       // create_shared_guest_memory
//! ```
//!
//! [`VirtioInterrupt::trigger`]: crate::devices::virtio::VirtioInterrupt::trigger

mod config;
mod device;
mod event_handler;
mod failure;
mod metrics;
#[cfg(test)]
mod tests;
pub mod vhost_user;
mod watchdog;

pub use config::{
    FsConfig, FsConfigError, FsSpec, FsSpecError, CONFIG_SPACE_LEN, DEFAULT_QUEUE_SIZE,
    DEFAULT_REQUEST_QUEUES, TAG_LEN,
};
pub use device::{Fs, FsError};
pub use failure::DeviceFailure;
pub use metrics::FsMetrics;
