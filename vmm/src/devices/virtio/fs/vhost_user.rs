//! The vhost-user frontend side of one virtio-fs device: connecting to virtiofsd, negotiating
//! features, and handing it guest memory and the virtqueues (`vhost` crate's [`Frontend`]).
//!
//! Every request is a blocking round trip on the socket. Each batch of requests runs under a
//! [`Watchdog`] deadline ([`REQUEST_TIMEOUT`]) so a backend that stops answering cannot hang
//! the thread that talks to it (the vCPU thread, during activation and reset).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::watchdog::Watchdog;
use crate::devices::virtio::device::ActivatedQueue;

/// How long to keep trying to connect while the socket does not exist yet or refuses.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for virtiofsd to accept or answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Virtio features the guest may negotiate with virtiofsd through us (ring layout features
/// only; the rings are served by virtiofsd, not by the VMM).
const GUEST_FEATURES: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;

/// vhost-user protocol features we use if virtiofsd offers them: several queues, and an
/// acknowledgement for every request (so errors surface at the request that caused them).
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

/// Errors talking to the vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot connect to vhost-user socket {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: vhost::Error,
    },
    #[error("cannot start the vhost-user watchdog thread")]
    Watchdog(#[source] io::Error),
    #[error("vhost-user request {request} failed")]
    Request {
        request: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user backend lacks {0}")]
    MissingFeature(&'static str),
    #[error("vhost-user backend serves at most {have} queues, the device needs {want}")]
    TooFewQueues { want: usize, have: u64 },
    #[error("guest memory region at {0:#x} is not file-backed, vhost-user needs shared memory")]
    NotSharedMemory(u64),
    #[error("{what} of queue {queue} is not contiguous in guest memory")]
    RingAddress { queue: usize, what: &'static str },
}

type Result<T> = std::result::Result<T, VhostUserError>;

fn req<T>(request: &'static str, r: vhost::Result<T>) -> Result<T> {
    r.map_err(|source| VhostUserError::Request { request, source })
}

/// A negotiated connection to a vhost-user backend.
pub(super) struct VhostUserConn {
    frontend: Frontend,
    watchdog: Watchdog,
    /// Virtio features the backend offers.
    backend_features: u64,
    num_queues: usize,
}

impl VhostUserConn {
    /// Connect to `socket` and negotiate: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
    /// and GET_QUEUE_NUM to check the backend serves `num_queues` queues. Each later batch of
    /// requests must be answered within `timeout`.
    pub(super) fn connect(socket: &Path, num_queues: usize, timeout: Duration) -> Result<Self> {
        Self::negotiate_on(connect_with_retry(socket, num_queues)?, num_queues, timeout)
    }

    /// As [`VhostUserConn::connect`], over `stream`, already connected to the backend (an
    /// inherited `--fs TAG=fd=N`).
    pub(super) fn over_stream(
        stream: UnixStream,
        num_queues: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let frontend = Frontend::from_stream(stream, num_queues as u64);
        Self::negotiate_on(frontend, num_queues, timeout)
    }

    fn negotiate_on(frontend: Frontend, num_queues: usize, timeout: Duration) -> Result<Self> {
        let watchdog =
            Watchdog::spawn(frontend.as_raw_fd(), timeout).map_err(VhostUserError::Watchdog)?;
        let mut conn = Self {
            frontend,
            watchdog,
            backend_features: 0,
            num_queues,
        };
        conn.negotiate()?;
        Ok(conn)
    }

    fn negotiate(&mut self) -> Result<()> {
        let _deadline = self.watchdog.guard("the feature negotiation");
        let fe = &mut self.frontend;
        req("SET_OWNER", fe.set_owner())?;
        self.backend_features = req("GET_FEATURES", fe.get_features())?;
        if self.backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(VhostUserError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(VhostUserError::MissingFeature(
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        let offered = req("GET_PROTOCOL_FEATURES", fe.get_protocol_features())?;
        let acked = offered & wanted_protocol_features();
        req("SET_PROTOCOL_FEATURES", fe.set_protocol_features(acked))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            let have = req("GET_QUEUE_NUM", fe.get_queue_num())?;
            if have < self.num_queues as u64 {
                return Err(VhostUserError::TooFewQueues {
                    want: self.num_queues,
                    have,
                });
            }
        } else if self.num_queues > 2 {
            // Without MQ a backend is only known to serve the hiprio and one request queue.
            return Err(VhostUserError::TooFewQueues {
                want: self.num_queues,
                have: 2,
            });
        }
        Ok(())
    }

    /// The virtio features to offer the guest: ours, as far as the backend has them.
    pub(super) fn guest_features(&self) -> u64 {
        self.backend_features & GUEST_FEATURES
    }

    /// Start the backend on the driver's queues: SET_FEATURES, SET_MEM_TABLE, then for each
    /// queue SET_VRING_NUM/ADDR/BASE/CALL/KICK, and finally SET_VRING_ENABLE on all of them.
    /// Each queue's `notify` (its ioeventfd) becomes the vring kick fd, so guest notifications
    /// go straight to the backend; `calls[i]` is signalled by the backend when it used buffers
    /// of queue `i`.
    pub(super) fn start(
        &mut self,
        guest_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[ActivatedQueue],
        calls: &[EventFd],
    ) -> Result<()> {
        let _deadline = self.watchdog.guard("the device activation");
        let fe = &mut self.frontend;
        let features =
            (guest_features & GUEST_FEATURES) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        req("SET_FEATURES", fe.set_features(features))?;
        req("SET_MEM_TABLE", fe.set_mem_table(&memory_regions(mem)?))?;
        for (i, (ActivatedQueue { queue, notify }, call)) in queues.iter().zip(calls).enumerate() {
            req("SET_VRING_NUM", fe.set_vring_num(i, queue.size()))?;
            let addrs = vring_addresses(mem, i, queue)?;
            req("SET_VRING_ADDR", fe.set_vring_addr(i, &addrs))?;
            req("SET_VRING_BASE", fe.set_vring_base(i, queue.next_avail()))?;
            req("SET_VRING_CALL", fe.set_vring_call(i, call))?;
            req("SET_VRING_KICK", fe.set_vring_kick(i, notify))?;
        }
        for i in 0..queues.len() {
            req("SET_VRING_ENABLE", fe.set_vring_enable(i, true))?;
        }
        Ok(())
    }

    /// Stop the backend's work on the first `num_queues` queues: disable them, then
    /// GET_VRING_BASE, which tells the backend to stop processing the ring.
    pub(super) fn stop(&mut self, num_queues: usize) -> Result<()> {
        let _deadline = self.watchdog.guard("the device reset");
        let fe = &mut self.frontend;
        for i in 0..num_queues {
            req("SET_VRING_ENABLE", fe.set_vring_enable(i, false))?;
        }
        for i in 0..num_queues {
            req("GET_VRING_BASE", fe.get_vring_base(i))?;
        }
        Ok(())
    }
}

impl AsRawFd for VhostUserConn {
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

/// `Frontend::connect` only retries briefly on ECONNREFUSED; the socket may also not exist yet
/// when virtiofsd is still starting. Retry both for [`CONNECT_TIMEOUT`].
fn connect_with_retry(socket: &Path, num_queues: usize) -> Result<Frontend> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match Frontend::connect(socket, num_queues as u64) {
            Ok(fe) => return Ok(fe),
            Err(vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketConnect(e)))
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(VhostUserError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Every guest memory region with the fd and offset it is mapped from.
fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>> {
    mem.iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region)
                .map_err(|_| VhostUserError::NotSharedMemory(region.start_addr().0))
        })
        .collect()
}

/// The rings of `queue` as addresses in the VMM's address space (vhost-user passes ring
/// addresses as frontend virtual addresses, which the backend translates through the memory
/// table). Each ring must lie within one guest memory region.
fn vring_addresses(mem: &GuestMemoryMmap, index: usize, queue: &Queue) -> Result<VringConfigData> {
    let size = usize::from(queue.size());
    // Split-ring sizes (virtio 1.x 2.7): 16-byte descriptors; avail = flags, idx, ring[size],
    // used_event; used = flags, idx, ring[size] of 8-byte elements, avail_event.
    let host = |gpa: u64, len: usize, what: &'static str| -> Result<u64> {
        mem.get_slice(GuestAddress(gpa), len)
            .map(|s| s.ptr_guard().as_ptr() as u64)
            .map_err(|_| VhostUserError::RingAddress { queue: index, what })
    };
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host(queue.desc_table(), 16 * size, "descriptor table")?,
        used_ring_addr: host(queue.used_ring(), 6 + 8 * size, "used ring")?,
        avail_ring_addr: host(queue.avail_ring(), 6 + 2 * size, "available ring")?,
        log_addr: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_shared_guest_memory;
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn a_backend_that_never_answers_times_out() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/bulkhead-vu-").unwrap();
        let path = dir.as_path().join("silent.sock");
        // Connections are accepted (by the kernel's backlog) but never read or answered.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let err = VhostUserConn::connect(&path, 2, Duration::from_millis(300))
            .err()
            .expect("a silent backend cannot be negotiated with");
        let waited = start.elapsed();
        assert!(
            matches!(
                err,
                VhostUserError::Request {
                    request: "GET_FEATURES",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    #[test]
    fn memory_table_needs_file_backed_memory() {
        let private = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert!(matches!(
            memory_regions(&private),
            Err(VhostUserError::NotSharedMemory(0))
        ));
        let shared = create_shared_guest_memory(16).unwrap();
        let regions = memory_regions(&shared).unwrap();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].guest_phys_addr, 0);
        assert_eq!(regions[0].memory_size, 16 << 20);
        assert_eq!(regions[0].mmap_offset, 0);
        assert!(regions[0].mmap_handle >= 0);
    }

    #[test]
    fn ring_addresses_are_host_addresses_and_must_fit_in_memory() {
        let mem = create_shared_guest_memory(16).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 256);
        let queue = vq.create_queue::<Queue>().unwrap();
        let cfg = vring_addresses(&mem, 0, &queue).unwrap();
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert_eq!(cfg.desc_table_addr, base + queue.desc_table());
        assert_eq!(cfg.avail_ring_addr, base + queue.avail_ring());
        assert_eq!(cfg.used_ring_addr, base + queue.used_ring());
        assert_eq!(cfg.queue_size, 256);

        let mut bad = vq.create_queue::<Queue>().unwrap();
        bad.set_used_ring_address(Some((16u64 << 20) as u32 - 8), Some(0));
        assert!(matches!(
            vring_addresses(&mem, 3, &bad),
            Err(VhostUserError::RingAddress {
                queue: 3,
                what: "used ring"
            })
        ));
    }
}
