//! The host side of virtio-net: a tap device with a virtio-net header on every frame.
//!
//! [`Tap::open`] attaches a tap by name through `/dev/net/tun` (`TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`); [`Tap::from_fd`] takes an fd that someone with
//! CAP_NET_ADMIN attached for us and checks with `TUNGETIFF` that it is such a tap. Either way
//! the fd is made non-blocking, the header size is set to [`VNET_HDR_LEN`]
//! (`virtio_net_hdr_v1`, so frames go between the tap and the guest's buffers unchanged), and
//! the offloads the kernel accepts are probed with `TUNSETOFFLOAD` while the VMM may still make
//! any ioctl; the offloads are then reset to none until the guest acknowledges features.
//!
//! The device talks to the tap through [`TapIo`], so its tests can use a socketpair instead.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of the header before every frame: `struct virtio_net_hdr_v1` (with `num_buffers`).
pub const VNET_HDR_LEN: usize =
    std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>();

/// `IFNAMSIZ`: an interface name and its NUL.
const IFNAMSIZ: usize = 16;

/// Errors attaching a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot attach tap {name} (TUNSETIFF; creating a tap needs CAP_NET_ADMIN)")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not an open file descriptor")]
    FdNotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not attached to a tun/tap device (TUNGETIFF)")]
    NotTun {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is attached to {name}, which is not a tap with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR (flags {flags:#x})")]
    WrongFlags { fd: RawFd, name: String, flags: i32 },
    #[error("cannot configure tap {name}: {what}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The optional offloads the tap accepted when probed (checksum and TSO are required).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOffloads {
    /// `TUN_F_UFO`: UDP fragmentation offload (gone from Linux 4.14 to 6.1, back since).
    pub ufo: bool,
    /// `TUN_F_USO4 | TUN_F_USO6`: UDP segmentation offload (Linux 6.2 and later).
    pub uso: bool,
}

/// What the virtio-net device needs from its tap. Implemented by [`Tap`], and by a socketpair
/// in the device's tests.
pub trait TapIo: AsRawFd + Send {
    /// Read one frame (virtio-net header first) into `buf`; `WouldBlock` when there is none.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame (virtio-net header first); `WouldBlock` when the tap cannot take it now.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// `TUNSETOFFLOAD`: which offloaded frames the tap may hand us.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// The interface name, for logs.
    fn name(&self) -> &str;
}

/// An attached tap: non-blocking, with a [`VNET_HDR_LEN`]-byte header on every frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads: TapOffloads,
}

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name, then the flags (40 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new() -> Self {
        IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    fn name(&self) -> String {
        let len = self.name.iter().position(|b| *b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(self.name.get(..len).unwrap_or_default()).into_owned()
    }
}

/// The tap flags we need.
const TAP_FLAGS: i32 = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// Offloads every tap with a vnet header takes: checksum, TCP segmentation.
const BASE_OFFLOADS: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Tap {
    /// Attach the tap `name` (created if it does not exist and we may).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ {
            return Err(TapError::Name(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new();
        if let Some(dst) = req.name.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        req.flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads (and updates) a `struct ifreq`; `req` is one, 40 bytes, and
        // lives across the call.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(
            |source| TapError::Attach {
                name: name.to_owned(),
                source,
            },
        )?;
        Self::configure(file, req.name())
    }

    /// Use `fd`, an inherited fd already attached to a tap with `IFF_VNET_HDR` and
    /// `IFF_NO_PI`; refuse anything else.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq::new();
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is one.
        cvt(unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) })
            .map_err(|source| TapError::NotTun { fd: raw, source })?;
        let flags = i32::from(req.flags);
        if flags & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::WrongFlags {
                fd: raw,
                name: req.name(),
                flags,
            });
        }
        let name = req.name();
        let configure_err = |what| {
            let name = name.clone();
            move |source| TapError::Configure { name, what, source }
        };
        // SAFETY: fcntl on an fd we own; no pointers.
        let fl = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) })
            .map_err(configure_err("cannot read its file status flags"))?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) })
            .map_err(configure_err("cannot make it non-blocking"))?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) })
            .map_err(configure_err("cannot set close-on-exec"))?;
        Self::configure(File::from(fd), name)
    }

    /// Check that `fd` is open, for the builder before it takes ownership of an inherited fd.
    pub fn check_open(fd: RawFd) -> Result<(), TapError> {
        // SAFETY: F_GETFD only reads the fd's flags.
        cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })
            .map(|_| ())
            .map_err(|source| TapError::FdNotOpen { fd, source })
    }

    fn configure(file: File, name: String) -> Result<Self, TapError> {
        let mut tap = Tap {
            file,
            name,
            offloads: TapOffloads::default(),
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        cvt(unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) })
            .map_err(|source| TapError::Configure {
                name: tap.name.clone(),
                what: "TUNSETVNETHDRSZ",
                source,
            })?;
        tap.offloads = tap.probe_offloads()?;
        Ok(tap)
    }

    /// Which offloads the kernel takes; ends with none set (the guest has not asked yet).
    fn probe_offloads(&mut self) -> Result<TapOffloads, TapError> {
        let name = self.name.clone();
        let err = |what| {
            let name = name.clone();
            move |source| TapError::Configure { name, what, source }
        };
        self.set_offload(BASE_OFFLOADS)
            .map_err(err("TUNSETOFFLOAD with checksum and TSO"))?;
        let offloads = TapOffloads {
            ufo: self.set_offload(BASE_OFFLOADS | libc::TUN_F_UFO).is_ok(),
            uso: self
                .set_offload(BASE_OFFLOADS | libc::TUN_F_USO4 | libc::TUN_F_USO6)
                .is_ok(),
        };
        self.set_offload(0)
            .map_err(err("TUNSETOFFLOAD to no offloads"))?;
        Ok(offloads)
    }

    /// The offloads the kernel accepted when probed.
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// A second fd for the same tap (close-on-exec), for vhost-net's `VHOST_NET_SET_BACKEND`.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl TapIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: the kernel reads at most `frame.len()` bytes from `frame`.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is touched.
        cvt(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        })
        .map(|_| ())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_UFO;

    use super::*;
    use crate::devices::virtio::device::VirtioDevice;
    use crate::devices::virtio::net::Net;

    /// As root: a real tap in a fresh network namespace (so nothing on the host is touched),
    /// attached by name and through an fd, and its offloads probed.
    #[test]
    fn real_tap_by_name_and_by_fd_in_a_fresh_netns() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bulkhead_test_skip::skip("needs root to create taps in a new network namespace");
            return;
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            bulkhead_test_skip::skip("no /dev/net/tun");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends with the test.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let tap = Tap::open("bhtest0").unwrap();
            assert_eq!(tap.name(), "bhtest0");
            let offloads = tap.offloads();
            eprintln!("tap offloads beyond csum/tso: {offloads:?}");

            // The fd path: a tap attached elsewhere with the right flags is taken over.
            let fd = attach_raw(
                "bhtest1",
                libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
            );
            let tap1 = Tap::from_fd(fd).unwrap();
            assert_eq!(tap1.name(), "bhtest1");
            assert_eq!(tap1.offloads(), offloads);
            // SAFETY: F_GETFL reads flags.
            let fl = unsafe { libc::fcntl(tap1.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(fl & libc::O_NONBLOCK, 0, "made non-blocking");
            let mut tap1 = tap1;
            let mut buf = [0u8; 100];
            let e = tap1.read_frame(&mut buf).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

            // Without a vnet header, or a tun, or not a tun at all: refused, clearly.
            let fd = attach_raw("bhtest2", libc::IFF_TAP | libc::IFF_NO_PI);
            let err = Tap::from_fd(fd).unwrap_err().to_string();
            assert!(
                err.contains("IFF_VNET_HDR") && err.contains("bhtest2"),
                "{err}"
            );
            let fd = attach_raw(
                "bhtun3",
                libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
            );
            assert!(matches!(Tap::from_fd(fd), Err(TapError::WrongFlags { .. })));
            let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
            // SAFETY: a fresh fd duplicated for the OwnedFd.
            let dup = unsafe { OwnedFd::from_raw_fd(libc::dup(evt.as_raw_fd())) };
            assert!(matches!(Tap::from_fd(dup), Err(TapError::NotTun { .. })));
            assert!(matches!(Tap::open(""), Err(TapError::Name(_))));

            // The device on the real tap: features as probed, offloads applied on request.
            let mut net = Net::new(Box::new(tap), offloads, None, None).unwrap();
            assert_eq!(
                net.avail_features() & (1 << VIRTIO_NET_F_HOST_UFO) != 0,
                offloads.ufo
            );
            net.tap
                .set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
                .unwrap();
        })
        .join()
        .unwrap();
    }

    /// Attach a tun/tap with `flags` the way a privileged launcher would, and hand over its fd.
    fn attach_raw(name: &str, flags: i32) -> OwnedFd {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut req = [0u8; 40];
        req[..name.len()].copy_from_slice(name.as_bytes());
        req[16..18].copy_from_slice(&(flags as i16).to_ne_bytes());
        // SAFETY: a 40-byte buffer laid out as struct ifreq.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        OwnedFd::from(file)
    }
}
