//! A small per-source limiter for log lines a guest can trigger.
//!
//! A guest that hammers a bad register or posts malformed descriptors in a loop must not be
//! able to fill the host's disk with log lines. Each device keeps one [`LogLimiter`] per kind
//! of complaint and logs only when [`LogLimiter::check`] says so; what was suppressed is
//! reported with the next line that gets through.

use std::time::{Duration, Instant};

/// Lines allowed per window.
const BURST: u32 = 10;
/// Length of a window.
const WINDOW: Duration = Duration::from_secs(5);

/// Allows [`BURST`] log lines per [`WINDOW`], counting the rest.
#[derive(Debug, Default)]
pub struct LogLimiter {
    window_start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter with an empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a line may be logged now. `Some(n)`: log it, and mention that `n` earlier lines
    /// were suppressed (usually 0). `None`: drop it (it is counted).
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Option<u64> {
        let expired = match self.window_start {
            Some(start) => now.saturating_duration_since(start) >= WINDOW,
            None => true,
        };
        if expired {
            self.window_start = Some(now);
            self.emitted = 0;
        }
        if self.emitted < BURST {
            self.emitted += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// `warn!` through a [`LogLimiter`]: `warn_limited!(self.limiter, "bad thing {}", x)`.
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            if suppressed > 0 {
                log::warn!("{} ({} similar messages suppressed)", format_args!($($arg)+), suppressed);
            } else {
                log::warn!($($arg)+);
            }
        }
    };
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_suppresses_until_the_window_ends() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.check_at(t0), Some(0));
        }
        assert_eq!(l.check_at(t0), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), None);
        // A new window reports how many lines were dropped, once.
        assert_eq!(l.check_at(t0 + WINDOW), Some(2));
        assert_eq!(l.check_at(t0 + WINDOW), Some(0));
    }
}
