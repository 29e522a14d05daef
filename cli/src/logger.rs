//! The CLI's and the supervisor's logging to stderr (`log_level` and `log_format` of the
//! config), in the one format of every Bulkhead binary (crate `bulkhead-log`):
//! `2026-12-01T18:26:50.123456Z INFO  bulkhead[4242]: message`, or JSON lines.

use bulkhead_log::Format;

/// Installs the logger (once per process; the supervisor is a process of its own, so the
/// process id in each line tells the two apart).
pub fn install(level: log::LevelFilter, format: Format) {
    bulkhead_log::Logger::new(format!("bulkhead[{}]", std::process::id()), level)
        .format(format)
        .init();
}
