//! virtio-rng driven by a hostile driver: well-formed and free-form descriptor chains, kicks,
//! resets. Checks: no panic, only published heads come back, each once, a used length never
//! exceeds the chain's writable bytes nor MAX_BYTES_PER_CHAIN, and a well-formed chain of
//! writable buffers is filled up to that limit.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use bulkhead_fuzz::guest::{self, Bump, Desc, Ring, WildDesc, F_WRITE};
use bulkhead_fuzz::{evloop, interrupt};
use bulkhead_vmm::devices::virtio::device::ActivatedQueue;
use bulkhead_vmm::devices::virtio::rng::{Rng, MAX_BYTES_PER_CHAIN, RNG_QUEUE_SIZE};
use bulkhead_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Writable buffers from the bump zone (lengths in bytes).
    Good(Vec<u16>),
    /// Buffers whose lengths may be huge (up to the u32 range), still in memory only if small.
    Big(u32),
    Wild(Vec<WildDesc>),
    Kick,
    Reset(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    size: u8,
    ops: Vec<Op>,
}

fn activate(dev: &Arc<Mutex<Rng>>, mem: &GuestMemoryMmap, size: u8) -> (Ring, Arc<EventFd>) {
    let (ring, queue) = Ring::new(
        mem,
        0,
        RNG_QUEUE_SIZE,
        guest::queue_size(size, RNG_QUEUE_SIZE),
    );
    let notify = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let q = ActivatedQueue {
        queue,
        notify: notify.clone(),
    };
    dev.lock()
        .expect("device lock")
        .activate(mem.clone(), interrupt(), vec![q])
        .expect("activate");
    (ring, notify)
}

fn check(ring: &mut Ring, mem: &GuestMemoryMmap) {
    for (chain, len) in ring.take_used(mem) {
        assert!(
            len <= MAX_BYTES_PER_CHAIN,
            "rng wrote {len} bytes into one chain"
        );
        let all_writable = chain.descs.iter().all(|d| d.flags & F_WRITE != 0);
        if chain.well_formed && all_writable {
            let want = chain.writable.min(u64::from(MAX_BYTES_PER_CHAIN));
            assert_eq!(
                u64::from(len),
                want,
                "well-formed chain not filled: {chain:?}"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let mem = guest::memory();
    let dev = Arc::new(Mutex::new(Rng::new().expect("rng")));
    let mut em = evloop::with(dev.clone());
    let (mut ring, mut notify) = activate(&dev, &mem, input.size);
    evloop::pump(&mut em);
    let mut bump = Bump::default();
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Good(lens) => {
                let descs: Option<Vec<Desc>> = lens
                    .iter()
                    .take(8)
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
                    ring.add_chain(&mem, &d);
                }
            }
            Op::Big(len) => {
                // Starts in memory, may run past its end.
                ring.add_chain(
                    &mem,
                    &[Desc {
                        addr: guest::BUF_START,
                        len,
                        flags: F_WRITE,
                        next: None,
                    }],
                );
            }
            Op::Wild(descs) => {
                let d: Vec<Desc> = descs.iter().take(8).map(guest::wild).collect();
                ring.add_chain(&mem, &d);
            }
            Op::Kick => {
                notify.write(1).expect("notify");
                evloop::pump(&mut em);
                check(&mut ring, &mem);
            }
            Op::Reset(size) => {
                assert!(
                    dev.lock().expect("device lock").reset(),
                    "rng refused reset"
                );
                evloop::pump(&mut em);
                (ring, notify) = activate(&dev, &mem, size);
                evloop::pump(&mut em);
                bump = Bump::default();
            }
        }
    }
    notify.write(1).expect("notify");
    evloop::pump(&mut em);
    check(&mut ring, &mem);
});
