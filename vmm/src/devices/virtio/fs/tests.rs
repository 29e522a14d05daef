//! virtio-fs against the real virtiofsd: handshake, FUSE requests through the rings, and
//! virtiofsd dying. Skipped (with a message) when virtiofsd is not installed; install it with
//! `scripts/install-virtiofsd.sh` or point `BULKHEAD_VIRTIOFSD` at a binary. virtiofsd runs
//! with the options the host uses ([`VirtiofsdOptions`], the VMM contract's).

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use bulkhead_vmm_contract::virtiofsd::VIRTIOFSD_VERSION;
use bulkhead_vmm_contract::{FsConfinement, HostSocket, VirtiofsdOptions};

use super::vhost_user::VhostUserError;
use super::*;
use crate::devices::bus::lock;
use crate::devices::unix_fd::{self, Expect};
use crate::devices::virtio::device::{ActivateError, ActivatedQueue, VirtioDevice};
use crate::devices::virtio::test_utils::{desc, used, FakeInterrupt, NEXT, WRITE};
use crate::vstate::memory::create_shared_guest_memory;

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

const QUEUE_SIZE: u16 = 256;
const HIPRIO_RING: u64 = 0;
const REQUEST_RING: u64 = 0x10_0000;
const REQ_BUF: u64 = 0x20_0000;
const OUT_BUF: u64 = 0x21_0000;
const OUT_LEN: u32 = 0x1000;

/// The virtiofsd binary: `$BULKHEAD_VIRTIOFSD` if set, else the pinned version in the tool
/// cache (`${BULKHEAD_CACHE:-/var/cache/bulkhead}/virtiofsd-<version>/bin/virtiofsd`).
/// `None` if that file does not exist.
fn find_virtiofsd() -> Option<PathBuf> {
    let path = match std::env::var_os("BULKHEAD_VIRTIOFSD") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("BULKHEAD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/bulkhead"))
            .join(format!("virtiofsd-{VIRTIOFSD_VERSION}"))
            .join("bin/virtiofsd"),
    };
    path.is_file().then_some(path)
}

