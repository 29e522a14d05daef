//! The host side of the device: accepts host clients on the unix listener (`CONNECT <port>`
//! handshake), connects guest requests to `<uds_path>_<port>` when guest-initiated
//! connections are allowed (resets them otherwise), routes guest packets to connections, and
//! hands out rx packets fairly across connections.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::EventSet;

use super::connection::{Connection, Outcome};
use super::metrics::VsockMetrics;
use super::packet::{
    Header, RxBuffer, TxPacket, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_REQUEST, OP_RST,
    TYPE_STREAM,
};
use super::unix::{connect_nonblocking, port_path, HostListener};
use super::VsockError;
use crate::devices::virtio::rate_limited::{warn_limited, LogLimiter};

/// Connections plus unfinished handshakes we keep at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// Guest tx processing pauses while this many control packets wait for rx buffers.
const CONTROL_QUEUE_SOFT_CAP: usize = 256;
/// Longest handshake line we accept (`CONNECT 4294967295\n` is 19 bytes).
const MAX_HANDSHAKE_LINE: usize = 32;
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Registers host fds in the event loop. Implemented over `event_manager::EventOps`.
pub trait Poller {
    /// Start watching `fd`.
    fn add(&mut self, fd: RawFd, events: EventSet);
    /// Change what `fd` is watched for.
    fn modify(&mut self, fd: RawFd, events: EventSet);
    /// Stop watching `fd` (before it is closed).
    fn remove(&mut self, fd: RawFd);
}

/// Identifies a stream: our port and the guest's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

/// A host client that has not finished its `CONNECT <port>\n` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Host-side state of the vsock device.
pub struct Muxer {
    guest_cid: u64,
    listener: HostListener,
    /// `Some(uds_path)` when guest-initiated connections are allowed: port P goes to
    /// `<uds_path>_P`.
    guest_connect: Option<PathBuf>,
    conns: HashMap<ConnKey, Connection>,
    fds: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with something for the guest, served round-robin.
    rx_order: VecDeque<ConnKey>,
    /// Packets not tied to a live connection (resets), served first.
    control: VecDeque<Header>,
    next_local_port: u32,
    scratch: Vec<u8>,
    metrics: Arc<VsockMetrics>,
    log_limit: LogLimiter,
}

impl Muxer {
    /// The host side over `listener`. With `guest_connect`, guest connections to host port P
    /// go to `<uds_path>_P` (the listener must have a path); without, they are reset.
    pub fn new(
        guest_cid: u64,
        listener: HostListener,
        guest_connect: bool,
        metrics: Arc<VsockMetrics>,
    ) -> Result<Self, VsockError> {
        let guest_connect = match (guest_connect, listener.path()) {
            (false, _) => None,
            (true, Some(path)) => Some(path.to_path_buf()),
            (true, None) => return Err(VsockError::GuestConnectWithoutPath),
        };
        Ok(Muxer {
            guest_cid,
            listener,
            guest_connect,
            conns: HashMap::new(),
            fds: HashMap::new(),
            handshakes: HashMap::new(),
            rx_order: VecDeque::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            scratch: vec![0u8; MAX_PAYLOAD],
            metrics,
            log_limit: LogLimiter::new(),
        })
    }

    /// The listening socket's fd (registered for IN by the event handler).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The listening socket's path, when the VMM bound it.
    pub fn uds_path(&self) -> Option<&std::path::Path> {
        self.listener.path()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether rx packets may be waiting.
    pub fn has_pending_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_order.is_empty()
    }

    /// Whether guest tx processing should pause until the guest takes rx packets.
    pub fn tx_should_pause(&self) -> bool {
        self.control.len() >= CONTROL_QUEUE_SOFT_CAP
    }

    fn log(&mut self, msg: std::fmt::Arguments<'_>) {
        warn_limited!(self.log_limit, "vsock: {msg}");
    }

