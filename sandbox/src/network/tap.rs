//! The tap of one NIC: created through `/dev/net/tun` in the calling thread's network
//! namespace (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), not persistent, so
//! the kernel removes it when its last fd closes (ours, or the VMM's inherited copy). Its
//! MTU and state are set over netlink. The fd is close-on-exec; the VMM gets it through
//! `VmmConfig::pass_fds`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

use super::plan::MAX_IFNAME_LEN;

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, the flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and attaches a new tap named `name` to it, in this thread's
/// network namespace. The tap is down; see [`configure`].
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open /dev/net/tun (is the tun module loaded?): {e}"),
            )
        })?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and writes back the name into) an ifreq we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// Sets the MTU of the link `name`, brings it up and returns its index.
pub async fn configure(handle: &Handle, name: &str, mtu: u32) -> Result<u32, rtnetlink::Error> {
    let index = link_index(handle, name).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await?;
    Ok(index)
}

/// The index of the link `name`.
pub async fn link_index(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await?;
    link.map(|l| l.header.index)
        .ok_or(rtnetlink::Error::RequestFailed)
}

/// Deletes the link `index`; one that is already gone is fine.
pub async fn delete(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match handle.link().del(index).execute().await {
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
        other => other,
    }
}

/// Whether `e` is the kernel's answer `errno`.
pub(crate) fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.raw_code() == -errno,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn names_must_fit() {
        for bad in ["", "a-name-too-long-for-linux", "a\0b"] {
            let e = open_tap(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
