//! Test doubles: a temp directory, a minimal split-queue driver acting as the guest, and a
//! harness running the device under a real event manager (with the shared
//! [`FakeInterrupt`]).

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Vsock, QUEUE_SIZE};
use super::packet::{Header, HDR_SIZE, HOST_CID, TYPE_STREAM};
use super::unix::HostListener;
use crate::devices::bus::lock;
use crate::devices::virtio::device::{ActivatedQueue, VirtioDevice};
pub use crate::devices::virtio::test_utils::FakeInterrupt;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "bulkhead-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One descriptor as the test driver lays it out.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// The guest driver's side of one split queue.
pub struct GuestQueue {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
    chains: HashMap<u16, (Vec<u16>, Vec<Desc>)>,
}

impl GuestQueue {
    /// Lay out a queue at `base` and return the device's `Queue` for it. (virtio-queue's
    /// `MockSplitQueue` sizes the avail ring in elements, not bytes, so for 256-entry queues
    /// its used ring overlaps the avail ring; this layout leaves each ring its own page.)
    pub fn new(mem: &GuestMemoryMmap, base: u64) -> (Self, Queue) {
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        for a in [avail, used] {
            mem.write_obj(0u32, GuestAddress(a)).unwrap();
        }
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue
            .try_set_desc_table_address(GuestAddress(desc))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(used)).unwrap();
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let gq = GuestQueue {
            desc,
            avail,
            used,
            size: QUEUE_SIZE,
            free: (0..QUEUE_SIZE).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
            chains: HashMap::new(),
        };
        (gq, queue)
    }

    /// Publish a chain; returns its head index.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let idx: Vec<u16> = (0..descs.len())
            .map(|_| self.free.pop().expect("test ran out of descriptors"))
            .collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = 0u16;
            if d.writable {
                flags |= 2;
            }
            let next = if i + 1 < descs.len() {
                flags |= 1;
                idx[i + 1]
            } else {
                0
            };
            let at = self.desc + 16 * u64::from(idx[i]);
            mem.write_obj(d.addr, GuestAddress(at)).unwrap();
            mem.write_obj(d.len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let head = idx[0];
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        std::sync::atomic::fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.chains.insert(head, (idx, descs.to_vec()));
        head
    }

    /// Used entries since the last call: (descriptors of the chain, used length).
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(Vec<Desc>, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            self.used_seen = self.used_seen.wrapping_add(1);
            let Some((indices, descs)) = self.chains.remove(&(id as u16)) else {
                panic!(
                    "unknown used id {id} len {len} at {} (idx {idx}), outstanding {:?}",
                    self.used_seen,
                    self.chains.keys()
                );
            };
            self.free.extend(indices);
            out.push((descs, len));
        }
        out
    }

    /// Chains the device has not returned yet.
    pub fn outstanding(&self) -> usize {
        self.chains.len()
    }
}

pub const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 64 << 20;
const BUF_START: u64 = 0x10_0000;

/// The device under a real event manager, a guest driver on its queues, and a temp dir for
/// the host sockets.
pub struct Harness {
    pub mem: GuestMemoryMmap,
    pub dev: Arc<Mutex<Vsock>>,
    pub em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    pub rxq: GuestQueue,
    pub txq: GuestQueue,
    pub notify: [Arc<EventFd>; 3],
    pub irq: Arc<FakeInterrupt>,
    pub uds: PathBuf,
    next_buf: u64,
    pub dir: TempDir,
}

impl Harness {
    /// A device with guest-initiated connections allowed.
    pub fn new() -> Self {
        Self::with_guest_connect(true)
    }

    pub fn with_guest_connect(guest_connect: bool) -> Self {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Arc::new(Mutex::new(
            Vsock::new(GUEST_CID, HostListener::bind(&uds).unwrap(), guest_connect).unwrap(),
        ));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let (rxq, _) = GuestQueue::new(&mem, 0);
        let (txq, _) = GuestQueue::new(&mem, 0x1_0000);
        let notify = [
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        ];
        let mut h = Harness {
            mem,
            dev,
            em,
            rxq,
            txq,
            notify,
            irq: Arc::new(FakeInterrupt::default()),
            uds,
            next_buf: BUF_START,
            dir,
        };
        h.activate();
        h
    }

