//! End-to-end tests: the device under a real event manager, a test driver as the guest on
//! its queues, and real unix sockets as the host.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::packet::*;
use super::test_utils::{Desc, Harness, GUEST_CID};
use super::unix::{port_path, HostListener};
use crate::devices::bus::lock;
use crate::devices::virtio::device::VirtioDevice;
use vm_memory::Bytes;

/// Read exactly `n` bytes (the client has a read timeout).
fn read_n(c: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    c.read_exact(&mut v).unwrap();
    v
}

/// Read until EOF is seen; fails on timeout.
fn expect_eof(c: &mut UnixStream) {
    let mut b = [0u8; 16];
    assert_eq!(c.read(&mut b).unwrap(), 0, "expected EOF");
}

/// EOF, or a reset when the device closed with our bytes unread.
fn expect_closed(c: &mut UnixStream) {
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the socket closed, got {other:?}"),
    }
}

fn read_line(c: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        assert_eq!(c.read(&mut b).unwrap(), 1, "EOF before newline");
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

/// Host client connects to guest port `port`; the guest accepts from `guest_port` with
/// `buf_alloc`. Returns the client and the host port.
fn establish_host(h: &mut Harness, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
    let r = establish_host_exact(h, port, buf_alloc);
    h.post_rx(4, 4096);
    r
}

/// Like [`establish_host`] but leaves no spare rx buffers behind.
fn establish_host_exact(h: &mut Harness, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
    let mut c = h.host_connect(port);
    h.post_rx(1, 4096);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = pkts[0].0;
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(req.src_cid, HOST_CID);
    assert_eq!(req.dst_cid, GUEST_CID);
    assert_eq!(req.dst_port, port);
    assert_eq!(req.type_, TYPE_STREAM);
    let host_port = req.src_port;
    let mut resp = h.hdr(OP_RESPONSE, port, host_port);
    resp.buf_alloc = buf_alloc;
    h.send(resp, &[]);
    h.pump();
    assert_eq!(read_line(&mut c), format!("OK {host_port}"));
    (c, host_port)
}

/// Sum of RW payloads for one stream, and whether other ops appeared.
fn rw_bytes(pkts: &[(Header, Vec<u8>)], host_port: u32) -> Vec<u8> {
    pkts.iter()
        .filter(|(hd, _)| hd.op == OP_RW && hd.src_port == host_port)
        .flat_map(|(_, d)| d.clone())
        .collect()
}

#[test]
fn config_and_features() {
    let h = Harness::new();
    let dev = lock(&h.dev);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_ne!(dev.avail_features() & (1 << 32), 0);
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), GUEST_CID);
    let mut tail = [0xaau8; 4];
    dev.read_config(6, &mut tail);
    assert_eq!(
        tail,
        [0, 0, 0xaa, 0xaa],
        "bytes past the config stay untouched"
    );
    assert!(dev.is_activated());
}

#[test]
fn rejects_reserved_cids_and_live_socket() {
    let h = Harness::new();
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        let listener = HostListener::bind(&h.dir.path().join(format!("x{cid}.sock"))).unwrap();
        assert!(super::Vsock::new(cid, listener, false).is_err());
    }
    assert!(matches!(
        HostListener::bind(&h.uds),
        Err(super::VsockError::PathInUse(_))
    ));
}

#[test]
fn host_connect_handshake_and_data_both_ways() {
    let mut h = Harness::new();
    let irqs = h.irq.count();
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    assert!(hp >= 1 << 30);
    assert!(
        h.irq.count() >= irqs + 2,
        "used buffers on rx and tx raise interrupts"
    );

    c.write_all(b"hello").unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let (hd, data) = &pkts[0];
    assert_eq!((hd.op, hd.src_port, hd.dst_port), (OP_RW, hp, 5000));
    assert_eq!(hd.buf_alloc, super::connection::CONN_BUF_ALLOC);
    assert_eq!(data, b"hello");

    h.send(h.hdr(OP_RW, 5000, hp), b"world");
    h.pump();
    assert_eq!(read_n(&mut c, 5), b"world");
    assert_eq!(lock(&h.dev).metrics().tx_bytes.get(), 5);
}

