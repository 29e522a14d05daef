//! Transmit: frames from the guest's transmit queue to the tap.
//!
//! Each chain must be device-readable buffers inside guest memory, at most
//! [`MAX_BUFFER_LEN`] bytes, holding a virtio-net header and at least one byte of frame. It is
//! gathered into one host buffer and written to the tap with one `write(2)` (the tap takes one
//! frame per write). Malformed chains and frames the tap refuses (EINVAL for a bad GSO header,
//! say) are returned with length 0 and counted; the queue goes on.
//!
//! EAGAIN: the chain is put back (the avail position steps back one), `tx_blocked` is set and
//! the event loop watches the tap's EPOLLOUT; when the tap is writable, or on the next
//! transmit kick, the queue is processed again from that chain. A tap that is gone takes no
//! more frames: chains are returned with length 0 (counted as dropped) so the guest's
//! transmit path does not stall.

use virtio_queue::QueueOwnedT;
use vm_memory::Bytes;

use super::chain::{check_chain, ChainError, Direction};
use super::device::{Net, MAX_BUFFER_LEN, TX_INDEX};
use super::rx::publish_used;
use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::rate_limited::warn_limited;

/// Most chains handled per call (the queue size): the loop comes back if the guest posts more.
const TX_BUDGET: usize = 256;

impl Net {
    /// Send every available transmit chain (up to [`TX_BUDGET`]) to the tap.
    pub(super) fn process_tx(&mut self) {
        if self.vhost.is_some() {
            // vhost-net owns the rings.
            return;
        }
        let mut tap_gone = self.tap_gone;
        let mut lost = None;
        let Some(active) = &mut self.state else {
            return;
        };
        self.tx_blocked = false;
        let mut used_any = false;
        for _ in 0..TX_BUDGET {
            let chain = match active.tx.iter(&active.mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    self.metrics.queue_errors.inc();
                    warn_limited!(
                        self.tx_log,
                        "virtio-net: cannot read the tx avail ring: {e}"
                    );
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let checked = check_chain(&active.mem, chain, Direction::Read, MAX_BUFFER_LEN)
                .and_then(|c| {
                    if c.len <= VNET_HDR_LEN {
                        Err(ChainError::NoFrame(c.len))
                    } else {
                        Ok(c)
                    }
                });
            let chain = match checked {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.malformed_chains.inc();
                    self.metrics.tx_dropped.inc();
                    warn_limited!(self.tx_log, "virtio-net: tx chain {head} dropped: {e}");
                    if !return_chain(active, head, &self.metrics, &mut self.tx_log) {
                        break;
                    }
                    used_any = true;
                    continue;
                }
            };
            if tap_gone {
                self.metrics.tx_dropped.inc();
                if !return_chain(active, head, &self.metrics, &mut self.tx_log) {
                    break;
                }
                used_any = true;
                continue;
            }
            self.tx_buf.clear();
            let mut gathered = true;
            for &(addr, len) in &chain.buffers {
                let start = self.tx_buf.len();
                self.tx_buf.resize(start + len as usize, 0);
                let dst = self.tx_buf.get_mut(start..).unwrap_or_default();
                if active.mem.read_slice(dst, addr).is_err() {
                    gathered = false;
                    break;
                }
            }
            if !gathered {
                self.metrics.malformed_chains.inc();
                self.metrics.tx_dropped.inc();
                if !return_chain(active, head, &self.metrics, &mut self.tx_log) {
                    break;
                }
                used_any = true;
                continue;
            }
            match self.tap.write_frame(&self.tx_buf) {
                Ok(_) => {
                    self.metrics.tx_frames.inc();
                    self.metrics.tx_bytes.add(self.tx_buf.len() as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Keep the chain: it is the next one popped when the tap takes frames.
                    self.metrics.tx_eagain.inc();
                    active.tx.go_to_previous_position();
                    self.tx_blocked = true;
                    break;
                }
                Err(e) if is_tap_gone(&e) => {
                    // Dropped like every chain after it; the device learns after the loop.
                    self.metrics.tx_dropped.inc();
                    tap_gone = true;
                    lost = Some(e);
                }
                Err(e) => {
                    self.metrics.tx_dropped.inc();
                    self.metrics.tap_errors.inc();
                    warn_limited!(
                        self.tx_log,
                        "virtio-net {}: the tap refused a {}-byte frame: {e}",
                        self.tap.name(),
                        self.tx_buf.len()
                    );
                }
            }
            if !return_chain(active, head, &self.metrics, &mut self.tx_log) {
                break;
            }
            used_any = true;
        }
        if let Some(e) = lost {
            self.tap_failed("write", &e);
        }
        if used_any {
            self.notify_queue(TX_INDEX);
        }
    }
}

/// Errors after which the tap takes no frame ever again.
pub(super) fn is_tap_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EBADFD | libc::EBADF | libc::ENODEV | libc::ENXIO | libc::EPIPE)
    )
}

/// Return a transmit chain (length 0: the device writes nothing). False if the used ring is
/// broken (processing stops).
fn return_chain(
    active: &mut super::device::ActiveState,
    head: u16,
    metrics: &super::metrics::NetMetrics,
    log: &mut crate::devices::virtio::rate_limited::LogLimiter,
) -> bool {
    match publish_used(&mut active.tx, &active.mem, &[(head, 0)]) {
        Ok(()) => true,
        Err(e) => {
            metrics.used_ring_fails.inc();
            warn_limited!(
                log,
                "virtio-net: cannot add tx chain {head} to the used ring: {e}"
            );
            false
        }
    }
}
