//! The agent's logging, in the one format of every Bulkhead binary (crate `bulkhead-log`):
//! to the serial console (PID 1) or stderr, `[   12.345678] INFO  bulkhead-agent: message`
//! with CLOCK_MONOTONIC times, which in the guest line up with the kernel's printk times;
//! JSON lines with `bulkhead.log_format=json` / `--log-format json`.

use std::io::Write;

use bulkhead_log::{Clock, Format, Logger, Target};
use log::LevelFilter;

/// Installs the logger process-wide (once): our modules at `level`, libraries only from
/// warn up (ttrpc is chatty at info).
pub fn install(out: Box<dyn Write + Send>, level: LevelFilter, format: Format) {
    Logger::new("bulkhead-agent", level)
        .clock(Clock::Monotonic)
        .libraries(LevelFilter::Warn)
        .format(format)
        .target(Target::Writer(out))
        .init();
}
