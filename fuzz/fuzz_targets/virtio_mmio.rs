//! The virtio-mmio transport under register access sequences a hostile driver can issue (any
//! offset, size and value, in any order), with an rng or a net device behind it and the event
//! loop running after every access, plus a "correct handshake" step so that activation, queue
//! notifications and resets are reached. Checks: no panic, no busy loop; the identification
//! registers never change; InterruptStatus only ever has the two defined bits.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use bulkhead_fuzz::guest::{self, Bump, Desc, Ring, WildDesc, F_WRITE};
use bulkhead_fuzz::{evloop, fake_tap};
use bulkhead_vmm::devices::bus::BusDevice;
use bulkhead_vmm::devices::virtio::mmio::MmioTransport;
use bulkhead_vmm::devices::virtio::net::{Net, TapOffloads};
use bulkhead_vmm::devices::virtio::rng::Rng;
use bulkhead_vmm::devices::virtio::VirtioDevice;
use event_manager::MutEventSubscriber;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAGIC: u32 = 0x7472_6976;

#[derive(Arbitrary, Debug)]
enum Op {
    Write(u16, u8, u64),
    Read(u16, u8),
    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK, every queue at its ring, DRIVER_OK.
    Handshake(u64, u8),
    /// A writable (rng rx / net rx) chain on queue 0, or a free-form one on any queue.
    Chain(u8, Option<Vec<WildDesc>>, u16),
    Notify(u8),
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    net: bool,
    ops: Vec<Op>,
}

fn write32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn read32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn size(sel: u8) -> usize {
    [1, 2, 4, 8, 3, 0][usize::from(sel) % 6]
}

fuzz_target!(|input: Input| {
    let mem = guest::memory();
    // The host end of the net device's tap lives as long as the input.
    let mut _peer = None;
    let (dev, sub, nq): (
        Arc<Mutex<dyn VirtioDevice>>,
        Arc<Mutex<dyn MutEventSubscriber + Send>>,
        u64,
    ) = if input.net {
        let (tap, peer) = fake_tap::pair();
        _peer = Some(peer);
        let n = Arc::new(Mutex::new(
            Net::new(Box::new(tap), TapOffloads::default(), None, Some(1500)).expect("net"),
        ));
        (
            n.clone() as Arc<Mutex<dyn VirtioDevice>>,
            n as Arc<Mutex<dyn MutEventSubscriber + Send>>,
            2,
        )
    } else {
        let r = Arc::new(Mutex::new(Rng::new().expect("rng")));
        (
            r.clone() as Arc<Mutex<dyn VirtioDevice>>,
            r as Arc<Mutex<dyn MutEventSubscriber + Send>>,
            1,
        )
    };
    let mut em = evloop::with(sub);
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(mem.clone(), dev, irqfd).expect("transport");
    let mut rings: Vec<Ring> = Vec::new();
    let mut bump = Bump::default();
    let ids = (read32(&mut t, 0), read32(&mut t, 4), read32(&mut t, 8));
    assert_eq!(ids.0, MAGIC);
    for op in input.ops.into_iter().take(128) {
        match op {
            Op::Write(off, sz, v) => {
                let off = u64::from(off) % 0x200;
                let b = v.to_le_bytes();
                t.write(off, &b[..size(sz)]);
            }
            Op::Read(off, sz) => {
                let mut b = [0u8; 8];
                t.read(u64::from(off) % 0x200, &mut b[..size(sz)]);
            }
            Op::Handshake(features, qsize) => {
                write32(&mut t, 0x70, 0);
                write32(&mut t, 0x70, 1);
                write32(&mut t, 0x70, 3);
                for sel in 0..2u32 {
                    write32(&mut t, 0x24, sel);
                    write32(&mut t, 0x20, (features >> (32 * sel)) as u32);
                }
                write32(&mut t, 0x70, 0xb);
                rings.clear();
                bump = Bump::default();
                for q in 0..nq {
                    write32(&mut t, 0x30, q as u32);
                    let max = read32(&mut t, 0x34) as u16;
                    let size = guest::queue_size(qsize, max.max(1));
                    let (ring, _) = Ring::new(&mem, q, max.max(size), size);
                    let base = q * 0x4000;
                    write32(&mut t, 0x38, u32::from(size));
                    write32(&mut t, 0x80, base as u32);
                    write32(&mut t, 0x84, 0);
                    write32(&mut t, 0x90, (base + 0x1000) as u32);
                    write32(&mut t, 0x94, 0);
                    write32(&mut t, 0xa0, (base + 0x2000) as u32);
                    write32(&mut t, 0xa4, 0);
                    write32(&mut t, 0x44, 1);
                    rings.push(ring);
                }
                write32(&mut t, 0x70, 0xf);
            }
            Op::Chain(q, wild, len) => {
                if rings.is_empty() {
                    continue;
                }
                let n = rings.len();
                let ring = &mut rings[usize::from(q) % n];
                let descs: Vec<Desc> = match wild {
                    Some(w) => w.iter().take(8).map(guest::wild).collect(),
                    None => {
                        let len = u32::from(len.max(1));
                        let Some(addr) = bump.alloc(len) else {
                            continue;
                        };
                        vec![Desc {
                            addr,
                            len,
                            flags: F_WRITE,
                            next: None,
                        }]
                    }
                };
                ring.add_chain(&mem, &descs);
            }
            Op::Notify(q) => write32(&mut t, 0x50, u32::from(q) % (nq as u32 + 1)),
            Op::Reset => write32(&mut t, 0x70, 0),
        }
        evloop::pump(&mut em);
        assert_eq!(
            (read32(&mut t, 0), read32(&mut t, 4), read32(&mut t, 8)),
            ids
        );
        let isr = read32(&mut t, 0x60);
        assert_eq!(isr & !3, 0, "InterruptStatus {isr:#x}");
    }
});