#[test]
fn host_connect_closed_when_guest_refuses_or_client_misbehaves() {
    let mut h = Harness::new();
    let mut c = h.host_connect(99);
    h.post_rx(2, 4096);
    h.pump();
    let req = h.recv()[0].0;
    h.send(h.hdr(OP_RST, 99, req.src_port), &[]);
    h.pump();
    expect_eof(&mut c);
    assert_eq!(lock(&h.dev).muxer.connection_count(), 0);

    // Bad handshake lines are refused.
    for line in [
        "HELLO\n",
        "CONNECT x\n",
        "CONNECT 1 2 3 4 5 6 7 8 9 10 11 12 13\n",
    ] {
        let mut c = UnixStream::connect(&h.uds).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(line.as_bytes()).unwrap();
        h.pump();
        expect_closed(&mut c);
    }
    assert!(h.recv().is_empty(), "nothing reaches the guest");
    assert_eq!(lock(&h.dev).metrics().host_refused.get(), 3);
}

#[test]
fn data_sent_right_after_handshake_line_is_kept() {
    let mut h = Harness::new();
    let mut c = UnixStream::connect(&h.uds).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(b"CONNECT 7\nearly").unwrap();
    h.post_rx(4, 4096);
    h.pump();
    let req = h.recv()[0].0;
    h.send(h.hdr(OP_RESPONSE, 7, req.src_port), &[]);
    h.pump();
    assert_eq!(read_line(&mut c), format!("OK {}", req.src_port));
    assert_eq!(rw_bytes(&h.recv(), req.src_port), b"early");
}

#[test]
fn host_to_guest_respects_credit() {
    let mut h = Harness::new();
    let (mut c, hp) = establish_host(&mut h, 5000, 100);
    c.write_all(&[7u8; 300]).unwrap();
    h.post_rx(16, 4096);
    h.pump();
    let got = rw_bytes(&h.recv(), hp);
    assert_eq!(got.len(), 100, "only the guest's credit is forwarded");

    // The guest consumed 100 bytes: 100 more may come.
    let mut upd = h.hdr(OP_CREDIT_UPDATE, 5000, hp);
    upd.buf_alloc = 100;
    upd.fwd_cnt = 100;
    h.send(upd, &[]);
    h.pump();
    assert_eq!(rw_bytes(&h.recv(), hp).len(), 100);

    upd.fwd_cnt = 200;
    h.send(upd, &[]);
    h.pump();
    assert_eq!(rw_bytes(&h.recv(), hp).len(), 100);
    h.pump();
    assert!(h.recv().is_empty());
}

