//! A `log` backend writing one timestamped line per record to the serial
//! console (PID 1) or stderr: `[   12.345678] INFO  message`. The timestamp
//! is CLOCK_MONOTONIC, which in the guest lines up with the kernel's printk
//! times.

use std::io::Write;
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record};

pub struct Logger {
    out: Mutex<Box<dyn Write + Send>>,
    level: LevelFilter,
}

impl Logger {
    pub fn new(out: Box<dyn Write + Send>, level: LevelFilter) -> Self {
        Logger {
            out: Mutex::new(out),
            level,
        }
    }

    /// Installs the logger process-wide (once).
    pub fn install(self) {
        let level = self.level;
        if log::set_boxed_logger(Box::new(self)).is_ok() {
            log::set_max_level(level);
        }
    }
}

fn monotonic() -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec, ts.tv_nsec / 1000)
}

pub fn format_line(secs: i64, micros: i64, record: &Record<'_>) -> String {
    format!(
        "[{secs:>5}.{micros:06}] {:<5} bulkhead-agent: {}\n",
        record.level(),
        record.args()
    )
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        // Our own modules at the chosen level; libraries only from warn up
        // (ttrpc is chatty at info).
        let ours = record.target().starts_with("bulkhead");
        if !self.enabled(record.metadata()) || (!ours && record.level() > log::Level::Warn) {
            return;
        }
        let (s, us) = monotonic();
        let line = format_line(s, us, record);
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let line = format_line(
            12,
            3456,
            &Record::builder()
                .args(format_args!("hello"))
                .level(log::Level::Info)
                .build(),
        );
        assert_eq!(line, "[   12.003456] INFO  bulkhead-agent: hello\n");
    }
}
