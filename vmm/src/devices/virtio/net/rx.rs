//! Receive: frames from the tap into the guest's receive queue.
//!
//! A frame is read (with its virtio-net header) into one host buffer of
//! [`MAX_BUFFER_LEN`](super::MAX_BUFFER_LEN) bytes, then copied into receive chains taken
//! from the avail ring. With `VIRTIO_NET_F_MRG_RXBUF` a frame may span several chains and
//! `num_buffers` in its header says how many; without it one chain must hold the whole frame,
//! else the frame is dropped and the chain returned empty. The used entries of one frame are
//! published with a single used-index update, so a driver polling the ring never sees half a
//! frame.
//!
//! Back-pressure: when the guest has no receive buffers the frame stays in `rx.pending` and
//! the tap is no longer read (the event loop stops watching its EPOLLIN); the guest's next
//! receive-queue kick delivers the pending frame and reading resumes. The tap's own queue holds
//! (and eventually drops) what arrives meanwhile, as for a slow NIC.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::chain::{check_chain, Chain, Direction};
use super::device::{Net, RX_INDEX};
use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::rate_limited::warn_limited;

/// Most frames moved per call, so one busy tap cannot starve the other event sources (the
/// tap stays readable and the loop comes back).
pub(super) const RX_BUDGET: usize = 256;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What became of one frame.
enum Delivery {
    /// In the guest's buffers.
    Delivered,
    /// Dropped (counted).
    Dropped,
    /// The guest has no (or not enough) buffers: the frame waits.
    NoBuffers,
    /// The avail ring cannot be read or the used ring written: the frame waits for a kick.
    QueueBroken,
}

/// What a tap read gave.
enum TapRead {
    Frame(usize),
    /// A frame too short to carry a header, dropped.
    Runt,
    /// Nothing to read now, or the tap is gone.
    Stop,
}

impl Net {
    /// Move frames from the tap to the guest until the tap is drained, the guest runs out of
    /// buffers (the frame then waits in `rx.pending`) or [`RX_BUDGET`] frames were moved.
    /// Called from the event loop on tap EPOLLIN and on receive-queue kicks.
    pub(super) fn process_rx(&mut self) {
        if self.state.is_none() || self.tap_gone || self.vhost.is_some() {
            return;
        }
        let mut used_any = false;
        for _ in 0..RX_BUDGET {
            let len = match self.rx.pending {
                Some(len) => len,
                None => match self.read_tap() {
                    TapRead::Frame(len) => len,
                    TapRead::Runt => continue,
                    TapRead::Stop => break,
                },
            };
            match self.deliver(len, &mut used_any) {
                Delivery::Delivered | Delivery::Dropped => self.rx.pending = None,
                Delivery::NoBuffers => {
                    if self.rx.pending.is_none() {
                        self.metrics.rx_no_buffers.inc();
                    }
                    self.rx.pending = Some(len);
                    break;
                }
                Delivery::QueueBroken => {
                    self.rx.pending = Some(len);
                    break;
                }
            }
        }
        if used_any {
            self.notify_queue(RX_INDEX);
        }
    }

    fn read_tap(&mut self) -> TapRead {
        loop {
            match self.tap.read_frame(&mut self.rx.buf) {
                Ok(n) if n >= VNET_HDR_LEN => return TapRead::Frame(n),
                Ok(n) => {
                    self.metrics.rx_dropped.inc();
                    warn_limited!(
                        self.rx_log,
                        "virtio-net {}: dropped a {n}-byte frame from the tap (no header)",
                        self.tap.name()
                    );
                    return TapRead::Runt;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return TapRead::Stop,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EBADFD (interface deleted), EIO, ENODEV...: a tap that fails a read once
                    // would fail (and stay readable) forever; reading it again would spin.
                    self.tap_failed("read", &e);
                    return TapRead::Stop;
                }
            }
        }
    }