#[test]
fn large_host_to_guest_transfer_with_credit_updates() {
    let mut h = Harness::new();
    let (mut c, hp) = establish_host(&mut h, 5000, 32 * 1024);
    let payload: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    c.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let mut received = Vec::new();
    for _ in 0..2000 {
        if sent < payload.len() {
            match c.write(&payload[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        if h.rxq.outstanding() < 16 {
            h.post_rx(8, 4096 + HDR_SIZE as u32);
        }
        h.pump();
        let before = received.len();
        received.extend(rw_bytes(&h.recv(), hp));
        if received.len() != before {
            let mut upd = h.hdr(OP_CREDIT_UPDATE, 5000, hp);
            upd.buf_alloc = 32 * 1024;
            upd.fwd_cnt = received.len() as u32;
            h.send(upd, &[]);
        }
        if received.len() == payload.len() {
            break;
        }
    }
    assert_eq!(received.len(), payload.len());
    assert!(received == payload, "stream corrupted");
}

#[test]
fn guest_initiated_connection_to_host_port() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(port_path(&h.uds, 52)).unwrap();
    h.post_rx(8, 4096);
    h.send(h.hdr(OP_REQUEST, 6000, 52), &[]);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let hd = pkts[0].0;
    assert_eq!((hd.op, hd.src_port, hd.dst_port), (OP_RESPONSE, 52, 6000));
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    h.send(h.hdr(OP_RW, 6000, 52), b"ping");
    h.pump();
    assert_eq!(read_n(&mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    h.pump();
    assert_eq!(rw_bytes(&h.recv(), 52), b"pong");

    // No listener on port 53: reset.
    h.send(h.hdr(OP_REQUEST, 6001, 53), &[]);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (OP_RST, 6001));
}

#[test]
fn guest_initiated_connections_are_reset_unless_allowed() {
    let mut h = Harness::with_guest_connect(false);
    // Something listens where port 52 would go: it must never see a connection.
    let listener = UnixListener::bind(port_path(&h.uds, 52)).unwrap();
    listener.set_nonblocking(true).unwrap();
    h.post_rx(8, 4096);
    h.send(h.hdr(OP_REQUEST, 6000, 52), &[]);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.src_port, pkts[0].0.dst_port),
        (OP_RST, 52, 6000)
    );
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the VMM connected although guest connections are off"
    );
    let m = lock(&h.dev).metrics().clone();
    assert_eq!(m.guest_connect_refused.get(), 1);
    assert_eq!(m.conns_opened.get(), 0);
    // Host-initiated connections work as before.
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    h.send(h.hdr(OP_RW, 5000, hp), b"still fine");
    h.pump();
    assert_eq!(read_n(&mut c, 10), b"still fine");
}

#[test]
fn a_flood_of_bad_avail_indexes_logs_a_bounded_number_of_lines() {
    use crate::devices::virtio::test_utils::warnings_during;
    let mut h = Harness::new();
    h.corrupt_tx_avail_idx();
    let kicks = 500;
    let lines = warnings_during(|| {
        for _ in 0..kicks {
            h.notify[1].write(1).unwrap();
            h.em.run_with_timeout(0).unwrap();
        }
    });
    let errors = lock(&h.dev).metrics().queue_errors.get();
    assert!(errors >= kicks, "each kick met the bad ring: {errors}");
    // The limiter's burst (10 per 5 s window), plus a window turning over mid-test.
    assert!(lines <= 20, "{lines} log lines for {kicks} kicks");
    assert!(lines >= 1, "the first ones are logged");
}

#[test]
fn guest_data_is_buffered_when_host_is_slow_and_credit_is_updated() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(port_path(&h.uds, 52)).unwrap();
    h.post_rx(64, 4096);
    h.send(h.hdr(OP_REQUEST, 6000, 52), &[]);
    h.pump();
    assert_eq!(h.recv()[0].0.op, OP_RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    // Send our whole advertised buffer without the host reading anything.
    let chunk = vec![0x5au8; 32 * 1024];
    for _ in 0..(super::connection::CONN_BUF_ALLOC as usize / chunk.len()) {
        h.send(h.hdr(OP_RW, 6000, 52), &chunk);
    }
    h.pump();
    assert_eq!(
        lock(&h.dev).muxer.connection_count(),
        1,
        "within credit: no reset"
    );
    // Now the host drains it; the device forwards the rest and tells the guest.
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while total < super::connection::CONN_BUF_ALLOC as usize {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        total += n;
        h.pump();
    }
    // Credit updates went out as the host drained (not only at the end)...
    let updates: Vec<u32> = h.recv().iter().map(|(hd, _)| hd.fwd_cnt).collect();
    assert!(
        !updates.is_empty() && updates.iter().all(|&f| f > 0),
        "{updates:?}"
    );
    // ...and a credit request gets the exact count.
    h.send(h.hdr(OP_CREDIT_REQUEST, 6000, 52), &[]);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(pkts[0].0.fwd_cnt, super::connection::CONN_BUF_ALLOC);
}

