//! The vhost-net backend of a virtio-net device (`--net ...,vhost=on`): the kernel's
//! `/dev/vhost-net` moves frames between the tap and the guest's rings, in a kernel worker of
//! the VMM process, without the VMM's event loop.
//!
//! Set-up is split so nothing needs a privileged syscall after confinement:
//! - at build time, before seccomp, [`VhostNet::open`] opens `/dev/vhost-net` (through the
//!   `vhost` crate's `vhost_kern::net::Net`), makes the VMM its owner (`VHOST_SET_OWNER`,
//!   which starts the worker) and reads its features (`VHOST_GET_FEATURES`);
//! - on activation (the driver's DRIVER_OK, on a vCPU thread) [`VhostNet::start`] hands it the
//!   negotiated ring features, the guest memory table and both rings, and attaches the tap:
//!   `VHOST_SET_FEATURES`, `VHOST_SET_MEM_TABLE`, per queue `VHOST_SET_VRING_NUM/ADDR/BASE/
//!   CALL/KICK`, then `VHOST_NET_SET_BACKEND` for rx (0) and tx (1);
//! - on reset [`VhostNet::stop`] detaches the tap (`VHOST_NET_SET_BACKEND` with fd -1), after
//!   which the kernel no longer touches the rings.
//!
//! Kick: each queue's ioeventfd (registered with KVM for the notify register and queue index)
//! is the vring kick fd, so a guest notification wakes the kernel worker directly. Call: an
//! eventfd per queue that the event loop relays to the transport's interrupt, as virtio-fs
//! does: the virtio-mmio driver only looks at the rings when the InterruptStatus bit is set,
//! which an irqfd alone does not do.
//!
//! The tap keeps its 12-byte `virtio_net_hdr_v1` header (`TUNSETVNETHDRSZ`, set when it was
//! attached); without `VHOST_NET_F_VIRTIO_NET_HDR` vhost-net passes that header between ring
//! and tap as is. The tap offloads still follow the acknowledged features (`TUNSETOFFLOAD` by
//! the event loop on activation).

use std::fs::File;
use std::io;
use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::{
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{RX_INDEX, TX_INDEX};
use crate::devices::virtio::device::ActivatedQueue;

/// The device node the `vhost` crate opens.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The virtio features the kernel's vhost-net implements itself (the ring layout and the
/// receive header; QEMU's `kernel_feature_bits`). The guest may only get those of them the
/// vhost device offers; every other feature of the device (MAC, MTU, offloads) is ours and the
/// tap's, and vhost-net never hears of it.
pub const VHOST_FEATURE_BITS: u64 = bit(VIRTIO_F_NOTIFY_ON_EMPTY)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_F_ACCESS_PLATFORM)
    | bit(VIRTIO_F_RING_PACKED)
    | bit(VIRTIO_F_RING_RESET);

/// Queue names used in errors and logs.
const QUEUE_NAMES: [&str; 2] = ["rx", "tx"];

/// Errors setting up or driving vhost-net; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum VhostNetError {
    #[error("cannot open {VHOST_NET_PATH}{hint}")]
    Open {
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{step} failed")]
    Ioctl {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("{step} for {queue} failed")]
    QueueIoctl {
        step: &'static str,
        queue: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-net does not offer {0}, which the device needs")]
    MissingFeature(&'static str),
    #[error("the {what} of the {queue} queue is not contiguous in guest memory")]
    RingAddress {
        index: usize,
        queue: &'static str,
        what: &'static str,
    },
    #[error("cannot create a vhost-net call eventfd")]
    EventFd(#[source] io::Error),
    #[error("cannot duplicate the tap fd for vhost-net")]
    TapFd(#[source] io::Error),
}

type Result<T> = std::result::Result<T, VhostNetError>;

/// What to tell the user about a failed open of `/dev/vhost-net`.
pub fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            " (no vhost-net driver: load the vhost_net module, `modprobe vhost_net`, or use \
             vhost=off)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (permission denied: the VMM's user needs read and write access to it)"
        }
        _ => "",
    }
}

/// The features to offer the guest: `offered` without the vhost-implemented features the
/// vhost device lacks.
pub fn guest_features(offered: u64, vhost: u64) -> u64 {
    offered & !(VHOST_FEATURE_BITS & !vhost)
}

/// The features to give vhost-net (`VHOST_SET_FEATURES`): the acknowledged ones it implements.
pub fn backend_features(acked: u64) -> u64 {
    acked & VHOST_FEATURE_BITS
}

/// Check that a vhost device offering `vhost` can serve our tap: the 12-byte header of the
/// tap is only right with VIRTIO_F_VERSION_1 (or mergeable buffers), which we always offer.
pub fn check_backend(vhost: u64) -> Result<()> {
    if vhost & bit(VIRTIO_F_VERSION_1) == 0 {
        return Err(VhostNetError::MissingFeature("VIRTIO_F_VERSION_1"));
    }
    Ok(())
}

/// The memory table for `VHOST_SET_MEM_TABLE`: each guest region with the address it is
/// mapped at in the VMM (vhost-net runs in the VMM's address space, so no fd is passed).
pub fn memory_table(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|region| VhostUserMemoryRegionInfo {
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: -1,
        })
        .collect()
}

