//! Test helpers for virtio-net: a fake tap (one end of a datagram socketpair, with errors the
//! test can inject), guest memory with room for both queues and 64 KiB frames, and an
//! activated device. The helpers every device shares are re-exported.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{Net, TapIo, TapOffloads, NET_QUEUE_SIZE, VNET_HDR_LEN};
use crate::devices::bus::lock;
use crate::devices::virtio::device::VirtioDevice;
pub use crate::devices::virtio::test_utils::*;

pub const TEST_MEM_SIZE: usize = 0x40_0000;
/// Where the receive queue's rings live.
pub const RX_RING: u64 = 0;
/// Where the transmit queue's rings live.
pub const TX_RING: u64 = 0x8000;
/// Where test buffers go.
pub const BUF: u64 = 0x1_0000;

pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), TEST_MEM_SIZE)]).unwrap()
}

/// What a test makes the fake tap do, and what it saw.
#[derive(Debug, Default)]
pub struct FakeCtl {
    /// Every read fails with this errno (the tap is gone).
    pub read_error: Option<i32>,
    /// The next writes fail with these errnos, one each.
    pub write_errors: VecDeque<i32>,
    /// Reads attempted.
    pub reads: usize,
    /// TUNSETOFFLOAD calls, in order.
    pub offloads: Vec<u32>,
}

/// A tap made of one end of a socketpair: a datagram is a frame.
pub struct FakeTap {
    fd: OwnedFd,
    pub ctl: Arc<Mutex<FakeCtl>>,
}

/// The other end: what the host network would send and receive.
pub struct Peer {
    fd: OwnedFd,
}

impl Peer {
    /// Send a frame to the device.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    /// A frame the device wrote, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        (n >= 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }
}

/// A fake tap and its peer.
pub fn fake_tap() -> (FakeTap, Peer) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (
        FakeTap {
            fd: a,
            ctl: Arc::default(),
        },
        Peer { fd: b },
    )
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl TapIo for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut ctl = lock(&self.ctl);
        ctl.reads += 1;
        if let Some(errno) = ctl.read_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        if let Some(errno) = lock(&self.ctl).write_errors.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        // SAFETY: reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        lock(&self.ctl).offloads.push(flags);
        Ok(())
    }

    fn name(&self) -> &str {
        "fake0"
    }
}

/// A frame: a zero virtio-net header and `len` bytes of a counting pattern seeded by `seed`.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_add(seed)));
    f
}

/// Everything a test drives.
pub struct Rig {
    pub mem: GuestMemoryMmap,
    pub rx: MockSplitQueue<'static, GuestMemoryMmap>,
    pub tx: MockSplitQueue<'static, GuestMemoryMmap>,
    pub irq: Arc<FakeInterrupt>,
    pub peer: Peer,
    pub ctl: Arc<Mutex<FakeCtl>>,
}

/// A device on a fake tap, not yet activated, and the rest of the rig.
pub fn rig(offloads: TapOffloads) -> (Net, Rig) {
    // The mock queues borrow the memory for their lifetime; tests are short, so leak it.
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(test_mem()));
    let (tap, peer) = fake_tap();
    let ctl = tap.ctl.clone();
    let net = Net::new(Box::new(tap), offloads, None, Some(1400)).unwrap();
    let rig = Rig {
        mem: mem.clone(),
        rx: MockSplitQueue::create(mem, GuestAddress(RX_RING), NET_QUEUE_SIZE),
        tx: MockSplitQueue::create(mem, GuestAddress(TX_RING), NET_QUEUE_SIZE),
        irq: Arc::new(FakeInterrupt::default()),
        peer,
        ctl,
    };
    (net, rig)
}

/// A device activated with `features` acked (activation event consumed, offloads applied as
/// the event loop would).
pub fn active_net(features: u64) -> (Net, Rig) {
    let (mut net, rig) = rig(TapOffloads::default());
    net.set_acked_features(features);
    net.activate(
        rig.mem.clone(),
        rig.irq.clone(),
        vec![activated_queue(&rig.rx), activated_queue(&rig.tx)],
    )
    .unwrap();
    net.activate_evt.read().unwrap();
    net.apply_offloads();
    (net, rig)
}