#[test]
fn guest_exceeding_credit_is_reset() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(port_path(&h.uds, 52)).unwrap();
    h.post_rx(8, 4096);
    h.send(h.hdr(OP_REQUEST, 6000, 52), &[]);
    h.pump();
    h.recv();
    let (mut s, _) = listener.accept().unwrap();
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..8 {
        h.send(h.hdr(OP_RW, 6000, 52), &chunk);
    }
    h.pump();
    let ops: Vec<u16> = h.recv().iter().map(|(hd, _)| hd.op).collect();
    assert!(ops.contains(&OP_RST), "{ops:?}");
    assert_eq!(lock(&h.dev).muxer.connection_count(), 0);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    assert!(sink.len() < 8 * chunk.len());
}

#[test]
fn shutdown_host_side_then_guest_closes() {
    let mut h = Harness::new();
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(rw_bytes(&pkts, hp), b"last words");
    let last = pkts.last().unwrap().0;
    assert_eq!(last.op, OP_SHUTDOWN);
    assert_eq!(last.flags, SHUTDOWN_SEND, "host can still receive");

    // The guest can still send; then it closes (SHUTDOWN both) and gets a reset.
    h.send(h.hdr(OP_RW, 5000, hp), b"reply");
    h.pump();
    assert_eq!(read_n(&mut c, 5), b"reply");
    let mut sd = h.hdr(OP_SHUTDOWN, 5000, hp);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(sd, &[]);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    expect_eof(&mut c);
    assert_eq!(lock(&h.dev).muxer.connection_count(), 0);
}

#[test]
fn shutdown_guest_send_gives_host_eof_but_keeps_other_direction() {
    let mut h = Harness::new();
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    h.send(h.hdr(OP_RW, 5000, hp), b"bye");
    let mut sd = h.hdr(OP_SHUTDOWN, 5000, hp);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]);
    h.pump();
    assert_eq!(read_n(&mut c, 3), b"bye");
    expect_eof(&mut c);
    c.write_all(b"still here").unwrap();
    h.pump();
    assert_eq!(rw_bytes(&h.recv(), hp), b"still here");
    // Host closes: both sides are done, connection ends with a reset or full shutdown.
    drop(c);
    h.pump();
    let ops: Vec<u16> = h.recv().iter().map(|(hd, _)| hd.op).collect();
    assert_eq!(ops, vec![OP_RST]);
    assert_eq!(lock(&h.dev).muxer.connection_count(), 0);
}

#[test]
fn reset_both_ways() {
    let mut h = Harness::new();
    // Guest resets: the client sees EOF.
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    h.send(h.hdr(OP_RST, 5000, hp), &[]);
    h.pump();
    expect_eof(&mut c);
    assert!(h.recv().is_empty(), "no reset answers a reset");

    // Host client vanishes: the guest is told both directions are gone, then resets.
    let (c, hp) = establish_host(&mut h, 5001, 64 * 1024);
    drop(c);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    h.send(h.hdr(OP_RST, 5001, hp), &[]);
    h.pump();
    assert_eq!(lock(&h.dev).muxer.connection_count(), 0);

    // Packets for unknown streams are answered with a reset.
    h.send(h.hdr(OP_RW, 5002, 777), b"x");
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.src_port, pkts[0].0.dst_port),
        (OP_RST, 777, 5002)
    );
}

#[test]
fn two_streams_interleave_and_a_stalled_one_does_not_block_the_other() {
    let mut h = Harness::new();
    let (mut a, pa) = establish_host_exact(&mut h, 5000, 10);
    let (mut b, pb) = establish_host_exact(&mut h, 5001, 64 * 1024);
    a.write_all(&[b'a'; 1000]).unwrap();
    b.write_all(&[b'b'; 3000]).unwrap();
    h.pump();
    // Exactly enough buffers: one for a's credit, four for b's 3000 bytes.
    h.post_rx(5, 1024);
    h.pump();
    let pkts = h.recv();
    assert_eq!(rw_bytes(&pkts, pa).len(), 10, "a is limited by its credit");
    assert_eq!(
        rw_bytes(&pkts, pb),
        vec![b'b'; 3000],
        "b is not held up by a"
    );

    // Round-robin: with both streams having data, packets alternate.
    let mut upd = h.hdr(OP_CREDIT_UPDATE, 5000, pa);
    upd.buf_alloc = 64 * 1024;
    upd.fwd_cnt = 10;
    h.send(upd, &[]);
    b.write_all(&[b'b'; 3000]).unwrap();
    h.pump();
    h.post_rx(16, 256);
    h.pump();
    let pkts = h.recv();
    let order: Vec<u32> = pkts
        .iter()
        .filter(|(hd, _)| hd.op == OP_RW)
        .map(|(hd, _)| hd.src_port)
        .collect();
    assert!(order.len() >= 4, "{order:?}");
    assert!(
        order.windows(2).take(4).all(|w| w[0] != w[1]),
        "not interleaved: {order:?}"
    );
}

