//! Logging to stderr in the one format of every Bulkhead binary (crate `bulkhead-log`).
//!
//! Every line carries the time since the VMM process started, so the boot phases (memory,
//! kernel load, devices, vCPUs started) and a slow or failed boot can be read off the log:
//! `[    0.004211] INFO  bulkhead-vmm: memory: 128 MiB in 1 region` (the CLI's boot
//! timings read the `vcpus: N started` line); JSON lines with [`Format::Json`].

pub use bulkhead_log::{since_start, Format};

/// Installs the text logger at `level`. Call once, first thing in `main`.
pub fn init(level: log::LevelFilter) {
    init_with_format(level, Format::Text);
}

/// Installs the logger at `level` in `format` (the VMM's `--log-format`, else
/// `BULKHEAD_LOG_FORMAT`). Call once, first thing in `main`.
pub fn init_with_format(level: log::LevelFilter, format: Format) {
    bulkhead_log::Logger::new("bulkhead-vmm", level)
        .clock(bulkhead_log::Clock::SinceStart)
        .format(format)
        .init();
}
