//! One vsock stream between a guest port and a host unix socket: its state machine, credit
//! accounting in both directions, and the data it moves. It owns no epoll registration; the
//! muxer asks it what it wants to wait for ([`Connection::interest`]).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::{
    Header, TxPacket, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::unix::send_nosignal;

/// Receive buffer we advertise to the guest: at most this many guest bytes are held for a host
/// socket that does not keep up.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this many bytes were forwarded since the last one the guest saw.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// Packets a connection has waiting for the guest's rx queue.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT: u8 = 4;
/// The host socket may have data for the guest.
const P_RW: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent (or queued), waiting for the guest's RESPONSE.
    LocalInit,
    /// Data may flow (subject to the shutdown flags).
    Established,
}

/// What the muxer must do with a connection after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep it.
    Keep,
    /// Remove it and send the guest a reset.
    Reset,
    /// Remove it quietly (the guest already considers it gone).
    Close,
}

/// One stream.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: State,
    pending: u8,
    /// Bytes we sent the guest (wrapping), and the guest's credit information.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Guest bytes written to the host socket (wrapping), and the value the guest last saw.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest bytes not yet written to the host socket.
    to_host: VecDeque<u8>,
    /// The `OK <port>\n` handshake reply, written before any guest data.
    ok_line: Vec<u8>,
    /// The host stopped sending (we read EOF) and the guest was told.
    host_eof: bool,
    /// The host socket hung up; it is no longer in epoll and is drained by reading until EOF.
    host_hup: bool,
    /// We shut down writing on the host socket after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,
    peer_shut_rcv: bool,
    peer_shut_send: bool,
    /// Interest currently registered in epoll (None: not registered).
    pub(crate) registered: Option<EventSet>,
    /// Whether the key is in the muxer's rx fairness queue.
    pub(crate) queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state: State::LocalInit,
            pending: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_host: VecDeque::new(),
            ok_line: Vec::new(),
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            peer_shut_rcv: false,
            peer_shut_send: false,
            registered: None,
            queued: false,
        }
    }

    /// A host client asked for guest port `peer_port`: a REQUEST goes out first.
    pub fn new_local(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port);
        c.pending = P_REQUEST;
        c
    }

    /// The guest connected to host port `req.dst_port` and we reached the host socket: a
    /// RESPONSE goes out first.
    pub fn new_peer(stream: UnixStream, guest_cid: u64, req: &Header) -> Self {
        let mut c = Self::new(stream, guest_cid, req.dst_port, req.src_port);
        c.state = State::Established;
        c.pending = P_RESPONSE;
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Whether the connection has a packet for the guest (it may turn out to have none when
    /// asked, e.g. the host socket had no data after all).
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// How many bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.peer_shut_rcv
    }

    /// What to wait for on the host socket.
    pub fn interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.can_read_host() && self.pending & P_RW == 0 && self.peer_credit() > 0 {
            ev |= EventSet::IN;
        }
        if !self.ok_line.is_empty() || !self.to_host.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    /// Whether the socket hung up and was taken out of epoll.
    pub fn is_hung_up(&self) -> bool {
        self.host_hup
    }

    /// A header from us to the guest for this connection. Every packet carries our credit, so
    /// it also counts as a credit update.
    fn header(&mut self, op: u16, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !P_CREDIT;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The reset that ends this connection.
    pub fn rst_header(&mut self) -> Header {
        self.header(OP_RST, 0)
    }

    /// Produce the next packet for the guest. Payload goes to the start of `buf` (its length
    /// is the room in the guest's rx buffer); the header's `len` says how much.
    pub fn fill_rx(&mut self, buf: &mut [u8]) -> Result<Option<Header>, Outcome> {
        if self.pending & P_REQUEST != 0 {
            self.pending &= !P_REQUEST;
            return Ok(Some(self.header(OP_REQUEST, 0)));
        }
        if self.pending & P_RESPONSE != 0 {
            self.pending &= !P_RESPONSE;
            return Ok(Some(self.header(OP_RESPONSE, 0)));
        }
        if self.pending & P_RW != 0 {
            if let Some(hdr) = self.read_host(buf)? {
                return Ok(Some(hdr));
            }
        }
        if self.pending & P_CREDIT != 0 {
            return Ok(Some(self.header(OP_CREDIT_UPDATE, 0)));
        }
        Ok(None)
    }

    fn read_host(&mut self, buf: &mut [u8]) -> Result<Option<Header>, Outcome> {
        if !self.can_read_host() {
            self.pending &= !P_RW;
            return Ok(None);
        }
        let want = buf.len().min(self.peer_credit() as usize);
        if want == 0 {
            // No credit (or no room): wait for a credit update, which re-arms reading.
            self.pending &= !P_RW;
            return Ok(None);
        }
        let read = loop {
            match self.stream.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match read {
            Ok(0) => {
                self.pending &= !P_RW;
                self.host_eof = true;
                if self.peer_shut_send {
                    // Neither side will send any more.
                    return Err(Outcome::Reset);
                }
                let mut flags = SHUTDOWN_SEND;
                if self.host_hup {
                    flags |= SHUTDOWN_RCV;
                }
                Ok(Some(self.header(OP_SHUTDOWN, flags)))
            }
            Ok(n) => {
                // Keep draining a hung-up socket (it is out of epoll); otherwise a short read
                // means the socket is empty for now and epoll tells us about more.
                if n < want && !self.host_hup {
                    self.pending &= !P_RW;
                }
                // n <= want <= MAX_PAYLOAD.
                self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                let mut hdr = self.header(OP_RW, 0);
                hdr.len = n as u32;
                Ok(Some(hdr))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending &= !P_RW;
                Ok(None)
            }
            Err(_) => Err(Outcome::Reset),
        }
    }

    /// Epoll says the host socket is readable.
    pub fn host_readable(&mut self) {
        if self.can_read_host() {
            self.pending |= P_RW;
        }
    }

    /// Epoll says the host socket hung up: it is taken out of epoll, and what it still holds is
    /// read until EOF.
    pub fn host_hung_up(&mut self) -> Outcome {
        self.host_hup = true;
        if self.state == State::LocalInit {
            // The client left before the guest answered.
            return Outcome::Reset;
        }
        if self.can_read_host() {
            self.pending |= P_RW;
            Outcome::Keep
        } else {
            // Nothing left to read and nobody to write to.
            Outcome::Reset
        }
    }

    /// Write what we hold for the host socket; then finish shutdowns that waited for it.
    pub fn flush(&mut self) -> Outcome {
        while !self.ok_line.is_empty() {
            match send_nosignal(&self.stream, &self.ok_line) {
                Ok(0) => return Outcome::Reset,
                Ok(n) => {
                    self.ok_line.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Reset,
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => return Outcome::Reset,
                Ok(n) => {
                    self.to_host.drain(..n);
                    // n <= CONN_BUF_ALLOC.
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Reset,
            }
        }
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT;
        }
        if self.to_host.is_empty() && self.peer_shut_send {
            if self.peer_shut_rcv || self.host_eof {
                // Both directions are finished.
                return Outcome::Reset;
            }
            if !self.host_write_shut {
                self.host_write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
        Outcome::Keep
    }

    /// Handle a packet the guest sent on this connection (CIDs and type already checked).
    pub fn recv_guest(&mut self, pkt: TxPacket) -> Outcome {
        let hdr = &pkt.hdr;
        if hdr.op == OP_RST {
            return Outcome::Close;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.state == State::LocalInit {
            if hdr.op != OP_RESPONSE {
                return Outcome::Reset;
            }
            self.state = State::Established;
            self.ok_line = format!("OK {}\n", self.local_port).into_bytes();
            return self.flush();
        }
        let outcome = match hdr.op {
            OP_RW => self.recv_data(pkt.data),
            OP_CREDIT_UPDATE => Outcome::Keep,
            OP_CREDIT_REQUEST => {
                self.pending |= P_CREDIT;
                Outcome::Keep
            }
            OP_SHUTDOWN => {
                if hdr.flags & SHUTDOWN_RCV != 0 && !self.peer_shut_rcv {
                    self.peer_shut_rcv = true;
                    self.pending &= !P_RW;
                    // Host writes now fail instead of piling up unread.
                    let _ = self.stream.shutdown(Shutdown::Read);
                }
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    self.peer_shut_send = true;
                }
                self.flush()
            }
            // REQUEST or RESPONSE on an established stream: protocol error.
            _ => Outcome::Reset,
        };
        if outcome == Outcome::Keep && self.host_hup && self.can_read_host() {
            // A hung-up socket is not in epoll: new credit is the only wake-up it gets.
            self.pending |= P_RW;
        }
        outcome
    }

    fn recv_data(&mut self, data: Vec<u8>) -> Outcome {
        if data.is_empty() {
            return Outcome::Keep;
        }
        if self.peer_shut_send || self.host_write_shut {
            return Outcome::Reset;
        }
        if self.to_host.len() + data.len() > CONN_BUF_ALLOC as usize {
            // The guest ignored the credit we gave it.
            return Outcome::Reset;
        }
        self.to_host.extend(data);
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn guest_hdr(op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 77,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn pkt(op: u16, buf_alloc: u32, fwd_cnt: u32, data: &[u8]) -> TxPacket {
        let mut hdr = guest_hdr(op, buf_alloc, fwd_cnt);
        hdr.len = data.len() as u32;
        TxPacket {
            hdr,
            data: data.to_vec(),
        }
    }

    #[test]
    fn credit_accounting_survives_counter_wrap() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::new_peer(ours, 3, &guest_hdr(OP_REQUEST, 1000, 0));
        let mut buf = vec![0u8; 4096];
        assert_eq!(c.fill_rx(&mut buf).unwrap().unwrap().op, OP_RESPONSE);
        // Pretend 2^32 - 100 bytes went to the guest already and it consumed them all.
        c.tx_cnt = u32::MAX - 99;
        c.peer_fwd_cnt = u32::MAX - 99;
        assert_eq!(c.peer_credit(), 1000);
        host.write_all(&[1u8; 600]).unwrap();
        c.host_readable();
        let h = c.fill_rx(&mut buf).unwrap().unwrap();
        assert_eq!((h.op, h.len), (OP_RW, 600));
        assert_eq!(c.peer_credit(), 400, "credit across the u32 wrap");
        // A guest claiming to have consumed more than we sent gets no credit, not a huge one.
        assert_eq!(
            c.recv_guest(pkt(OP_CREDIT_UPDATE, 1000, c.tx_cnt.wrapping_add(5), &[])),
            Outcome::Keep
        );
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.interest().contains(EventSet::IN));
    }

    #[test]
    fn guest_data_beyond_buf_alloc_resets_and_request_on_live_stream_resets() {
        let (ours, _host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::new_peer(ours, 3, &guest_hdr(OP_REQUEST, 1000, 0));
        // The host never reads: everything beyond the socket buffer is held, up to our limit.
        let chunk = vec![0u8; 64 * 1024];
        let mut outcome = Outcome::Keep;
        for _ in 0..64 {
            outcome = c.recv_guest(pkt(OP_RW, 1000, 0, &chunk));
            if outcome != Outcome::Keep {
                break;
            }
            assert!(c.to_host.len() <= CONN_BUF_ALLOC as usize);
            assert_eq!(
                c.interest().contains(EventSet::OUT),
                !c.to_host.is_empty(),
                "wait for writability exactly while holding data"
            );
        }
        assert_eq!(outcome, Outcome::Reset);
        let (ours, _host) = UnixStream::pair().unwrap();
        let mut c = Connection::new_peer(ours, 3, &guest_hdr(OP_REQUEST, 1000, 0));
        assert_eq!(c.recv_guest(pkt(OP_RESPONSE, 1000, 0, &[])), Outcome::Reset);
    }
}