#[test]
fn credit_request_is_answered() {
    let mut h = Harness::new();
    let (_c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    h.send(h.hdr(OP_CREDIT_REQUEST, 5000, hp), &[]);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(pkts[0].0.buf_alloc, super::connection::CONN_BUF_ALLOC);
}

#[test]
fn malformed_guest_packets_are_dropped() {
    let mut h = Harness::new();
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    h.post_rx(16, 4096);

    // Header shorter than 44 bytes.
    let a = h.alloc(20);
    h.send_raw(&[Desc {
        addr: a,
        len: 20,
        writable: false,
    }]);
    // Descriptor past the end of guest memory.
    h.send_raw(&[Desc {
        addr: 1 << 40,
        len: 44,
        writable: false,
    }]);
    // Descriptor straddling the end of guest memory.
    h.send_raw(&[Desc {
        addr: (64 << 20) - 8,
        len: 44,
        writable: false,
    }]);
    h.pump();
    assert!(h.recv().is_empty());
    assert_eq!(lock(&h.dev).metrics().tx_malformed.get(), 3);

    // len past the chain: dropped and answered with a reset (it names a live stream).
    let mut hd = h.hdr(OP_RW, 5000, hp);
    hd.len = 1000;
    let ha = h.alloc(64);
    h.mem
        .write_slice(&hd.to_bytes(), vm_memory::GuestAddress(ha))
        .unwrap();
    h.send_raw(&[Desc {
        addr: ha,
        len: 54,
        writable: false,
    }]);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (OP_RST, 5000));
    assert_eq!(lock(&h.dev).metrics().tx_malformed.get(), 4);
    expect_eof(&mut c);

    // A fresh stream for the remaining cases.
    let (mut c, hp) = establish_host(&mut h, 5001, 64 * 1024);
    h.post_rx(16, 4096);
    // Wrong source CID, wrong destination CID, unknown op, payload over the limit.
    let mut bad = h.hdr(OP_RW, 5001, hp);
    bad.src_cid = 9;
    h.send(bad, b"spoof");
    let mut bad = h.hdr(OP_RW, 5001, hp);
    bad.dst_cid = 77;
    h.send(bad, b"spoof");
    h.send(h.hdr(42, 5001, hp), &[]);
    let mut big = h.hdr(OP_RW, 5001, hp);
    big.len = (MAX_PAYLOAD + 1) as u32;
    let ha = h.alloc(64);
    h.mem
        .write_slice(&big.to_bytes(), vm_memory::GuestAddress(ha))
        .unwrap();
    h.send_raw(&[Desc {
        addr: ha,
        len: 44,
        writable: false,
    }]);
    h.pump();
    assert_eq!(lock(&h.dev).metrics().tx_dropped.get(), 3);
    let pkts = h.recv();
    assert_eq!(
        pkts.len(),
        1,
        "only the oversized packet earns a reset: {pkts:?}"
    );
    assert_eq!(pkts[0].0.op, OP_RST);
    expect_eof(&mut c);
}