    /// Take one receive chain from the avail ring. Malformed chains are answered with length
    /// 0 on the way (and set `used_any`). `Ok(None)`: the ring is empty.
    fn pop_rx_chain(&mut self, used_any: &mut bool) -> Result<Option<Chain>, ()> {
        let Some(active) = &mut self.state else {
            return Err(());
        };
        loop {
            let chain = match active.rx.iter(&active.mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    self.metrics.queue_errors.inc();
                    warn_limited!(
                        self.rx_log,
                        "virtio-net: cannot read the rx avail ring: {e}"
                    );
                    return Err(());
                }
            };
            let Some(chain) = chain else {
                return Ok(None);
            };
            let head = chain.head_index();
            match check_chain(&active.mem, chain, Direction::Write, usize::MAX) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    self.metrics.malformed_chains.inc();
                    warn_limited!(
                        self.rx_log,
                        "virtio-net: rx chain {head} answered empty: {e}"
                    );
                    if let Err(e) = active.rx.add_used(&active.mem, head, 0) {
                        self.metrics.used_ring_fails.inc();
                        warn_limited!(self.rx_log, "virtio-net: cannot return rx chain: {e}");
                        return Err(());
                    }
                    *used_any = true;
                }
            }
        }
    }

    /// Put the frame of `len` bytes in `rx.buf` into the guest's buffers.
    fn deliver(&mut self, len: usize, used_any: &mut bool) -> Delivery {
        let mergeable = self.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let ring_size = self.state.as_ref().map_or(0, |a| usize::from(a.rx.size()));
        // Chains needed: the first that holds the whole frame, or (mergeable) the shortest
        // prefix of chains that does.
        let needed = loop {
            let mut have = 0usize;
            let fits = self.rx.chains.iter().position(|c| {
                have = have.saturating_add(c.len);
                have >= len || !mergeable
            });
            if let Some(i) = fits {
                break i + 1;
            }
            if mergeable && self.rx.chains.len() >= ring_size {
                // Every buffer the guest can post is here and the frame still does not fit.
                self.metrics.rx_dropped.inc();
                warn_limited!(
                    self.rx_log,
                    "virtio-net {}: dropped a {len}-byte frame, larger than the whole rx ring",
                    self.tap.name()
                );
                return Delivery::Dropped;
            }
            match self.pop_rx_chain(used_any) {
                Ok(Some(chain)) => self.rx.chains.push(chain),
                Ok(None) => return Delivery::NoBuffers,
                Err(()) => return Delivery::QueueBroken,
            }
        };
        let chains: Vec<Chain> = self.rx.chains.drain(..needed).collect();
        let Some(active) = &mut self.state else {
            return Delivery::QueueBroken;
        };
        let fits = chains
            .iter()
            .map(|c| c.len)
            .fold(0usize, usize::saturating_add)
            >= len;
        let frame = self.rx.buf.get_mut(..len).unwrap_or_default();
        let mut used = Vec::with_capacity(chains.len());
        let outcome = if fits {
            // `needed` is at most the ring size (256), so it fits the u16 field.
            let num_buffers = u16::try_from(needed).unwrap_or(u16::MAX);
            if let Some(field) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
                field.copy_from_slice(&num_buffers.to_le_bytes());
            }
            let mut rest: &[u8] = frame;
            for chain in &chains {
                let (now, later) = rest.split_at(rest.len().min(chain.len));
                let written = write_chain(&active.mem, chain, now);
                if written < now.len() {
                    self.metrics.malformed_chains.inc();
                }
                used.push((chain.head, u32::try_from(written).unwrap_or(u32::MAX)));
                rest = later;
            }
            self.metrics.rx_frames.inc();
            self.metrics.rx_bytes.add(len as u64);
            Delivery::Delivered
        } else {
            // Only without MRG_RXBUF: the guest's chain is too short for this frame.
            self.metrics.rx_dropped.inc();
            warn_limited!(
                self.rx_log,
                "virtio-net: dropped a {len}-byte frame, rx chain {} holds {} bytes",
                chains.first().map_or(0, |c| c.head),
                chains.first().map_or(0, |c| c.len)
            );
            used.extend(chains.iter().map(|c| (c.head, 0)));
            Delivery::Dropped
        };
        match publish_used(&mut active.rx, &active.mem, &used) {
            Ok(()) => {
                *used_any = true;
                outcome
            }
            Err(e) => {
                self.metrics.used_ring_fails.inc();
                warn_limited!(
                    self.rx_log,
                    "virtio-net: cannot add to the rx used ring: {e}"
                );
                // The guest's ring is broken; the frame is lost with it.
                self.metrics.rx_dropped.inc();
                Delivery::Dropped
            }
        }
    }
}

/// Copy `data` into the chain's buffers; returns the bytes written (all of them unless guest
/// memory changed under us, which the check before rules out).
fn write_chain(mem: &GuestMemoryMmap, chain: &Chain, data: &[u8]) -> usize {
    let mut done = 0;
    for &(addr, len) in &chain.buffers {
        let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) else {
            break;
        };
        let n = rest.len().min(len as usize);
        match rest.get(..n).map(|part| mem.write_slice(part, addr)) {
            Some(Ok(())) => done += n,
            _ => break,
        }
    }
    done
}

/// Add `entries` (head, length) to the used ring and publish them with one used-index update:
/// all but the last are written in place first, then `add_used` writes the last entry and
/// stores the index (with release ordering, so the earlier entries are visible before it).
pub(super) fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let Some((&(last_head, last_len), first)) = entries.split_last() else {
        return Ok(());
    };
    let size = queue.size();
    if size == 0 {
        return Err(virtio_queue::Error::InvalidSize);
    }
    let next = queue.next_used();
    for (i, &(head, len)) in first.iter().enumerate() {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = u64::from(next.wrapping_add(i as u16) % size);
        // The used ring: flags and idx (4 bytes), then 8-byte (id, len) elements.
        let id_addr = queue
            .used_ring()
            .checked_add(4 + slot * 8)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let len_addr = id_addr
            .checked_add(4)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        mem.write_obj(u32::from(head).to_le(), GuestAddress(id_addr))
            .and_then(|()| mem.write_obj(len.to_le(), GuestAddress(len_addr)))
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    std::sync::atomic::fence(Ordering::Release);
    queue.set_next_used(next.wrapping_add(first.len() as u16));
    queue.add_used(mem, last_head, last_len)
}
