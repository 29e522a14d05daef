//! virtio-net on a socketpair tap, driven by a hostile driver (rx buffers, tx frames split
//! over descriptors, free-form chains, kicks, resets, any acked features) and a host network
//! sending arbitrary frames. Checks: no panic and no busy loop; only published heads come
//! back, each once, within the chain's writable bytes; the device never receives more bytes
//! than the host sent; every frame reaching the tap is one the guest queued, unchanged and in
//! order (when no free-form chain went to the tx queue).
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use bulkhead_fuzz::fake_tap::{self, Peer};
use bulkhead_fuzz::guest::{self, Bump, Desc, Ring, WildDesc, F_WRITE};
use bulkhead_fuzz::{evloop, interrupt};
use bulkhead_vmm::devices::virtio::device::ActivatedQueue;
use bulkhead_vmm::devices::virtio::net::{
    Net, TapOffloads, MAX_BUFFER_LEN, NET_QUEUE_SIZE, VNET_HDR_LEN,
};
use bulkhead_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
enum Op {
    RxBufs(Vec<u16>),
    /// A frame (virtio-net header included), split at these lengths.
    TxFrame(Vec<u8>, Vec<u16>),
    /// A large frame of `len` bytes (pattern filled).
    TxLarge(u32),
    Wild(bool, Vec<WildDesc>),
    PeerSend(Vec<u8>),
    PeerSendLarge(u16),
    PeerDrain,
    Kick(bool),
    Reset(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    features: u64,
    mtu: Option<u16>,
    sizes: (u8, u8),
    ops: Vec<Op>,
}

struct Rings {
    rx: Ring,
    tx: Ring,
    notify: [Arc<EventFd>; 2],
}

fn activate(dev: &Arc<Mutex<Net>>, mem: &GuestMemoryMmap, features: u64, sizes: (u8, u8)) -> Rings {
    let (rx, rxq) = Ring::new(
        mem,
        0,
        NET_QUEUE_SIZE,
        guest::queue_size(sizes.0, NET_QUEUE_SIZE),
    );
    let (tx, txq) = Ring::new(
        mem,
        1,
        NET_QUEUE_SIZE,
        guest::queue_size(sizes.1, NET_QUEUE_SIZE),
    );
    let notify = [
        Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
        Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
    ];
    let queues = vec![
        ActivatedQueue {
            queue: rxq,
            notify: notify[0].clone(),
        },
        ActivatedQueue {
            queue: txq,
            notify: notify[1].clone(),
        },
    ];
    let mut d = dev.lock().expect("device lock");
    let acked = features & d.avail_features();
    d.set_acked_features(acked);
    d.activate(mem.clone(), interrupt(), queues)
        .expect("activate");
    Rings { rx, tx, notify }
}

struct Model {
    /// Frames the guest queued that the tap has not delivered yet.
    expected: VecDeque<Vec<u8>>,
    /// A free-form chain went to the tx queue: frame contents are not tracked.
    tx_wild: bool,
    host_sent: u64,
    guest_received: u64,
}

impl Model {
    fn drain(&mut self, peer: &Peer) {
        while let Some(frame) = peer.recv() {
            assert!(
                frame.len() > VNET_HDR_LEN,
                "tap got a frame of {} bytes",
                frame.len()
            );
            assert!(
                frame.len() <= MAX_BUFFER_LEN,
                "tap got a frame of {} bytes",
                frame.len()
            );
            if self.tx_wild {
                continue;
            }
            let want = self
                .expected
                .pop_front()
                .expect("tap got a frame the guest never queued");
            assert!(want == frame, "tap frame differs from the guest's");
        }
    }