    fn reply_header(&self, to: &Header, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// Answer a guest packet with a reset (never a reset with a reset).
    pub fn reset_reply(&mut self, to: &Header) {
        if to.op != OP_RST && to.src_cid == self.guest_cid && to.dst_cid == HOST_CID {
            let rst = self.reply_header(to, OP_RST);
            self.control.push_back(rst);
        }
    }

    /// The guest sent a malformed packet whose header was readable: reset the stream it names
    /// (ours too, if it exists).
    pub fn reject(&mut self, hdr: &Header, poller: &mut dyn Poller) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.settle(key, Outcome::Reset, poller);
        } else {
            self.reset_reply(hdr);
        }
    }

    // ---- host side ----

    /// The listener is readable: accept every waiting client.
    pub fn accept_clients(&mut self, poller: &mut dyn Poller) {
        loop {
            match self.listener.accept() {
                Ok(stream) => {
                    if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                        self.metrics.host_refused.inc();
                        self.log(format_args!("too many connections, refusing a host client"));
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    poller.add(fd, EventSet::IN);
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.log(format_args!("accept failed: {e}"));
                    break;
                }
            }
        }
    }

    /// An event on a host fd that is not the listener. Returns false if the fd is not ours.
    pub fn handle_host_event(&mut self, fd: RawFd, ev: EventSet, poller: &mut dyn Poller) -> bool {
        if self.handshakes.contains_key(&fd) {
            self.handle_handshake(fd, ev, poller);
            return true;
        }
        let Some(&key) = self.fds.get(&fd) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        let mut outcome = Outcome::Keep;
        if ev.contains(EventSet::ERROR) {
            outcome = Outcome::Reset;
        } else {
            if ev.contains(EventSet::IN) {
                conn.host_readable();
            }
            if ev.contains(EventSet::OUT) {
                outcome = conn.flush();
            }
            if outcome == Outcome::Keep && ev.contains(EventSet::HANG_UP) {
                // Out of epoll for good: a hung-up socket would be reported forever.
                if conn.registered.take().is_some() {
                    poller.remove(fd);
                }
                outcome = conn.host_hung_up();
            }
        }
        self.settle(key, outcome, poller);
        true
    }

    fn close_handshake(&mut self, fd: RawFd, poller: &mut dyn Poller) {
        if self.handshakes.remove(&fd).is_some() {
            poller.remove(fd);
        }
    }

    fn handle_handshake(&mut self, fd: RawFd, ev: EventSet, poller: &mut dyn Poller) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        // Read one byte at a time so nothing after the newline (the client's first data)
        // is consumed here.
        let mut done = false;
        let mut failed = ev.contains(EventSet::ERROR);
        while !failed && !done {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(0) => failed = true,
                Ok(_) if byte[0] == b'\n' => done = true,
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if hs.line.len() > MAX_HANDSHAKE_LINE {
                        failed = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => failed = true,
            }
        }
        if !done && !failed && ev.contains(EventSet::HANG_UP) {
            failed = true;
        }
        if failed {
            self.metrics.host_refused.inc();
            self.close_handshake(fd, poller);
            return;
        }
        if !done {
            return;
        }
        let port = parse_connect(&hs.line);
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(peer_port) = port else {
            self.metrics.host_refused.inc();
            self.log(format_args!("bad handshake from a host client"));
            poller.remove(fd);
            return;
        };
        let local_port = self.alloc_local_port();
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let mut conn = Connection::new_local(hs.stream, self.guest_cid, local_port, peer_port);
        conn.registered = Some(EventSet::IN);
        self.fds.insert(fd, key);
        self.conns.insert(key, conn);
        self.metrics.conns_opened.inc();
        self.settle(key, Outcome::Keep, poller);
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = if p == u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.conns.keys().any(|k| k.local_port == p) {
                return p;
            }
        }
    }

    /// Apply what a connection operation decided: update epoll and the rx order, or remove the
    /// connection (queueing a reset for the guest if asked).
    fn settle(&mut self, key: ConnKey, outcome: Outcome, poller: &mut dyn Poller) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match outcome {
            Outcome::Keep => {
                let fd = conn.stream().as_raw_fd();
                if !conn.is_hung_up() {
                    let want = conn.interest();
                    match conn.registered {
                        Some(have) if have == want => {}
                        Some(_) => poller.modify(fd, want),
                        None => poller.add(fd, want),
                    }
                    conn.registered = Some(want);
                }
                if conn.has_pending_rx() && !conn.queued {
                    conn.queued = true;
                    self.rx_order.push_back(key);
                }
            }
            Outcome::Reset | Outcome::Close => {
                if outcome == Outcome::Reset {
                    let rst = conn.rst_header();
                    self.control.push_back(rst);
                }
                self.remove(key, poller);
            }
        }
    }

    fn remove(&mut self, key: ConnKey, poller: &mut dyn Poller) {
        if let Some(mut conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            if conn.registered.take().is_some() {
                poller.remove(fd);
            }
            self.fds.remove(&fd);
            self.metrics.conns_closed.inc();
        }
    }

    /// Drop every connection and handshake (device reset). The guest is not told.
    pub fn clear(&mut self, poller: &mut dyn Poller) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key, poller);
        }
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in fds {
            self.close_handshake(fd, poller);
        }
        self.rx_order.clear();
        self.control.clear();
    }

    // ---- guest side ----

    /// Handle one packet from the guest's tx queue.
    pub fn recv_guest(&mut self, pkt: TxPacket, poller: &mut dyn Poller) {
        let hdr = pkt.hdr;
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            self.metrics.tx_dropped.inc();
            self.log(format_args!(
                "dropping packet from cid {} to cid {}",
                hdr.src_cid, hdr.dst_cid
            ));
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.metrics.tx_dropped.inc();
            self.reset_reply(&hdr);
            return;
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op) {
            self.metrics.tx_dropped.inc();
            self.log(format_args!("dropping packet with unknown op {}", hdr.op));
            return;
        }
        self.metrics.tx_packets.inc();
        self.metrics.tx_bytes.add(pkt.data.len() as u64);
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.op == OP_REQUEST {
            if self.conns.contains_key(&key) {
                // A second request for a live stream: end both.
                self.settle(key, Outcome::Reset, poller);
                return;
            }
            self.guest_connect(&hdr, poller);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.reset_reply(&hdr);
            return;
        };
        let outcome = conn.recv_guest(pkt);
        self.settle(key, outcome, poller);
    }

    fn guest_connect(&mut self, req: &Header, poller: &mut dyn Poller) {
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            self.reset_reply(req);
            return;
        }
        let Some(base) = &self.guest_connect else {
            // Not allowed (`--vsock-guest-connect`): refused without touching the host.
            self.metrics.guest_connect_refused.inc();
            self.reset_reply(req);
            return;
        };
        let path = port_path(base, req.dst_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let key = ConnKey {
                    local_port: req.dst_port,
                    peer_port: req.src_port,
                };
                let conn = Connection::new_peer(stream, self.guest_cid, req);
                let fd = conn.stream().as_raw_fd();
                self.fds.insert(fd, key);
                self.conns.insert(key, conn);
                self.metrics.conns_opened.inc();
                self.settle(key, Outcome::Keep, poller);
            }
            Err(_) => self.reset_reply(req),
        }
    }

    /// Put the next packet for the guest into `buf`. Returns the used length, or None if
    /// nothing was waiting after all.
    pub fn fill_rx(&mut self, buf: &mut RxBuffer<'_>, poller: &mut dyn Poller) -> Option<u32> {
        // Each queued stream gets one chance per call, so a stream that keeps claiming to have
        // something but produces nothing cannot spin this loop.
        let mut budget = self.rx_order.len();
        loop {
            if let Some(hdr) = self.control.pop_front() {
                if hdr.op == OP_RST {
                    self.metrics.rst_sent.inc();
                }
                return self.write(buf, &hdr, 0);
            }
            if budget == 0 {
                return None;
            }
            budget -= 1;
            let key = self.rx_order.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let cap = buf.payload_capacity().min(self.scratch.len());
            match conn.fill_rx(&mut self.scratch[..cap]) {
                Ok(Some(hdr)) => {
                    let used = self.write(buf, &hdr, hdr.len as usize);
                    // A packet we could not deliver cannot be re-sent: the stream is broken.
                    let outcome = if used.is_some() {
                        Outcome::Keep
                    } else {
                        Outcome::Reset
                    };
                    // Also re-arms epoll (credit used up, EOF seen) and re-queues the stream
                    // behind the others if it has more.
                    self.settle(key, outcome, poller);
                    if used.is_some() {
                        return used;
                    }
                }
                Ok(None) => self.settle(key, Outcome::Keep, poller),
                Err(outcome) => self.settle(key, outcome, poller),
            }
        }
    }

    fn write(&mut self, buf: &mut RxBuffer<'_>, hdr: &Header, len: usize) -> Option<u32> {
        let payload = self.scratch.get(..len)?;
        match buf.write_packet(hdr, payload) {
            Ok(used) => {
                self.metrics.rx_packets.inc();
                self.metrics.rx_bytes.add(len as u64);
                Some(used)
            }
            Err(e) => {
                self.metrics.rx_malformed.inc();
                self.log(format_args!("writing an rx packet failed: {e}"));
                None
            }
        }
    }
}

/// Parse `CONNECT <port>` (the newline already stripped; a trailing `\r` is tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    port.trim().parse::<u32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"\xff\xfe"), None);
    }
}
