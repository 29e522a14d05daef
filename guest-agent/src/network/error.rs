//! Errors of the network RPCs: each names what was being done (the interface, address,
//! route or neighbour, in `ip`'s words) and carries the kernel's answer.

use std::io;

use bulkhead_protocol::network::MacAddr;
use thiserror::Error;

/// A netlink request that failed: the kernel's errno, or a protocol-level failure.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// The kernel refused the request (`EEXIST`, `ENETUNREACH`, ...).
    #[error(transparent)]
    Kernel(io::Error),
    #[error(transparent)]
    Protocol(rtnetlink::Error),
}

impl From<rtnetlink::Error> for NetlinkError {
    fn from(e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(m) => NetlinkError::Kernel(m.to_io()),
            other => NetlinkError::Protocol(other),
        }
    }
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel(e) => e.raw_os_error(),
            NetlinkError::Protocol(_) => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    #[error("no network interface has MAC address {0}")]
    NoLinkWithMac(MacAddr),
    #[error("{count} network interfaces have MAC address {mac}")]
    AmbiguousMac { mac: MacAddr, count: usize },
    #[error("no network interface {device} (for {what})")]
    NoSuchDevice { device: String, what: String },
    #[error("cannot build route {route}: {reason}")]
    BadRoute { route: String, reason: String },
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
}

impl NetworkError {
    /// `map_err` helper: `.map_err(netlink(format!("cannot set {name} up")))`.
    pub(crate) fn netlink(what: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
        move |e| NetworkError::Netlink {
            what,
            source: e.into(),
        }
    }

    /// Whether the host asked for something this guest does not have (a MAC, a device),
    /// rather than the kernel refusing.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            NetworkError::NoLinkWithMac(_) | NetworkError::NoSuchDevice { .. }
        )
    }
}