    fn used(&mut self, r: &mut Rings, mem: &GuestMemoryMmap) {
        for (_, len) in r.rx.take_used(mem) {
            self.guest_received += u64::from(len);
        }
        assert!(
            self.guest_received <= self.host_sent,
            "guest received {} bytes, host sent {}",
            self.guest_received,
            self.host_sent
        );
        r.tx.take_used(mem);
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fuzz_target!(|input: Input| {
    let mem = guest::memory();
    let (tap, peer) = fake_tap::pair();
    let net = Net::new(Box::new(tap), TapOffloads::default(), None, input.mtu).expect("net");
    let dev = Arc::new(Mutex::new(net));
    let mut em = evloop::with(dev.clone());
    let mut r = activate(&dev, &mem, input.features, input.sizes);
    evloop::pump(&mut em);
    let mut bump = Bump::default();
    let mut m = Model {
        expected: VecDeque::new(),
        tx_wild: false,
        host_sent: 0,
        guest_received: 0,
    };
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::RxBufs(lens) => {
                let descs: Option<Vec<Desc>> = lens
                    .iter()
                    .take(4)
                    .map(|&l| {
                        let len = u32::from(l.max(1));
                        bump.alloc(len).map(|addr| Desc {
                            addr,
                            len,
                            flags: F_WRITE,
                            next: None,
                        })
                    })
                    .collect();
                if let Some(d) = descs {
                    r.rx.add_chain(&mem, &d);
                }
            }
            Op::TxFrame(frame, splits) => queue_tx(&mem, &mut r, &mut bump, &mut m, frame, &splits),
            Op::TxLarge(len) => {
                let len = (len as usize) % (MAX_BUFFER_LEN + 64);
                queue_tx(&mem, &mut r, &mut bump, &mut m, pattern(len, 7), &[]);
            }
            Op::Wild(tx, descs) => {
                let d: Vec<Desc> = descs.iter().take(8).map(guest::wild).collect();
                if tx {
                    m.tx_wild = true;
                    r.tx.add_chain(&mem, &d);
                } else {
                    r.rx.add_chain(&mem, &d);
                }
            }
            Op::PeerSend(frame) => {
                if peer.send(&frame) {
                    m.host_sent += frame.len() as u64;
                }
                evloop::pump(&mut em);
                m.used(&mut r, &mem);
            }
            Op::PeerSendLarge(len) => {
                let frame = pattern(usize::from(len) + VNET_HDR_LEN, 3);
                if peer.send(&frame) {
                    m.host_sent += frame.len() as u64;
                }
                evloop::pump(&mut em);
                m.used(&mut r, &mem);
            }
            Op::PeerDrain => {
                m.drain(&peer);
                evloop::pump(&mut em);
                m.used(&mut r, &mem);
            }
            Op::Kick(tx) => {
                r.notify[usize::from(tx)].write(1).expect("notify");
                evloop::pump(&mut em);
                m.used(&mut r, &mem);
            }
            Op::Reset(features) => {
                assert!(
                    dev.lock().expect("device lock").reset(),
                    "net refused reset"
                );
                evloop::pump(&mut em);
                m.drain(&peer);
                m.expected.clear();
                r = activate(&dev, &mem, features, input.sizes);
                evloop::pump(&mut em);
                bump = Bump::default();
            }
        }
    }
    for n in &r.notify {
        n.write(1).expect("notify");
    }
    evloop::pump(&mut em);
    m.used(&mut r, &mem);
    m.drain(&peer);
});

fn queue_tx(
    mem: &GuestMemoryMmap,
    r: &mut Rings,
    bump: &mut Bump,
    m: &mut Model,
    frame: Vec<u8>,
    splits: &[u16],
) {
    if frame.is_empty() {
        return;
    }
    let mut descs = Vec::new();
    let mut rest = &frame[..];
    for &s in splits.iter().take(3) {
        let n = usize::from(s).min(rest.len());
        if n == 0 || n == rest.len() {
            break;
        }
        let (a, b) = rest.split_at(n);
        descs.push(a);
        rest = b;
    }
    descs.push(rest);
    let mut laid = Vec::new();
    for part in descs {
        let Some(addr) = bump.alloc(part.len() as u32) else {
            return;
        };
        mem.write_slice(part, GuestAddress(addr))
            .expect("buffer in memory");
        laid.push(Desc {
            addr,
            len: part.len() as u32,
            flags: 0,
            next: None,
        });
    }
    if r.tx.add_chain(mem, &laid).is_some()
        && frame.len() > VNET_HDR_LEN
        && frame.len() <= MAX_BUFFER_LEN
    {
        m.expected.push_back(frame);
    }
}