/// The rings of `queue` for `VHOST_SET_VRING_ADDR`, as guest addresses (the `vhost` crate
/// translates them through the memory it was opened with). Each ring must lie within one
/// guest memory region: vhost-net maps it as one range of the VMM's address space.
pub fn vring_config(mem: &GuestMemoryMmap, index: usize, queue: &Queue) -> Result<VringConfigData> {
    let size = usize::from(queue.size());
    let queue_name = QUEUE_NAMES.get(index).copied().unwrap_or("unknown");
    // Split-ring sizes (virtio 1.x 2.7): 16-byte descriptors; avail = flags, idx, ring[size],
    // used_event; used = flags, idx, ring[size] of 8-byte elements, avail_event.
    let check = |gpa: u64, len: usize, what: &'static str| -> Result<u64> {
        mem.get_slice(GuestAddress(gpa), len)
            .map(|_| gpa)
            .map_err(|_| VhostNetError::RingAddress {
                index,
                queue: queue_name,
                what,
            })
    };
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: check(queue.desc_table(), 16 * size, "descriptor table")?,
        used_ring_addr: check(queue.used_ring(), 6 + 8 * size, "used ring")?,
        avail_ring_addr: check(queue.avail_ring(), 6 + 2 * size, "available ring")?,
        log_addr: None,
    })
}

/// An owned `/dev/vhost-net` instance for one device, with the tap it serves and the call
/// eventfds it signals.
pub struct VhostNet {
    backend: KernNet<Arc<GuestMemoryMmap>>,
    /// A duplicate of the device's tap fd, given to `VHOST_NET_SET_BACKEND`.
    tap: File,
    features: u64,
    /// Signalled by vhost-net when it used buffers of rx (0) or tx (1).
    calls: [EventFd; 2],
    /// The tap is attached to the rings.
    running: bool,
}

impl VhostNet {
    /// Open `/dev/vhost-net` for guest memory `mem`, become its owner and read its features.
    /// Before confinement: neither the open nor `VHOST_SET_OWNER` is allowed afterwards.
    pub fn open(mem: &GuestMemoryMmap, tap: File) -> Result<Self> {
        let backend = KernNet::new(Arc::new(mem.clone())).map_err(|e| match e {
            vhost::Error::VhostOpen(source) => VhostNetError::Open {
                hint: open_hint(&source),
                source,
            },
            other => VhostNetError::Open {
                hint: "",
                source: io::Error::other(other.to_string()),
            },
        })?;
        let ioctl = |step| move |source| VhostNetError::Ioctl { step, source };
        backend.set_owner().map_err(ioctl("VHOST_SET_OWNER"))?;
        let features = backend
            .get_features()
            .map_err(ioctl("VHOST_GET_FEATURES"))?;
        check_backend(features)?;
        let call = || EventFd::new(EFD_NONBLOCK).map_err(VhostNetError::EventFd);
        Ok(VhostNet {
            backend,
            tap,
            features,
            calls: [call()?, call()?],
            running: false,
        })
    }

