//! Timestamped logging to stderr.
//!
//! Every line carries the time since the VMM process started, so the boot phases (memory,
//! kernel load, devices, vCPUs started) and a slow or failed boot can be read off the log:
//! `[    0.004211] bulkhead-vmm INFO  memory: 128 MiB in 1 region`.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = since_start();
        // One write per line so lines from several threads do not interleave.
        let line = format!(
            "[{:5}.{:06}] bulkhead-vmm {:<5} {}\n",
            t.as_secs(),
            t.subsec_micros(),
            record.level(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Time since [`init`] was called (or since the first call of this function).
pub fn since_start() -> std::time::Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// Install the logger at `level`. Call once, first thing in `main`.
pub fn init(level: log::LevelFilter) {
    START.get_or_init(Instant::now);
    static LOGGER: StderrLogger = StderrLogger;
    // A second call keeps the first logger; only the level changes.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
