//! Counters for the vsock device and a limiter for log lines the guest can trigger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the vsock device has done, and what it refused.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets taken from the guest's tx queue and accepted.
    pub tx_packets: Counter,
    /// Payload bytes received from the guest.
    pub tx_bytes: Counter,
    /// Packets put on the guest's rx queue.
    pub rx_packets: Counter,
    /// Payload bytes sent to the guest.
    pub rx_bytes: Counter,
    /// Tx chains that were not a readable packet (short header, bad length, bad address).
    pub tx_malformed: Counter,
    /// Well-formed packets dropped (wrong CID or type, unknown op).
    pub tx_dropped: Counter,
    /// Rx chains unusable for a packet (too short, bad address).
    pub rx_malformed: Counter,
    /// Resets sent to the guest.
    pub rst_sent: Counter,
    /// Connections established (both directions).
    pub conns_opened: Counter,
    /// Connections removed.
    pub conns_closed: Counter,
    /// Host clients refused (bad handshake, too many connections).
    pub host_refused: Counter,
}

/// Allows at most `burst` events per second; used to keep guest-triggered logs bounded.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Instant,
    count: u32,
    burst: u32,
}

impl LogLimiter {
    pub(crate) fn new(burst: u32) -> Self {
        LogLimiter {
            window: Instant::now(),
            count: 0,
            burst,
        }
    }

    /// Whether one more line may be logged now.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_a_burst() {
        let mut l = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| l.allow()).count();
        assert_eq!(allowed, 3);
    }
}
