//! A tap made of one end of a datagram socketpair (a datagram is a frame); the other end is
//! the host network. Nothing on the host changes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use bulkhead_vmm::devices::virtio::net::TapIo;

/// The device's end.
pub struct FakeTap(OwnedFd);

/// The host network's end.
pub struct Peer(OwnedFd);

/// A tap and its peer.
pub fn pair() -> (FakeTap, Peer) {
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
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (FakeTap(a), Peer(b))
}

fn cvt(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl Peer {
    /// Send a frame to the device; false if the socket is full.
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: reads `frame.len()` bytes from `frame`.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        n >= 0
    }

    /// A frame the device wrote, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let n = cvt(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl TapIo for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        cvt(unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: reads `frame.len()` bytes from `frame`.
        cvt(unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) })
    }

    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }

    fn name(&self) -> &str {
        "fuzz0"
    }
}