#[test]
fn unusable_rx_buffers_are_returned_empty() {
    let mut h = Harness::new();
    // Too short for a header, outside guest memory: both returned with zero length.
    let (mut c, hp) = establish_host_exact(&mut h, 5002, 64 * 1024);
    let a = h.alloc(16);
    h.rxq.add_chain(
        &h.mem,
        &[Desc {
            addr: a,
            len: 16,
            writable: true,
        }],
    );
    h.rxq.add_chain(
        &h.mem,
        &[Desc {
            addr: 1 << 40,
            len: 4096,
            writable: true,
        }],
    );
    h.post_rx(1, 4096);
    c.write_all(b"ok").unwrap();
    h.pump();
    assert_eq!(lock(&h.dev).metrics().rx_malformed.get(), 2);
    let pkts = h.recv();
    assert_eq!(rw_bytes(&pkts, hp), b"ok");
    // The device still works.
    h.send(h.hdr(OP_RW, 5002, hp), b"fine");
    h.pump();
    assert_eq!(read_n(&mut c, 4), b"fine");
}

#[test]
fn device_reset_drops_connections_and_reactivation_works() {
    let mut h = Harness::new();
    let (mut c, _hp) = establish_host(&mut h, 5000, 64 * 1024);
    assert!(lock(&h.dev).reset());
    h.pump();
    expect_eof(&mut c);
    assert_eq!(lock(&h.dev).muxer.connection_count(), 0);
    assert!(!lock(&h.dev).is_activated());

    // The driver sets the device up again; it works as before.
    h.activate();
    assert!(lock(&h.dev).is_activated());
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    h.send(h.hdr(OP_RW, 5000, hp), b"again");
    h.pump();
    assert_eq!(read_n(&mut c, 5), b"again");

    // Activation with the wrong number of queues is refused.
    assert!(lock(&h.dev).reset());
    h.pump();
    let err = lock(&h.dev).activate(h.mem.clone(), h.irq.clone(), Vec::new());
    assert!(err.is_err());
}

#[test]
fn tx_pauses_while_replies_wait_for_rx_buffers() {
    let mut h = Harness::new();
    // 250 packets for unknown streams, no rx buffers: 250 resets wait.
    for i in 0..250 {
        h.send(h.hdr(OP_CREDIT_UPDATE, 10_000 + i, 9), &[]);
    }
    h.pump();
    // 10 more: only 6 are taken before the device stops reading tx.
    for i in 250..260 {
        h.send(h.hdr(OP_CREDIT_UPDATE, 10_000 + i, 9), &[]);
    }
    h.pump();
    assert_eq!(h.txq.outstanding(), 4, "tx paused at the reply backlog cap");
    // Rx buffers drain the backlog and tx resumes.
    h.post_rx(200, 128);
    h.pump();
    assert_eq!(h.txq.outstanding(), 0);
    let mut rsts = h.recv();
    h.post_rx(100, 128);
    h.pump();
    rsts.extend(h.recv());
    assert_eq!(rsts.len(), 260);
    assert!(rsts
        .iter()
        .all(|(hd, _)| hd.op == OP_RST && hd.src_port == 9));
    assert_eq!(lock(&h.dev).metrics().rst_sent.get(), 260);
}

#[test]
fn host_client_leaving_before_guest_answers_resets_the_request() {
    let mut h = Harness::new();
    let c = h.host_connect(1024);
    h.post_rx(4, 4096);
    h.pump();
    let req = h.recv()[0].0;
    assert_eq!(req.op, OP_REQUEST);
    drop(c);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.src_port), (OP_RST, req.src_port));
    // The late answer is refused.
    h.send(h.hdr(OP_RESPONSE, 1024, req.src_port), &[]);
    h.pump();
    assert_eq!(h.recv()[0].0.op, OP_RST);
}

#[test]
fn guest_shutdown_rcv_stops_host_to_guest_data() {
    let mut h = Harness::new();
    let (mut c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    let mut sd = h.hdr(OP_SHUTDOWN, 5000, hp);
    sd.flags = SHUTDOWN_RCV;
    h.send(sd, &[]);
    h.pump();
    // The host's writes now fail, and nothing reaches the guest.
    let r = c.write_all(b"unwanted");
    assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::BrokenPipe));
    h.pump();
    assert!(h.recv().is_empty());
    // The other direction still works.
    h.send(h.hdr(OP_RW, 5000, hp), b"fine");
    h.pump();
    assert_eq!(read_n(&mut c, 4), b"fine");
}

