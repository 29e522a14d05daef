//! virtio-vsock with a hybrid (unix socket) host side.
//!
//! The guest sees a virtio-vsock device (id 19) with context id `guest_cid`; the host sees a
//! listening unix socket, bound at `uds_path` or inherited (`--vsock fd=N`). A host client
//! connects there, writes `CONNECT <port>\n`, reads `OK <hostport>\n` once the guest
//! accepted, and then has a byte stream to guest port `<port>`. A guest connecting to host
//! port P reaches the unix socket `<uds_path>_P` only with `--vsock-guest-connect` (and a
//! path); otherwise the request is answered with a reset and nothing is connected.
//!
//! - [`packet`]: the wire header and checked copies from/to descriptor chains;
//! - [`connection`]: one stream's state machine and credit flow control;
//! - [`muxer`]: the host side (listener, handshakes, connection map, rx fairness);
//! - [`device`]: the virtio device (queues, config, activation);
//! - `event_handler`: the event-manager subscriber;
//! - [`unix`]: binding the listener and non-blocking connects.

pub mod connection;
pub mod device;
mod event_handler;
pub mod metrics;
pub mod muxer;
pub mod packet;
pub mod unix;

#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use device::{Vsock, VIRTIO_ID_VSOCK};
pub use metrics::VsockMetrics;

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or out of range.
    #[error("invalid guest cid {0}: must be between 3 and 4294967294")]
    InvalidCid(u64),
    /// Another process listens on the socket path.
    #[error("vsock socket {0} is in use by another process")]
    PathInUse(PathBuf),
    /// Something other than a socket exists at the path.
    #[error("vsock socket path {0} exists and is not a socket")]
    PathNotSocket(PathBuf),
    /// A stale socket file could not be removed.
    #[error("cannot remove stale vsock socket {0}")]
    RemoveStale(PathBuf, #[source] std::io::Error),
    /// Binding the listener failed.
    #[error("cannot listen on vsock socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// An inherited descriptor (`--vsock fd=N`) is not a listening unix stream socket.
    #[error("invalid --vsock descriptor")]
    Inherited(#[source] crate::devices::unix_fd::UnixFdError),
    /// The inherited listener could not be set up.
    #[error("cannot set up the inherited vsock listener fd {0}")]
    Listener(i32, #[source] std::io::Error),
    /// Guest-initiated connections need the path the per-port sockets are named after.
    #[error("guest-initiated vsock connections need a --vsock path, not an inherited listener")]
    GuestConnectWithoutPath,
    /// The activation eventfd could not be created.
    #[error("cannot create vsock eventfd")]
    EventFd(#[source] std::io::Error),
}