    /// Set up fresh rings (as a driver does after reset) and activate the device on them.
    pub fn activate(&mut self) {
        let (rxq, rx) = GuestQueue::new(&self.mem, 0);
        let (txq, tx) = GuestQueue::new(&self.mem, 0x1_0000);
        let (_evq, ev) = GuestQueue::new(&self.mem, 0x2_0000);
        self.rxq = rxq;
        self.txq = txq;
        let queues = [rx, tx, ev]
            .into_iter()
            .zip(self.notify.iter())
            .map(|(queue, notify)| ActivatedQueue {
                queue,
                notify: notify.clone(),
            })
            .collect();
        lock(&self.dev)
            .activate(self.mem.clone(), self.irq.clone(), queues)
            .unwrap();
        self.pump();
    }

    /// Run the event loop until it has been idle for a little while.
    pub fn pump(&mut self) {
        let mut idle = 0;
        for _ in 0..10_000 {
            let n = self.em.run_with_timeout(5).unwrap();
            if n == 0 {
                idle += 1;
                if idle >= 3 {
                    break;
                }
            } else {
                idle = 0;
            }
        }
        self.txq.take_used(&self.mem);
    }

    pub fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf += u64::from(len).max(1).next_multiple_of(64);
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "test ran out of guest memory"
        );
        a
    }

    /// Give the device `n` rx buffers of `size` bytes each.
    pub fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let addr = self.alloc(size);
            self.rxq.add_chain(
                &self.mem,
                &[Desc {
                    addr,
                    len: size,
                    writable: true,
                }],
            );
        }
        self.notify[0].write(1).unwrap();
    }

    /// Make the tx queue's avail index claim more chains than the queue holds (a driver bug
    /// or a hostile guest): reading the avail ring fails from then on.
    pub fn corrupt_tx_avail_idx(&mut self) {
        let bogus = self.txq.avail_idx.wrapping_add(QUEUE_SIZE + 1);
        self.mem
            .write_obj(bogus, GuestAddress(self.txq.avail + 2))
            .unwrap();
    }

    /// Put raw descriptors on the tx queue and notify.
    pub fn send_raw(&mut self, descs: &[Desc]) {
        self.txq.add_chain(&self.mem, descs);
        self.notify[1].write(1).unwrap();
    }

    /// Send a packet (header and payload in separate descriptors, as Linux does).
    pub fn send(&mut self, hdr: Header, data: &[u8]) {
        let mut hdr = hdr;
        hdr.len = data.len() as u32;
        let ha = self.alloc(HDR_SIZE as u32);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(ha))
            .unwrap();
        let mut descs = vec![Desc {
            addr: ha,
            len: HDR_SIZE as u32,
            writable: false,
        }];
        if !data.is_empty() {
            let da = self.alloc(data.len() as u32);
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            descs.push(Desc {
                addr: da,
                len: data.len() as u32,
                writable: false,
            });
        }
        self.send_raw(&descs);
    }

    /// Packets the device put on the rx queue since the last call (buffers returned empty,
    /// as unusable ones are, are skipped).
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (descs, len) in self.rxq.take_used(&self.mem) {
            if len == 0 {
                continue;
            }
            assert!(len as usize >= HDR_SIZE, "rx packet shorter than a header");
            let mut raw = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut raw, GuestAddress(descs[0].addr))
                .unwrap();
            let mut hb = [0u8; HDR_SIZE];
            hb.copy_from_slice(&raw[..HDR_SIZE]);
            let hdr = Header::from_bytes(&hb);
            assert_eq!(
                hdr.len as usize,
                raw.len() - HDR_SIZE,
                "header len vs used len"
            );
            out.push((hdr, raw[HDR_SIZE..].to_vec()));
        }
        out
    }

    /// A guest header for `op` from guest port `src` to host port `dst`.
    pub fn hdr(&self, op: u16, src: u32, dst: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
        }
    }

    /// Connect a host client and send the handshake line.
    pub fn host_connect(&mut self, port: u32) -> UnixStream {
        use std::io::Write;
        let mut c = UnixStream::connect(&self.uds).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        writeln!(c, "CONNECT {port}").unwrap();
        self.pump();
        c
    }
}
