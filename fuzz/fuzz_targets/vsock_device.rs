//! virtio-vsock (hybrid unix-socket host side) driven through its tx and rx paths by a hostile
//! driver and hostile host clients: packets with any header, free-form chains, rx buffers of
//! any shape, `CONNECT` lines of any bytes, host peers writing, reading and hanging up, and
//! device resets. Checks, besides no panic and no busy loop:
//! - rings: only published heads come back, each once; tx chains come back with length 0; an
//!   rx used length fits the buffer;
//! - every rx packet: used length = header + `len`, `len` <= 64 KiB, host CID to guest CID,
//!   stream type, a known op; `buf_alloc` is the connection's buffer size;
//! - credit: data goes only to a stream the host opened or accepted, never more than the
//!   guest's advertised credit (`buf_alloc - (sent - fwd_cnt)`, never negative);
//! - the host's `fwd_cnt` never exceeds what the guest sent on the stream.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use bulkhead_fuzz::guest::{self, Bump, Desc, Ring, WildDesc, F_WRITE};
use bulkhead_fuzz::{evloop, interrupt};
use bulkhead_vmm::devices::virtio::device::ActivatedQueue;
use bulkhead_vmm::devices::virtio::vsock::connection::CONN_BUF_ALLOC;
use bulkhead_vmm::devices::virtio::vsock::device::QUEUE_SIZE;
use bulkhead_vmm::devices::virtio::vsock::packet::{
    Header, HDR_SIZE, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, TYPE_STREAM,
};
use bulkhead_vmm::devices::virtio::vsock::unix::HostListener;
use bulkhead_vmm::devices::virtio::vsock::Vsock;
use bulkhead_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PortSel {
    /// To a host listener (`<uds>_1` or `_2`; `_3` has none), from a small guest port.
    Listener(u8, u8),
    /// Answering the n-th most recent stream the host opened or answered.
    Reply(u8),
    Raw(u32, u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CreditSel {
    /// 64 KiB buffer, fwd_cnt = what the guest received on the stream.
    Honest,
    Raw(u32, u32),
}

#[derive(Arbitrary, Debug)]
struct Pkt {
    op: u8,
    ports: PortSel,
    credit: CreditSel,
    flags: u32,
    /// None: the right CIDs and type.
    raw_addr: Option<(u64, u64, u16)>,
    /// None: `len` is the payload length.
    raw_len: Option<u32>,
    payload: Vec<u8>,
    /// Header and payload in one descriptor.
    one_desc: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Send(Pkt),
    RxBufs(u8, u16, Option<u16>),
    Wild(bool, Vec<WildDesc>),
    Kick(u8),
    HostConnect(Vec<u8>),
    HostConnectPort(u32),
    HostAccept,
    HostWrite(u8, Vec<u8>),
    HostRead(u8),
    HostClose(u8),
    Reset(u8, u8),
    /// A whole stream set-up, so the data path is reached often: host-initiated (a
    /// `CONNECT` line, rx buffers, the guest's RESPONSE with credit) or guest-initiated (a
    /// REQUEST to a host listener, accepted there).
    Establish(bool, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// `--vsock-guest-connect`: guest connections reach `<uds>_<port>`.
    guest_connect: bool,
    sizes: (u8, u8),
    ops: Vec<Op>,
}

/// (host port, guest port)
type Key = (u32, u32);

#[derive(Default)]
struct ConnModel {
    /// The host sent REQUEST or RESPONSE for it.
    known: bool,
    /// Payload bytes host -> guest since then.
    rx_bytes: u32,
    /// Credit state (buf_alloc, fwd_cnt) of the last packet the host took for this key.
    settled: (u32, u32),
    /// Published, not yet taken: (seq, credit state, payload bytes).
    pending: VecDeque<(u64, (u32, u32), u64)>,
    /// RW payload bytes the host took since the stream started.
    guest_sent: u64,
}

#[derive(Default)]
struct Model {
    conns: HashMap<Key, ConnModel>,
    /// Tx chains in publication order: the packet the host will take, if well-formed.
    tx_fifo: VecDeque<Option<(Key, u64, u16)>>,
    seq: u64,
    recent: VecDeque<Key>,
    /// A free-form chain went to the rx queue: packets may be missed, stream checks are off.
    rx_blind: bool,
    /// Data packets whose credit was checked (printed with FUZZ_STATS=1, to see that the
    /// corpus reaches the data path).
    rw_checked: u64,
}

struct Rig {
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    notify: [Arc<EventFd>; 3],
}

fn activate(dev: &Arc<Mutex<Vsock>>, mem: &GuestMemoryMmap, sizes: (u8, u8)) -> Rig {
    let (rx, rxq) = Ring::new(mem, 0, QUEUE_SIZE, guest::queue_size(sizes.0, QUEUE_SIZE));
    let (tx, txq) = Ring::new(mem, 1, QUEUE_SIZE, guest::queue_size(sizes.1, QUEUE_SIZE));
    let (_ev, evq) = Ring::new(mem, 2, QUEUE_SIZE, 4);
    let notify = [0, 1, 2].map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
    let queues = [rxq, txq, evq]
        .into_iter()
        .zip(notify.iter())
        .map(|(queue, n)| ActivatedQueue {
            queue,
            notify: n.clone(),
        })
        .collect();
    dev.lock()
        .expect("device lock")
        .activate(mem.clone(), interrupt(), queues)
        .expect("activate");
    Rig {
        mem: mem.clone(),
        rx,
        tx,
        notify,
    }
}

fn credit(state: (u32, u32), sent: u32) -> u32 {
    state.0.saturating_sub(sent.wrapping_sub(state.1))
}

impl Model {
    /// Check what the device returned since the last call.
    fn check(&mut self, rig: &mut Rig) {
        for (chain, len) in rig.rx.take_used(&rig.mem) {
            if len == 0 {
                continue;
            }
            if !chain.well_formed {
                continue;
            }
            let raw = read_chain(&rig.mem, &chain.descs, len);
            assert!(raw.len() >= HDR_SIZE, "rx packet of {len} bytes");
            let hdr = Header::from_bytes(raw[..HDR_SIZE].try_into().expect("header"));
            self.check_rx(&hdr, len);
        }
        for (_, len) in rig.tx.take_used(&rig.mem) {
            assert_eq!(len, 0, "tx chain returned with length {len}");
            let Some(entry) = self.tx_fifo.pop_front() else {
                panic!("tx chain used that was never published");
            };
            if let Some((key, seq, op)) = entry {
                self.taken(key, seq, op);
            }
        }
    }

    fn check_rx(&mut self, hdr: &Header, used: u32) {
        assert_eq!(
            u64::from(hdr.len) + HDR_SIZE as u64,
            u64::from(used),
            "{hdr:?}"
        );
        assert!(hdr.len as usize <= MAX_PAYLOAD, "{hdr:?}");
        assert_eq!(hdr.src_cid, HOST_CID, "{hdr:?}");
        assert_eq!(hdr.dst_cid, GUEST_CID, "{hdr:?}");
        assert_eq!(hdr.type_, TYPE_STREAM, "{hdr:?}");
        assert!(
            (OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op),
            "{hdr:?}"
        );
        if hdr.op != OP_RW {
            assert_eq!(hdr.len, 0, "control packet with payload: {hdr:?}");
        }
        if hdr.op != OP_RST {
            assert_eq!(hdr.buf_alloc, CONN_BUF_ALLOC, "{hdr:?}");
        }
        if self.rx_blind {
            return;
        }
        let key = (hdr.src_port, hdr.dst_port);
        let c = self.conns.entry(key).or_default();
        match hdr.op {
            OP_REQUEST => {
                *c = ConnModel {
                    known: true,
                    pending: std::mem::take(&mut c.pending),
                    ..ConnModel::default()
                };
                self.recent.push_front(key);
            }
            OP_RESPONSE => {
                c.known = true;
                c.rx_bytes = 0;
                self.recent.push_front(key);
            }
            OP_RW => {
                assert!(c.known, "data on a stream the host never opened: {hdr:?}");
                let best = std::iter::once(c.settled)
                    .chain(c.pending.iter().map(|p| p.1))
                    .map(|s| credit(s, c.rx_bytes))
                    .max()
                    .unwrap_or(0);
                assert!(
                    hdr.len <= best,
                    "host sent {} bytes with {best} bytes of guest credit: {hdr:?}",
                    hdr.len
                );
                c.rx_bytes = c.rx_bytes.wrapping_add(hdr.len);
                self.rw_checked += 1;
            }
            _ => {}
        }
        if hdr.op != OP_RST {
            let bound = c.guest_sent + c.pending.iter().map(|p| p.2).sum::<u64>();
            if bound < u64::from(u32::MAX) {
                assert!(
                    u64::from(hdr.fwd_cnt) <= bound,
                    "host forwarded {} bytes, guest sent at most {bound}: {hdr:?}",
                    hdr.fwd_cnt
                );
            }
        }
        self.recent.truncate(8);
    }

    /// The host took packet `seq` on `key`.
    fn taken(&mut self, key: Key, seq: u64, op: u16) {
        let c = self.conns.entry(key).or_default();
        let Some(pos) = c.pending.iter().position(|p| p.0 == seq) else {
            return;
        };
        let Some((_, state, bytes)) = c.pending.remove(pos) else {
            return;
        };
        c.settled = state;
        if op == OP_REQUEST {
            c.guest_sent = 0;
        }
        if op == OP_RW {
            c.guest_sent += bytes;
        }
    }
}

fn read_chain(mem: &GuestMemoryMmap, descs: &[Desc], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = len as usize;
    for d in descs.iter().filter(|d| d.flags & F_WRITE != 0) {
        let n = left.min(d.len as usize);
        let mut buf = vec![0u8; n];
        mem.read_slice(&mut buf, GuestAddress(d.addr))
            .expect("rx buffer");
        out.extend(buf);
        left -= n;
        if left == 0 {
            break;
        }
    }
    out
}

fn send(rig: &mut Rig, bump: &mut Bump, m: &mut Model, p: Pkt) {
    let op = if p.op < 200 {
        u16::from(p.op % 7 + 1)
    } else {
        u16::from(p.op)
    };
    let (src_port, dst_port) = match p.ports {
        PortSel::Listener(l, g) => (1024 + u32::from(g % 4), u32::from(l % 3) + 1),
        PortSel::Reply(n) => match m.recent.get(usize::from(n) % m.recent.len().max(1)) {
            Some(&(host, guest)) => (guest, host),
            None => (1024, 1),
        },
        PortSel::Raw(s, d) => (s, d),
    };
    let key = (dst_port, src_port);
    let (buf_alloc, fwd_cnt) = match p.credit {
        CreditSel::Honest => (64 << 10, m.conns.get(&key).map_or(0, |c| c.rx_bytes)),
        CreditSel::Raw(b, f) => (b, f),
    };
    let (src_cid, dst_cid, type_) = p.raw_addr.unwrap_or((GUEST_CID, HOST_CID, TYPE_STREAM));
    let payload = &p.payload[..p.payload.len().min(MAX_PAYLOAD)];
    let len = p.raw_len.unwrap_or(payload.len() as u32);
    let hdr = Header {
        src_cid,
        dst_cid,
        src_port,
        dst_port,
        len,
        type_,
        op,
        flags: p.flags,
        buf_alloc,
        fwd_cnt,
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    let parts: Vec<&[u8]> = if p.one_desc || payload.is_empty() {
        vec![&bytes[..]]
    } else {
        vec![&bytes[..HDR_SIZE], &bytes[HDR_SIZE..]]
    };
    let mut descs = Vec::new();
    for part in parts {
        let Some(addr) = bump.alloc(part.len() as u32) else {
            return;
        };
        rig.mem
            .write_slice(part, GuestAddress(addr))
            .expect("buffer");
        descs.push(Desc {
            addr,
            len: part.len() as u32,
            flags: 0,
            next: None,
        });
    }
    if rig.tx.add_chain(&rig.mem, &descs).is_none() {
        return;
    }
    let takes = src_cid == GUEST_CID
        && dst_cid == HOST_CID
        && type_ == TYPE_STREAM
        && (OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op)
        && op != OP_RST
        && len as usize == payload.len();
    if takes {
        m.seq += 1;
        let c = m.conns.entry(key).or_default();
        c.pending
            .push_back((m.seq, (buf_alloc, fwd_cnt), payload.len() as u64));
        m.tx_fifo.push_back(Some((key, m.seq, op)));
    } else {
        m.tx_fifo.push_back(None);
    }
}

fn pump(em: &mut evloop::Em, rig: &mut Rig, m: &mut Model) {
    evloop::pump(em);
    m.check(rig);
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let listeners: Vec<UnixListener> = [1, 2]
        .iter()
        .map(|p| {
            let l = UnixListener::bind(dir.path().join(format!("v.sock_{p}"))).expect("listener");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .collect();
    let mem = guest::memory();
    let dev = Arc::new(Mutex::new(
        Vsock::new(
            GUEST_CID,
            HostListener::bind(&uds).expect("listener"),
            input.guest_connect,
        )
        .expect("vsock"),
    ));
    let mut em = evloop::with(dev.clone());
    let mut rig = activate(&dev, &mem, input.sizes);
    let mut m = Model::default();
    let mut bump = Bump::default();
    let mut host: Vec<UnixStream> = Vec::new();
    pump(&mut em, &mut rig, &mut m);
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Send(p) => send(&mut rig, &mut bump, &mut m, p),
            Op::RxBufs(n, size, split) => {
                for _ in 0..(n % 8) + 1 {
                    let size = u32::from(size.max(1));
                    let descs: Option<Vec<Desc>> = match split {
                        Some(s) if u32::from(s) % size > 0 => {
                            let a = u32::from(s) % size;
                            [a, size - a]
                                .iter()
                                .map(|&l| {
                                    bump.alloc(l).map(|addr| Desc {
                                        addr,
                                        len: l,
                                        flags: F_WRITE,
                                        next: None,
                                    })
                                })
                                .collect()
                        }
                        _ => bump.alloc(size).map(|addr| {
                            vec![Desc {
                                addr,
                                len: size,
                                flags: F_WRITE,
                                next: None,
                            }]
                        }),
                    };
                    if let Some(d) = descs {
                        rig.rx.add_chain(&mem, &d);
                    }
                }
            }
            Op::Wild(tx, descs) => {
                let d: Vec<Desc> = descs.iter().take(8).map(guest::wild).collect();
                if tx {
                    if rig.tx.add_chain(&mem, &d).is_some() {
                        m.tx_fifo.push_back(None);
                    }
                } else if rig.rx.add_chain(&mem, &d).is_some() {
                    m.rx_blind = true;
                }
            }
            Op::Kick(q) => {
                let _ = rig.notify[usize::from(q % 3)].write(1);
                pump(&mut em, &mut rig, &mut m);
            }
            Op::HostConnect(line) => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(&line);
                    host.push(s);
                }
                pump(&mut em, &mut rig, &mut m);
            }
            Op::HostConnectPort(port) => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(format!("CONNECT {port}\n").as_bytes());
                    host.push(s);
                }
                pump(&mut em, &mut rig, &mut m);
            }
            Op::HostAccept => {
                for l in &listeners {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        host.push(s);
                    }
                }
            }
            Op::HostWrite(i, data) => {
                if !host.is_empty() {
                    let n = host.len();
                    let _ = host[usize::from(i) % n].write(&data);
                }
                pump(&mut em, &mut rig, &mut m);
            }
            Op::HostRead(i) => {
                if !host.is_empty() {
                    let n = host.len();
                    let mut buf = [0u8; 4096];
                    while matches!(host[usize::from(i) % n].read(&mut buf), Ok(1..)) {}
                }
                pump(&mut em, &mut rig, &mut m);
            }
            Op::HostClose(i) => {
                if !host.is_empty() {
                    let n = host.len();
                    host.remove(usize::from(i) % n);
                }
                pump(&mut em, &mut rig, &mut m);
            }
            Op::Establish(from_host, port) => {
                let rx_buf = |bump: &mut Bump, rig: &mut Rig| {
                    if let Some(addr) = bump.alloc(4096) {
                        rig.rx.add_chain(
                            &mem,
                            &[Desc {
                                addr,
                                len: 4096,
                                flags: F_WRITE,
                                next: None,
                            }],
                        );
                    }
                };
                if from_host {
                    if let Ok(mut s) = UnixStream::connect(&uds) {
                        let _ = s.set_nonblocking(true);
                        let _ =
                            s.write(format!("CONNECT {}\n", 1024 + u32::from(port % 4)).as_bytes());
                        host.push(s);
                    }
                    rx_buf(&mut bump, &mut rig);
                    let _ = rig.notify[0].write(1);
                    pump(&mut em, &mut rig, &mut m);
                    let p = Pkt {
                        op: OP_RESPONSE as u8 - 1,
                        ports: PortSel::Reply(0),
                        credit: CreditSel::Honest,
                        flags: 0,
                        raw_addr: None,
                        raw_len: None,
                        payload: Vec::new(),
                        one_desc: true,
                    };
                    send(&mut rig, &mut bump, &mut m, p);
                } else {
                    let p = Pkt {
                        op: OP_REQUEST as u8 - 1,
                        ports: PortSel::Listener(port % 2, port / 2),
                        credit: CreditSel::Honest,
                        flags: 0,
                        raw_addr: None,
                        raw_len: None,
                        payload: Vec::new(),
                        one_desc: true,
                    };
                    send(&mut rig, &mut bump, &mut m, p);
                }
                rx_buf(&mut bump, &mut rig);
                rx_buf(&mut bump, &mut rig);
                let _ = rig.notify[1].write(1);
                pump(&mut em, &mut rig, &mut m);
                for l in &listeners {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        host.push(s);
                    }
                }
                // The host side speaks first, so data flows to the guest right away.
                if let Some(s) = host.last_mut() {
                    let _ = s.write(&vec![port; 64 * usize::from(port)]);
                }
                pump(&mut em, &mut rig, &mut m);
            }
            Op::Reset(a, b) => {
                assert!(
                    dev.lock().expect("device lock").reset(),
                    "vsock refused reset"
                );
                evloop::pump(&mut em);
                rig = activate(&dev, &mem, (a, b));
                m = Model::default();
                bump = Bump::default();
                pump(&mut em, &mut rig, &mut m);
            }
        }
    }
    for n in &rig.notify {
        let _ = n.write(1);
    }
    pump(&mut em, &mut rig, &mut m);
    if std::env::var_os("FUZZ_STATS").is_some() {
        eprintln!("vsock_device: {} data packets credit-checked", m.rw_checked);
    }
    drop(em);
    drop(dev);
    drop(host);
});
