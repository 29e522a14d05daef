//! Checking a descriptor chain the guest posted before any byte moves: every buffer in the
//! expected direction and inside guest memory, the chain complete (no loop, no dangling
//! `next`), and its total length bounded.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Why a chain is answered with length 0.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ChainError {
    #[error("descriptor {0} has the wrong direction (device-{1} buffers expected)")]
    Direction(usize, &'static str),
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("descriptor chain is cut short (loop, or next index past the queue)")]
    Truncated,
    #[error("descriptor chain holds more than {0} bytes")]
    TooLong(usize),
    #[error("descriptor chain of {0} bytes holds no frame after the virtio-net header")]
    NoFrame(usize),
}

/// Which way the buffers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// The device writes them (receive queue).
    Write,
    /// The device reads them (transmit queue).
    Read,
}

/// The buffers of one checked chain.
#[derive(Debug, Clone)]
pub(super) struct Chain {
    pub(super) head: u16,
    pub(super) buffers: Vec<(GuestAddress, u32)>,
    /// Sum of the buffer lengths, at most the `max_len` it was checked with.
    pub(super) len: usize,
}

/// Check `chain`: all buffers `dir`, inside guest memory, at most `max_len` bytes in total.
pub(super) fn check_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    dir: Direction,
    max_len: usize,
) -> Result<Chain, ChainError> {
    let head = chain.head_index();
    let mut buffers = Vec::new();
    let mut len = 0usize;
    let mut cut_short = false;
    // The iterator stops after queue-size descriptors (loops) or at a `next` past the table;
    // either way the last descriptor it yields still says "next".
    for (i, desc) in chain.enumerate() {
        let (want_write, perm, name) = match dir {
            Direction::Write => (true, Permissions::Write, "writable"),
            Direction::Read => (false, Permissions::Read, "readable"),
        };
        if desc.is_write_only() != want_write {
            return Err(ChainError::Direction(i, name));
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, perm) {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        len = len.saturating_add(desc.len() as usize);
        if len > max_len {
            return Err(ChainError::TooLong(max_len));
        }
        cut_short = desc.has_next();
        if desc.len() > 0 {
            buffers.push((desc.addr(), desc.len()));
        }
    }
    if cut_short {
        return Err(ChainError::Truncated);
    }
    Ok(Chain { head, buffers, len })
}