#[test]
fn drop_leaves_the_socket_file_to_whoever_made_its_directory() {
    let h = Harness::new();
    let uds = h.uds.clone();
    assert!(uds.exists());
    let Harness { dev, em, dir, .. } = h;
    drop(em);
    drop(dev);
    assert!(dir.path().exists());
    // No unlink (not on the main thread's list): the launcher removes its run directory.
    assert!(uds.exists());
}

/// A small deterministic generator for the randomized test.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() as usize) % from.len()]
    }
}

#[test]
fn random_guest_packets_never_break_the_device() {
    let mut h = Harness::new();
    let _listener = UnixListener::bind(port_path(&h.uds, 52)).unwrap();
    let (c, hp) = establish_host(&mut h, 5000, 64 * 1024);
    let mut rng = Lcg(0x5eed);
    for round in 0..40 {
        h.post_rx(8, rng.pick(&[16, 44, 60, 512, 4096]));
        for _ in 0..12 {
            let mut hd = h.hdr(
                rng.pick(&[
                    0,
                    OP_REQUEST,
                    OP_RESPONSE,
                    OP_RST,
                    OP_SHUTDOWN,
                    OP_RW,
                    6,
                    7,
                    8,
                    0xffff,
                ]),
                rng.pick(&[5000, 5001, 6000, 0, u32::MAX]),
                rng.pick(&[hp, 52, 53, 0, u32::MAX]),
            );
            hd.src_cid = rng.pick(&[GUEST_CID, GUEST_CID, GUEST_CID, 2, 0, u64::MAX]);
            hd.type_ = rng.pick(&[TYPE_STREAM, TYPE_STREAM, 2]);
            hd.flags = rng.next() as u32 & 7;
            hd.buf_alloc = rng.pick(&[0, 1, 4096, u32::MAX]);
            hd.fwd_cnt = rng.next() as u32;
            let data_len = rng.pick(&[0usize, 1, 100, 5000]);
            let data = vec![round as u8; data_len];
            match rng.next() % 4 {
                0 => {
                    // Header claims a different length than the chain holds.
                    let mut hd2 = hd;
                    hd2.len = rng.pick(&[0, 1, 1 << 16, 1 << 17, u32::MAX]);
                    let a = h.alloc(64 + data_len as u32);
                    h.mem
                        .write_slice(&hd2.to_bytes(), vm_memory::GuestAddress(a))
                        .unwrap();
                    let len = rng.pick(&[0, 10, 44, 44 + data_len as u32]);
                    h.send_raw(&[Desc {
                        addr: a,
                        len,
                        writable: false,
                    }]);
                }
                1 => {
                    // Addresses at or past the end of guest memory.
                    let addr = rng.pick(&[(64 << 20) - 20, 64 << 20, u64::MAX - 10]);
                    h.send_raw(&[Desc {
                        addr,
                        len: 44,
                        writable: false,
                    }]);
                }
                _ => h.send(hd, &data),
            }
        }
        h.pump();
        h.recv();
    }
    // Whatever happened to the first stream, a new one works.
    drop(c);
    h.pump();
    h.recv();
    let (mut c2, hp2) = establish_host_exact(&mut h, 5100, 64 * 1024);
    h.post_rx(4, 4096);
    h.send(h.hdr(OP_RW, 5100, hp2), b"alive");
    h.pump();
    assert_eq!(read_n(&mut c2, 5), b"alive");
    c2.write_all(b"yes").unwrap();
    h.pump();
    assert_eq!(rw_bytes(&h.recv(), hp2), b"yes");
    let m = lock(&h.dev).metrics().clone();
    assert!(m.tx_malformed.get() > 0 && m.tx_dropped.get() > 0 && m.rx_malformed.get() > 0);
}
