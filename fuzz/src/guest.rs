//! The hostile guest driver: guest memory, split rings laid out in it, and descriptor chains
//! built from fuzz input, with the bookkeeping the device invariants are checked against.
//!
//! Memory layout (2 MiB): queue `i`'s descriptor table, avail ring and used ring at
//! `i * 0x4000 + {0, 0x1000, 0x2000}`; buffers the checks rely on come from a bump allocator
//! in [`BUF_START`]..[`SCRATCH_START`]; descriptors the fuzzer places freely point into the
//! scratch zone or outside memory, so they can never alias a buffer whose content is checked.

use std::collections::HashMap;

use arbitrary::Arbitrary;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size.
pub const MEM_SIZE: u64 = 2 << 20;
/// First byte of the bump-allocated buffers.
pub const BUF_START: u64 = 0x1_0000;
/// First byte of the scratch zone (free-form descriptors).
pub const SCRATCH_START: u64 = 0x18_0000;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// Fresh zeroed guest memory.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("guest memory")
}

/// Where a free-form descriptor points.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AddrSpec {
    /// Inside the scratch zone.
    Scratch(u32),
    /// Anywhere (mostly outside guest memory).
    Raw(u64),
    /// Straddling the end of guest memory.
    EndOfMemory(u8),
}

impl AddrSpec {
    pub fn resolve(self) -> u64 {
        match self {
            AddrSpec::Scratch(o) => SCRATCH_START + u64::from(o) % (MEM_SIZE - SCRATCH_START),
            AddrSpec::Raw(a) => a,
            AddrSpec::EndOfMemory(b) => MEM_SIZE - 1 - u64::from(b),
        }
    }
}

/// A free-form descriptor: whatever a hostile driver can write into the table.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct WildDesc {
    pub addr: AddrSpec,
    pub len: u32,
    /// Raw flags; NEXT is decided by the chain layout unless `next` is set.
    pub flags: u16,
    /// Explicit `next` index (a loop, a dangling or out-of-range link).
    pub next: Option<u16>,
}

/// One descriptor as laid out in the table.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: Option<u16>,
}

/// What the driver knows about a chain it published.
#[derive(Debug, Clone)]
pub struct Chain {
    pub descs: Vec<Desc>,
    indices: Vec<u16>,
    /// Every descriptor is inside guest memory and links normally: the device sees exactly
    /// `descs`.
    pub well_formed: bool,
    /// Bytes the device may write (sum of the write-only descriptors).
    pub writable: u64,
}

/// One split queue as its driver sees it.
pub struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    pub size: u16,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
    outstanding: HashMap<u16, Chain>,
}

impl Ring {
    /// Lay out queue number `slot` (of size `size`, a power of two) and return the device's
    /// `Queue` for it, as the transport would hand it over.
    pub fn new(mem: &GuestMemoryMmap, slot: u64, max: u16, size: u16) -> (Ring, Queue) {
        let base = slot * 0x4000;
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        for a in [avail, used] {
            mem.write_obj(0u32, GuestAddress(a))
                .expect("ring in memory");
        }
        let mut queue = Queue::new(max).expect("queue max size");
        queue.set_size(size);
        queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "fuzz ring layout invalid");
        let ring = Ring {
            desc,
            avail,
            used,
            size,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
            outstanding: HashMap::new(),
        };
        (ring, queue)
    }

    /// Chains published and not returned.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Free descriptor slots.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Publish a chain (descriptors in free slots, linked in order unless a descriptor names
    /// its own `next`). Returns the head, or None when the ring has no room (the op is
    /// skipped, as a driver would wait).
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> Option<u16> {
        if descs.is_empty() || descs.len() > self.free.len() {
            return None;
        }
        let idx: Vec<u16> = (0..descs.len()).filter_map(|_| self.free.pop()).collect();
        let mut well_formed = true;
        let mut writable = 0u64;
        for (i, d) in descs.iter().enumerate() {
            let mut flags = d.flags & !F_NEXT;
            let next = match d.next {
                Some(n) => {
                    well_formed = false;
                    flags |= F_NEXT;
                    n
                }
                None if i + 1 < descs.len() => {
                    flags |= F_NEXT;
                    idx[i + 1]
                }
                None => 0,
            };
            if flags & F_INDIRECT != 0 || u64::from(d.len) == 0 {
                well_formed = false;
            }
            if d.addr
                .checked_add(u64::from(d.len))
                .is_none_or(|end| end > MEM_SIZE)
            {
                well_formed = false;
            }
            if flags & F_WRITE != 0 {
                writable += u64::from(d.len);
            }
            let at = self.desc + 16 * u64::from(idx[i]);
            mem.write_obj(d.addr, GuestAddress(at)).expect("desc table");
            mem.write_obj(d.len, GuestAddress(at + 8))
                .expect("desc table");
            mem.write_obj(flags, GuestAddress(at + 12))
                .expect("desc table");
            mem.write_obj(next, GuestAddress(at + 14))
                .expect("desc table");
        }
        let head = idx[0];
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail ring");
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail ring");
        self.outstanding.insert(
            head,
            Chain {
                descs: descs.to_vec(),
                indices: idx,
                well_formed,
                writable,
            },
        );
        Some(head)
    }

    /// Used entries since the last call, checked against what was published: the device
    /// returns only heads it was given, each once, with a length within the chain's
    /// writable bytes (0 for a chain it must refuse is allowed too).
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(Chain, u32)> {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used ring");
        let new = idx.wrapping_sub(self.used_seen);
        let published = self.outstanding.len();
        assert!(
            usize::from(new) <= published,
            "device used {new} entries but only {published} chains were outstanding"
        );
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used ring");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used ring");
            self.used_seen = self.used_seen.wrapping_add(1);
            let head = u16::try_from(id).unwrap_or(u16::MAX);
            let Some(chain) = self.outstanding.remove(&head) else {
                panic!("device returned head {id} which is not outstanding");
            };
            if chain.well_formed {
                assert!(
                    u64::from(len) <= chain.writable,
                    "used length {len} exceeds the chain's {} writable bytes",
                    chain.writable
                );
            }
            self.free.extend(chain.indices.iter().copied());
            out.push((chain, len));
        }
        out
    }
}

/// Bump allocator for buffers whose content the checks rely on.
pub struct Bump {
    next: u64,
}

impl Default for Bump {
    fn default() -> Self {
        Bump { next: BUF_START }
    }
}

impl Bump {
    /// `len` bytes (at least 1), or None when the zone is used up.
    pub fn alloc(&mut self, len: u32) -> Option<u64> {
        let a = self.next;
        let end = a.checked_add(u64::from(len.max(1)).next_multiple_of(16))?;
        if end > SCRATCH_START {
            return None;
        }
        self.next = end;
        Some(a)
    }
}

/// A free-form descriptor as laid out.
pub fn wild(d: &WildDesc) -> Desc {
    Desc {
        addr: d.addr.resolve(),
        len: d.len,
        flags: d.flags,
        next: d.next,
    }
}

/// Queue size from a fuzz byte: a power of two up to `max`.
pub fn queue_size(sel: u8, max: u16) -> u16 {
    let size = 1u16 << (sel % 9);
    size.min(max)
}