/// A virtiofsd child serving a fresh temporary directory; killed on drop.
struct Virtiofsd {
    child: Child,
    /// Removed (with the socket and the shared directory) when the test ends.
    _dir: TempDir,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Start virtiofsd, or `None` (the calling test skips, [`bulkhead_test_skip::skip`]) if
    /// it is not installed.
    fn start() -> Option<Self> {
        let Some(binary) = find_virtiofsd() else {
            bulkhead_test_skip::skip(
                "virtiofsd not found (run scripts/install-virtiofsd.sh or set BULKHEAD_VIRTIOFSD)",
            );
            return None;
        };
        let dir = TempDir::new_with_prefix("/tmp/bulkhead-vfs-").unwrap();
        let shared = dir.as_path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), vec![b'x'; 1234]).unwrap();
        let socket = dir.as_path().join("vfs.sock");
        let opts = VirtiofsdOptions {
            binary,
            confinement: FsConfinement::None,
            ..Default::default()
        };
        let child = std::process::Command::new(&opts.binary)
            .args(opts.args(&socket, &shared))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            _dir: dir,
            socket,
        })
    }

    fn config(&self, tag: &str) -> FsConfig {
        let mut c = FsConfig::new(tag, &self.socket).unwrap();
        c.queue_size = QUEUE_SIZE;
        c
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The guest side: shared memory, the two mock queues, their notify eventfds.
struct Guest {
    mem: GuestMemoryMmap,
    hiprio: MockSplitQueue<'static, GuestMemoryMmap>,
    request: MockSplitQueue<'static, GuestMemoryMmap>,
    notify: Vec<Arc<EventFd>>,
    irq: Arc<FakeInterrupt>,
}

impl Guest {
    fn new() -> Self {
        // Leaked so the mock queues can borrow it for 'static; a few MiB per test.
        let mem: &'static GuestMemoryMmap =
            Box::leak(Box::new(create_shared_guest_memory(16).unwrap()));
        Self {
            mem: mem.clone(),
            hiprio: MockSplitQueue::create(mem, GuestAddress(HIPRIO_RING), QUEUE_SIZE),
            request: MockSplitQueue::create(mem, GuestAddress(REQUEST_RING), QUEUE_SIZE),
            notify: (0..2)
                .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
                .collect(),
            irq: Arc::new(FakeInterrupt::default()),
        }
    }

    fn queues(&self) -> Vec<ActivatedQueue> {
        [&self.hiprio, &self.request]
            .iter()
            .zip(&self.notify)
            .map(|(vq, notify)| ActivatedQueue {
                queue: vq.create_queue().unwrap(),
                notify: notify.clone(),
            })
            .collect()
    }

    fn activate(&self, fs: &Arc<Mutex<Fs>>) -> Result<(), ActivateError> {
        let mut dev = lock(fs);
        let features = dev.avail_features();
        dev.set_acked_features(features);
        dev.activate(self.mem.clone(), self.irq.clone(), self.queues())
    }

    /// Post one FUSE request (`header` + `body`, device-readable) with a device-writable reply
    /// buffer on the request queue as chain `index`, and kick.
    fn send(&self, index: u16, opcode: u32, unique: u64, nodeid: u64, body: &[u8]) {
        let header = FuseInHeader {
            len: (40 + body.len()) as u32,
            opcode,
            unique,
            nodeid,
            ..Default::default()
        };
        let base = REQ_BUF + u64::from(index) * 0x200;
        let out = OUT_BUF + u64::from(index) * u64::from(OUT_LEN);
        self.mem.write_obj(header, GuestAddress(base)).unwrap();
        self.mem.write_slice(body, GuestAddress(base + 40)).unwrap();
        let first = index * 2;
        let descs = [
            desc(base, header.len, NEXT, first + 1),
            desc(out, OUT_LEN, WRITE, 0),
        ];
        // With EVENT_IDX the driver asks for an interrupt once the device used the entry at
        // `used_event`: ask for this request's.
        let used_event = self.request.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
        let next_used = self.request.used().idx().load();
        self.mem
            .write_obj(next_used, GuestAddress(used_event))
            .unwrap();
        self.request.add_desc_chains(&descs, first).unwrap();
        self.notify[1].write(1).unwrap();
    }

    /// The used ring of the request queue as (head, len).
    fn used(&self) -> Vec<(u32, u32)> {
        used(&self.request)
    }

    fn reply(&self, index: u16) -> (FuseOutHeader, Vec<u8>) {
        let out = GuestAddress(OUT_BUF + u64::from(index) * u64::from(OUT_LEN));
        let header: FuseOutHeader = self.mem.read_obj(out).unwrap();
        let mut body = vec![0u8; header.len.saturating_sub(16).min(OUT_LEN) as usize];
        self.mem
            .read_slice(&mut body, GuestAddress(out.0 + 16))
            .unwrap();
        (header, body)
    }
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FuseInHeader {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    total_extlen: u16,
    padding: u16,
}
// SAFETY: plain C struct of integers without padding holes.
unsafe impl ByteValued for FuseInHeader {}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FuseOutHeader {
    len: u32,
    error: i32,
    unique: u64,
}
// SAFETY: plain C struct of integers without padding holes.
unsafe impl ByteValued for FuseOutHeader {}

fn fuse_init_in() -> Vec<u8> {
    // major 7, minor 31, max_readahead, flags 0 (no INIT_EXT: the 16-byte form).
    [7u32, 31, 0x2_0000, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Run the event loop until `done` or 5 s passed.
fn run_until(manager: &mut Manager, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        manager.run_with_timeout(100).unwrap();
    }
    true
}

fn new_device(vfsd: &Virtiofsd, tag: &str) -> (Arc<Mutex<Fs>>, Manager) {
    let fs = Arc::new(Mutex::new(Fs::new(vfsd.config(tag)).unwrap()));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(fs.clone());
    (fs, manager)
}

#[test]
fn handshake_offers_ring_features_and_the_config_space() {
    let Some(vfsd) = Virtiofsd::start() else {
        return;
    };
    let fs = Fs::new(vfsd.config("myfs")).unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let want =
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC;
    // Exactly the ring features; vhost-user-only bits (PROTOCOL_FEATURES, LOG_ALL) stay hidden.
    assert_eq!(fs.avail_features(), want);
    let mut fs = fs;
    fs.set_acked_features(u64::MAX);
    assert_eq!(fs.acked_features(), want);

    let mut tag = [0xffu8; 8];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag, b"myfs\0\0\0\0");
    let mut n = [0xffu8; 4];
    fs.read_config(TAG_LEN as u64, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1);
    // Reads past the end leave the rest of the buffer alone.
    let mut tail = [0xffu8; 8];
    fs.read_config(CONFIG_SPACE_LEN as u64 - 2, &mut tail);
    assert_eq!(tail, [0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    fs.read_config(u64::MAX, &mut tail);
    assert!(!fs.failure().has_failed());
}

#[test]
fn more_request_queues_than_virtiofsd_serves_are_refused() {
    let Some(vfsd) = Virtiofsd::start() else {
        return;
    };
    let mut config = vfsd.config("multi");
    config.num_request_queues = 4;
    let err = Fs::new(config)
        .err()
        .expect("virtiofsd 1.14 serves one request queue");
    assert!(
        matches!(
            err,
            FsError::Backend {
                source: VhostUserError::TooFewQueues { want: 5, have: 2 },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn fuse_requests_go_through_the_rings_to_virtiofsd() {
    let Some(vfsd) = Virtiofsd::start() else {
        return;
    };
    let (fs, mut manager) = new_device(&vfsd, "rootfs");
    let guest = Guest::new();
    guest.activate(&fs).unwrap();
    assert!(lock(&fs).is_activated());

    guest.send(0, FUSE_INIT, 0x1111, 0, &fuse_init_in());
    assert!(
        run_until(&mut manager, || guest.irq.count() >= 1),
        "no interrupt for FUSE_INIT"
    );
    let used = guest.used();
    assert_eq!(used.len(), 1);
    let (header, body) = guest.reply(0);
    assert_eq!(used[0], (0, header.len), "used length is the reply length");
    assert_eq!(header.unique, 0x1111);
    assert_eq!(header.error, 0);
    assert_eq!(u32_at(&body, 0), 7, "FUSE major version");

    // Look up a file of the shared directory: its size comes back in the entry's attributes
    // (fuse_entry_out: nodeid, generation, 2 x valid, 2 x nsec, then attr { ino, size, .. }).
    guest.send(1, FUSE_LOOKUP, 0x2222, 1, b"hello.txt\0");
    assert!(run_until(&mut manager, || guest.irq.count() >= 2));
    assert_eq!(guest.used().len(), 2);
    let (header, body) = guest.reply(1);
    assert_eq!((header.unique, header.error), (0x2222, 0));
    assert_eq!(u64_at(&body, 48), 1234, "file size through virtiofsd");

    guest.send(2, FUSE_LOOKUP, 0x3333, 1, b"missing\0");
    assert!(run_until(&mut manager, || guest.irq.count() >= 3));
    assert_eq!(guest.used().len(), 3);
    let (header, _) = guest.reply(2);
    assert_eq!(header.error, -libc::ENOENT);

    assert_eq!(lock(&fs).metrics().interrupts.get(), 3);
    assert!(!lock(&fs).failure().has_failed());
}

#[test]
fn an_inherited_connection_serves_like_a_socket_path() {
    use std::os::fd::IntoRawFd;
    let Some(vfsd) = Virtiofsd::start() else {
        return;
    };
    // What the launcher passes as `--fs TAG=fd=N`: a connection it made.
    let fd = std::os::unix::net::UnixStream::connect(&vfsd.socket)
        .unwrap()
        .into_raw_fd();
    let mut config = vfsd.config("rootfs");
    config.socket = HostSocket::Fd(fd);
    assert!(
        matches!(Fs::new(config.clone()), Err(FsError::InheritedFd { .. })),
        "Fs::new never adopts a descriptor by itself"
    );
    // SAFETY: `fd` was just released by its stream; nothing else owns it.
    let owned = unsafe { unix_fd::take(fd, Expect::Connected) }.unwrap();
    let fs = Arc::new(Mutex::new(
        Fs::over_stream(config, std::os::unix::net::UnixStream::from(owned)).unwrap(),
    ));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(fs.clone());
    let guest = Guest::new();
    guest.activate(&fs).unwrap();
    guest.send(0, FUSE_INIT, 0x1111, 0, &fuse_init_in());
    assert!(
        run_until(&mut manager, || guest.irq.count() >= 1),
        "no interrupt for FUSE_INIT"
    );
    let (header, body) = guest.reply(0);
    assert_eq!((header.unique, header.error), (0x1111, 0));
    assert_eq!(u32_at(&body, 0), 7, "FUSE major version");
}

#[test]
fn reset_stops_the_rings_and_the_device_can_be_activated_again() {
    let Some(vfsd) = Virtiofsd::start() else {
        return;
    };
    let (fs, mut manager) = new_device(&vfsd, "rootfs");
    let guest = Guest::new();
    guest.activate(&fs).unwrap();
    guest.send(0, FUSE_INIT, 1, 0, &fuse_init_in());
    assert!(run_until(&mut manager, || guest.irq.count() >= 1));

    assert!(lock(&fs).reset());
    assert!(!lock(&fs).is_activated());

    // A driver starting over: fresh rings, FUSE_INIT again, then a lookup.
    let again = Guest::new();
    again.activate(&fs).unwrap();
    again.send(0, FUSE_INIT, 2, 0, &fuse_init_in());
    assert!(run_until(&mut manager, || again.irq.count() >= 1));
    let (header, _) = again.reply(0);
    assert_eq!((header.unique, header.error), (2, 0));
    again.send(1, FUSE_LOOKUP, 3, 1, b"hello.txt\0");
    assert!(run_until(&mut manager, || again.irq.count() >= 2));
    let (header, body) = again.reply(1);
    assert_eq!((header.unique, header.error), (3, 0));
    assert_eq!(u64_at(&body, 48), 1234);
    assert!(!lock(&fs).failure().has_failed());
}

#[test]
fn virtiofsd_dying_signals_failure_and_never_hangs() {
    let Some(mut vfsd) = Virtiofsd::start() else {
        return;
    };
    let (fs, mut manager) = new_device(&vfsd, "rootfs");
    let guest = Guest::new();
    guest.activate(&fs).unwrap();
    let failure = lock(&fs).failure();
    assert!(failure.evt().read().is_err(), "no failure yet");

    vfsd.kill();
    assert!(
        run_until(&mut manager, || failure.has_failed()),
        "socket hang-up not noticed"
    );
    let reason = failure.reason().unwrap();
    assert!(
        reason.contains("virtiofsd for tag rootfs exited"),
        "{reason}"
    );
    assert_eq!(failure.evt().read().unwrap(), 1);
    // The dead socket is no longer watched: the loop goes quiet instead of spinning.
    assert_eq!(manager.run_with_timeout(50).unwrap(), 0);

    // Talking to the dead backend fails fast.
    let start = Instant::now();
    assert!(
        !lock(&fs).reset(),
        "reset cannot stop a dead backend's rings"
    );
    assert!(guest.activate(&fs).is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        failure.reason().unwrap(),
        reason,
        "the first reason is kept"
    );
}

#[test]
fn virtiofsd_gone_before_activation_fails_activation() {
    let Some(mut vfsd) = Virtiofsd::start() else {
        return;
    };
    let fs = Arc::new(Mutex::new(Fs::new(vfsd.config("early")).unwrap()));
    vfsd.kill();
    let guest = Guest::new();
    let start = Instant::now();
    let err = guest.activate(&fs).unwrap_err();
    assert!(matches!(err, ActivateError::Other(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let failure = lock(&fs).failure();
    assert!(failure
        .reason()
        .unwrap()
        .contains("virtiofsd for tag early"));
    assert!(!lock(&fs).is_activated());
}

#[test]
fn missing_socket_is_an_error_after_the_connect_timeout() {
    let dir = TempDir::new_with_prefix("/tmp/bulkhead-vfs-").unwrap();
    let config = FsConfig::new("t", dir.as_path().join("nothing.sock")).unwrap();
    let start = Instant::now();
    let err = Fs::new(config).err().unwrap();
    assert!(matches!(
        err,
        FsError::Backend {
            source: VhostUserError::Connect { .. },
            ..
        }
    ));
    let waited = start.elapsed();
    assert!(waited >= vhost_user::CONNECT_TIMEOUT && waited < vhost_user::CONNECT_TIMEOUT * 2);
}

#[test]
fn backend_that_hangs_up_during_the_handshake_is_an_error() {
    let dir = TempDir::new_with_prefix("/tmp/bulkhead-vfs-").unwrap();
    let path = dir.as_path().join("rude.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
    });
    let err = Fs::new(FsConfig::new("t", &path).unwrap()).err().unwrap();
    server.join().unwrap();
    assert!(
        matches!(
            err,
            FsError::Backend {
                source: VhostUserError::Request { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

/// The whole path short of KVM: the Linux probe sequence through the virtio-mmio registers,
/// the device on a real event loop, a QueueNotify write reaching virtiofsd through the
/// transport's notify eventfd (its kick fd), and virtiofsd's answer raising InterruptStatus
/// and the irqfd.
#[test]
fn fs_behind_the_mmio_transport_serves_fuse_init() {
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::mmio::{MmioTransport, CONFIG_OFFSET, INT_VRING, NOTIFY_OFFSET};

    let Some(vfsd) = Virtiofsd::start() else {
        return;
    };
    let (fs, mut manager) = new_device(&vfsd, "viammio");
    let guest = Guest::new();
    let mut t = MmioTransport::new(
        guest.mem.clone(),
        fs.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    let r = |t: &mut MmioTransport, off: u64| {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    };
    let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());

    assert_eq!(r(&mut t, 0x08), 26, "DeviceID");
    let mut tag = [0u8; 8];
    t.read(CONFIG_OFFSET, &mut tag);
    assert_eq!(&tag, b"viammio\0");

    // ACKNOWLEDGE, DRIVER, features (all offered), FEATURES_OK.
    w(&mut t, 0x70, 1);
    w(&mut t, 0x70, 3);
    for sel in 0..2 {
        w(&mut t, 0x14, sel);
        let f = r(&mut t, 0x10);
        w(&mut t, 0x24, sel);
        w(&mut t, 0x20, f);
    }
    w(&mut t, 0x70, 0xb);
    assert_eq!(r(&mut t, 0x70), 0xb);
    for (i, vq) in [&guest.hiprio, &guest.request].into_iter().enumerate() {
        w(&mut t, 0x30, i as u32);
        w(&mut t, 0x38, u32::from(QUEUE_SIZE));
        let addrs = [vq.desc_table_addr(), vq.avail_addr(), vq.used_addr()];
        for (reg, addr) in [0x80, 0x90, 0xa0].into_iter().zip(addrs) {
            w(&mut t, reg, addr.0 as u32);
            w(&mut t, reg + 4, (addr.0 >> 32) as u32);
        }
        w(&mut t, 0x44, 1);
    }
    w(&mut t, 0x70, 0xf);
    assert_eq!(r(&mut t, 0x70), 0xf, "DRIVER_OK accepted, no NEEDS_RESET");
    assert!(lock(&fs).is_activated());

    // `send` also signals the harness's own (unconnected) eventfd; the kick that matters is
    // the QueueNotify register write.
    guest.send(0, FUSE_INIT, 0x77, 0, &fuse_init_in());
    w(&mut t, NOTIFY_OFFSET, 1);
    let interrupt = t.interrupt();
    assert!(
        run_until(&mut manager, || interrupt.status() & INT_VRING != 0),
        "no queue interrupt from virtiofsd's answer"
    );
    assert_eq!(interrupt.irqfd().read().unwrap(), 1);
    let (header, body) = guest.reply(0);
    assert_eq!((header.unique, header.error), (0x77, 0));
    assert_eq!(u32_at(&body, 0), 7);

    // The driver resets the device: the rings are stopped, nothing failed.
    w(&mut t, 0x70, 0);
    assert!(!lock(&fs).is_activated());
    assert!(!lock(&fs).failure().has_failed());
}
