//! Who may connect to the agent's vsock ports: the host (CID 2) only. A process in a
//! container that reaches a port another way (the vsock loopback transport, through CID 1
//! or the guest's own CID; the guest kernel is built without it, this is the second line)
//! is dropped at accept, before a byte is read, so one container cannot drive another's
//! agent. Refusals are logged at most once per [`REFUSAL_LOG_INTERVAL`]: the guest console
//! ends up in a host file.

use std::io;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use log::warn;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_HOST};

/// At most one log line about refused peers per interval (the first one at once).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed accept (out of fds and the like): do not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Whether a connection from `peer` is the host's.
pub fn from_host(peer: &VsockAddr) -> bool {
    peer.cid() == VMADDR_CID_HOST
}

/// Counts refused peers and says when to log them.
#[derive(Debug, Default)]
pub struct Refusals {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    /// Records one refusal at `now`; `Some(n)` when a line is due, `n` the refusals it
    /// reports (this one included).
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.unlogged = self.unlogged.saturating_add(1);
        let due = self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if !due {
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// The connections of `accepted` that come from the host; the others are closed (dropped)
/// and logged, rate limited. A failed accept is logged and retried after a pause.
pub fn host_only<S>(
    accepted: impl Stream<Item = io::Result<(S, VsockAddr)>>,
    port_name: &'static str,
) -> impl Stream<Item = S> {
    let mut refusals = Refusals::default();
    accepted.filter_map(move |r| {
        let (conn, pause) = match r {
            Ok((conn, peer)) if from_host(&peer) => (Some(conn), false),
            Ok((conn, peer)) => {
                drop(conn);
                if let Some(n) = refusals.note(Instant::now()) {
                    warn!(
                        "{port_name}: refused {n} connection(s) not from the host \
                         (last from CID {} port {})",
                        peer.cid(),
                        peer.port()
                    );
                }
                (None, false)
            }
            Err(e) => {
                warn!("{port_name}: accept failed: {e}");
                (None, true)
            }
        };
        async move {
            if pause {
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
            conn
        }
    })
}

/// Every accept of `listener`, with its peer.
pub fn accepts(
    listener: VsockListener,
) -> impl Stream<Item = io::Result<(VsockStream, VsockAddr)>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await;
        Some((r, l))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_vsock::{VMADDR_CID_ANY, VMADDR_CID_HYPERVISOR, VMADDR_CID_LOCAL};

    #[test]
    fn only_the_host_cid_is_accepted() {
        assert!(from_host(&VsockAddr::new(VMADDR_CID_HOST, 1234)));
        for cid in [
            VMADDR_CID_HYPERVISOR,
            VMADDR_CID_LOCAL,
            3,
            4,
            1000,
            VMADDR_CID_ANY,
        ] {
            assert!(!from_host(&VsockAddr::new(cid, 1234)), "CID {cid}");
        }
    }

    #[tokio::test]
    async fn connections_from_other_cids_are_dropped() {
        let peer = |cid| VsockAddr::new(cid, 5000);
        let accepted = futures_util::stream::iter(vec![
            Ok(("loopback", peer(VMADDR_CID_LOCAL))),
            Ok(("host-1", peer(VMADDR_CID_HOST))),
            Ok(("own-cid", peer(3))),
            Err(io::Error::other("EMFILE")),
            Ok(("other-guest", peer(7))),
            Ok(("host-2", peer(VMADDR_CID_HOST))),
        ]);
        let kept: Vec<&str> = host_only(accepted, "test").collect().await;
        assert_eq!(kept, ["host-1", "host-2"]);
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(1), "the first refusal is logged at once");
        for i in 1..1000 {
            assert_eq!(r.note(t0 + Duration::from_millis(i)), None);
        }
        // The next line reports every refusal since the last one.
        assert_eq!(r.note(t0 + REFUSAL_LOG_INTERVAL), Some(1000));
        assert_eq!(r.note(t0 + REFUSAL_LOG_INTERVAL), None);
    }
}