    /// The features the vhost device offers (`VHOST_GET_FEATURES`).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The call eventfds, rx then tx, for the event loop.
    pub(super) fn calls(&self) -> &[EventFd; 2] {
        &self.calls
    }

    /// Whether the tap is attached to the rings.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Hand the driver's rings to vhost-net and attach the tap (see the module doc). On
    /// failure nothing stays attached.
    pub(super) fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        rx: &ActivatedQueue,
        tx: &ActivatedQueue,
    ) -> Result<()> {
        let result = self.try_start(acked, mem, rx, tx);
        if result.is_err() {
            // Best effort: the step that failed is what the caller reports.
            let _ = self.detach();
        }
        result
    }

    fn try_start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        rx: &ActivatedQueue,
        tx: &ActivatedQueue,
    ) -> Result<()> {
        let b = &self.backend;
        let ioctl = |step| move |source| VhostNetError::Ioctl { step, source };
        b.set_features(backend_features(acked))
            .map_err(ioctl("VHOST_SET_FEATURES"))?;
        b.set_mem_table(&memory_table(mem))
            .map_err(ioctl("VHOST_SET_MEM_TABLE"))?;
        for (index, q) in [(RX_INDEX, rx), (TX_INDEX, tx)] {
            let queue = QUEUE_NAMES[index];
            let step = |step| {
                move |source| VhostNetError::QueueIoctl {
                    step,
                    queue,
                    source,
                }
            };
            let config = vring_config(mem, index, &q.queue)?;
            b.set_vring_num(index, q.queue.size())
                .map_err(step("VHOST_SET_VRING_NUM"))?;
            b.set_vring_addr(index, &config)
                .map_err(step("VHOST_SET_VRING_ADDR"))?;
            b.set_vring_base(index, q.queue.next_avail())
                .map_err(step("VHOST_SET_VRING_BASE"))?;
            b.set_vring_call(index, &self.calls[index])
                .map_err(step("VHOST_SET_VRING_CALL"))?;
            b.set_vring_kick(index, &q.notify)
                .map_err(step("VHOST_SET_VRING_KICK"))?;
        }
        self.running = true;
        for index in [RX_INDEX, TX_INDEX] {
            self.backend
                .set_backend(index, Some(&self.tap))
                .map_err(|source| VhostNetError::QueueIoctl {
                    step: "VHOST_NET_SET_BACKEND",
                    queue: QUEUE_NAMES[index],
                    source,
                })?;
        }
        Ok(())
    }

    /// Detach the tap from both rings; afterwards vhost-net no longer touches guest memory
    /// for this device (the kernel flushes its worker before returning).
    pub(super) fn stop(&mut self) -> Result<()> {
        self.detach()
    }

    fn detach(&mut self) -> Result<()> {
        let mut first_error = None;
        for index in [RX_INDEX, TX_INDEX] {
            if let Err(source) = self.backend.set_backend(index, None) {
                first_error.get_or_insert(VhostNetError::QueueIoctl {
                    step: "VHOST_NET_SET_BACKEND -1",
                    queue: QUEUE_NAMES[index],
                    source,
                });
            }
        }
        match first_error {
            None => {
                self.running = false;
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("features", &format_args!("{:#x}", self.features))
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    };
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::net::{offered_features, TapOffloads};

    #[test]
    fn the_guest_loses_only_ring_features_vhost_lacks() {
        let offered = offered_features(TapOffloads::default(), true);
        let all = VHOST_FEATURE_BITS;
        assert_eq!(guest_features(offered, all), offered);
        // A vhost-net without mergeable buffers: the guest is not offered them; the device's
        // own features (MAC, MTU, offloads, which the tap does) stay whatever vhost says.
        let no_mrg = all & !bit(VIRTIO_NET_F_MRG_RXBUF);
        let got = guest_features(offered, no_mrg);
        assert_eq!(got, offered & !bit(VIRTIO_NET_F_MRG_RXBUF));
        for f in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_CSUM,
            VIRTIO_F_VERSION_1,
        ] {
            assert_ne!(got & bit(f), 0, "feature {f}");
        }
        // Nothing is added that we did not offer (EVENT_IDX is vhost's, not in `offered`).
        assert_eq!(
            guest_features(offered, all) & bit(VIRTIO_RING_F_EVENT_IDX),
            0
        );
    }

    #[test]
    fn vhost_gets_only_the_acked_features_it_implements() {
        let acked = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4);
        assert_eq!(
            backend_features(acked),
            bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)
        );
        assert_eq!(backend_features(0), 0);
    }

    #[test]
    fn a_vhost_without_version_1_is_refused() {
        check_backend(VHOST_FEATURE_BITS).unwrap();
        let err = check_backend(VHOST_FEATURE_BITS & !bit(VIRTIO_F_VERSION_1)).unwrap_err();
        assert!(err.to_string().contains("VIRTIO_F_VERSION_1"), "{err}");
    }

    #[test]
    fn memory_table_maps_every_region_at_its_host_address() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x20_0000),
        ])
        .unwrap();
        let table = memory_table(&mem);
        assert_eq!(table.len(), 2);
        for (entry, (gpa, len)) in table
            .iter()
            .zip([(0u64, 0x10_0000u64), (1 << 32, 0x20_0000)])
        {
            assert_eq!(entry.guest_phys_addr, gpa);
            assert_eq!(entry.memory_size, len);
            let host = mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
            assert_eq!(entry.userspace_addr, host);
            assert_eq!(
                entry.mmap_handle, -1,
                "no fd: vhost-net shares our address space"
            );
        }
    }

    #[test]
    fn ring_addresses_are_guest_addresses_that_fit_one_region() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 256);
        let queue = vq.create_queue::<Queue>().unwrap();
        let cfg = vring_config(&mem, TX_INDEX, &queue).unwrap();
        assert_eq!(cfg.desc_table_addr, queue.desc_table());
        assert_eq!(cfg.avail_ring_addr, queue.avail_ring());
        assert_eq!(cfg.used_ring_addr, queue.used_ring());
        assert_eq!((cfg.queue_size, cfg.queue_max_size), (256, 256));
        assert_eq!(cfg.log_addr, None);

        let mut bad = vq.create_queue::<Queue>().unwrap();
        bad.set_used_ring_address(Some(0x10_0000 - 8), Some(0));
        let Err(err) = vring_config(&mem, TX_INDEX, &bad) else {
            panic!("a used ring past the end of memory was accepted");
        };
        assert!(
            matches!(
                err,
                VhostNetError::RingAddress {
                    index: TX_INDEX,
                    queue: "tx",
                    what: "used ring"
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the used ring of the tx queue is not contiguous in guest memory"
        );
    }

    #[test]
    fn errors_name_the_step_and_the_queue() {
        let err = VhostNetError::QueueIoctl {
            step: "VHOST_SET_VRING_ADDR",
            queue: "rx",
            source: vhost::Error::InvalidQueue,
        };
        assert_eq!(err.to_string(), "VHOST_SET_VRING_ADDR for rx failed");
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        assert!(open_hint(&enoent).contains("modprobe vhost_net"));
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        assert!(open_hint(&eacces).contains("read and write access"));
        assert_eq!(open_hint(&io::Error::from_raw_os_error(libc::EINTR)), "");
    }

    /// Without `/dev/vhost-net` (this host, unless the module is loaded) vhost=on is refused
    /// with a message that says what to do; with it, the device opens and offers VERSION_1.
    #[test]
    fn opening_vhost_net_fails_clearly_when_it_is_missing() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let tap = File::open("/dev/null").unwrap();
        match VhostNet::open(&mem, tap) {
            Err(e) if !std::path::Path::new(VHOST_NET_PATH).exists() => {
                let msg = crate::error_chain(&e);
                assert!(matches!(e, VhostNetError::Open { .. }), "{e:?}");
                assert!(
                    msg.contains("/dev/vhost-net") && msg.contains("modprobe vhost_net"),
                    "{msg}"
                );
            }
            Err(e) => bulkhead_test_skip::skip(format!(
                "{VHOST_NET_PATH} exists but cannot be used here: {}",
                crate::error_chain(&e)
            )),
            Ok(vhost) => {
                assert_ne!(vhost.features() & bit(VIRTIO_F_VERSION_1), 0);
                assert!(!vhost.is_running());
            }
        }
    }
}
