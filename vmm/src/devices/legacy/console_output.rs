//! Where the guest console's bytes go, and the watch for how the guest kernel ends.
//!
//! The guest kernel runs with `panic=1 reboot=k`: after a panic it resets through the i8042
//! exactly as a `reboot -f` does. The only difference the VMM can see is the console: the
//! kernel prints `Kernel panic - not syncing` first. [`PanicWatch`] scans complete lines for
//! that text so the VMM can end with the crash status instead of the clean one. A guest
//! program can print the same text to fake a panic; that only changes the exit status of its
//! own VM, so it grants nothing.
//!
//! Without ACPI, `poweroff -f` and `halt -f` do not reach the VMM at all: the kernel prints
//! `reboot: Power down` (or `reboot: System halted`) and halts its CPUs, which the in-kernel
//! irqchip keeps inside KVM. The watch turns those lines into a stop event, so a power-off
//! ends the VMM like a reboot does instead of leaving it running forever.
//!
//! The output can be capped (`--serial-max-bytes`): a guest flooding its console must not
//! fill the host's disk (or RAM, under `/run`). Past the cap one marker line says so and the
//! rest is dropped and counted ([`ConsoleMetrics`]); the watch still sees every byte.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::metrics::device_metrics;

device_metrics! {
    /// What the serial console wrote and dropped.
    pub struct ConsoleMetrics {
        /// Guest bytes written to the console output.
        pub written_bytes,
        /// Guest bytes not written: past `--serial-max-bytes`, after the output failed, or
        /// with `--serial off`.
        pub dropped_bytes,
    }
}

/// The line written once when the cap is reached.
pub const CAPPED_MARKER: &[u8] =
    b"\n[bulkhead-vmm: console output capped at --serial-max-bytes; the rest is dropped]\n";

const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
const HALT_MARKERS: [&[u8]; 2] = [b"reboot: Power down", b"reboot: System halted"];
/// Longest line kept for matching; longer lines are matched on their first part only.
const MAX_LINE: usize = 512;

/// What the console told about the guest kernel's end: a panic flag and a halt event.
#[derive(Clone, Debug)]
pub struct ConsoleWatch {
    panicked: Arc<AtomicBool>,
    halt_evt: Arc<EventFd>,
}

impl ConsoleWatch {
    fn new() -> io::Result<Self> {
        Ok(ConsoleWatch {
            panicked: Arc::default(),
            halt_evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Whether a panic line has been seen.
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::Acquire)
    }

    /// Signalled when the kernel announces it powered off or halted.
    pub fn halt_evt(&self) -> &EventFd {
        &self.halt_evt
    }
}

/// The serial console's output: forwards bytes, flushing per line, and watches for a panic.
pub struct ConsoleOutput {
    out: Option<io::LineWriter<Box<dyn Write + Send>>>,
    line: Vec<u8>,
    watch: ConsoleWatch,
    /// Guest bytes still allowed through; `None`: no limit.
    left: Option<u64>,
    metrics: Arc<ConsoleMetrics>,
}

impl ConsoleOutput {
    /// Output to `out`, or nowhere when `None` (the watch still works).
    pub fn new(out: Option<Box<dyn Write + Send>>) -> io::Result<Self> {
        Ok(ConsoleOutput {
            out: out.map(io::LineWriter::new),
            line: Vec::with_capacity(MAX_LINE),
            watch: ConsoleWatch::new()?,
            left: None,
            metrics: Arc::default(),
        })
    }

    /// Write at most `max_bytes` guest bytes (0: no limit), then [`CAPPED_MARKER`] once, then
    /// nothing.
    pub fn with_limit(mut self, max_bytes: u64) -> Self {
        self.left = (max_bytes != 0).then_some(max_bytes);
        self
    }

    /// The console's counters.
    pub fn metrics(&self) -> Arc<ConsoleMetrics> {
        self.metrics.clone()
    }

    /// Write what the cap lets through; count the rest as dropped.
    fn forward(&mut self, buf: &[u8]) {
        let Some(out) = &mut self.out else {
            self.metrics.dropped_bytes.add(buf.len() as u64);
            return;
        };
        let take = match self.left {
            None => buf.len(),
            Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(buf.len()),
        };
        let (pass, drop) = buf.split_at(take);
        // A console that cannot be written (closed pipe, full disk) must not stop the
        // guest: the bytes are dropped.
        let mut ok = pass.is_empty() || out.write_all(pass).is_ok();
        if let Some(left) = &mut self.left {
            *left -= take as u64;
            if !drop.is_empty() && ok {
                ok = out.write_all(CAPPED_MARKER).is_ok() && out.flush().is_ok();
                // Nothing more is written: the marker is the last line.
                self.out = None;
            }
        }
        if ok {
            self.metrics.written_bytes.add(take as u64);
            self.metrics.dropped_bytes.add(drop.len() as u64);
        } else {
            self.out = None;
            self.metrics.dropped_bytes.add(buf.len() as u64);
        }
    }

    /// A handle on the panic flag and halt event.
    pub fn watch(&self) -> ConsoleWatch {
        self.watch.clone()
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                if contains(&self.line, PANIC_MARKER) {
                    self.watch.panicked.store(true, Ordering::Release);
                } else if HALT_MARKERS.iter().any(|m| contains(&self.line, m)) {
                    // Only the event loop reads this; a failed write means it is already set.
                    let _ = self.watch.halt_evt.write(1);
                }
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        self.forward(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn forwards_lines_and_spots_a_panic_split_across_writes() {
        let sink = Sink::default();
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone()))).unwrap();
        let watch = out.watch();
        out.write_all(b"[    1.0] reboot: Restarting system\n")
            .unwrap();
        assert!(!watch.panicked());
        out.write_all(b"[    2.0] Kernel pan").unwrap();
        out.write_all(b"ic - not syncing: sysrq triggered crash")
            .unwrap();
        assert!(!watch.panicked(), "only complete lines count");
        out.write_all(b"\n").unwrap();
        assert!(watch.panicked());
        out.flush().unwrap();
        assert!(sink.0.lock().unwrap().ends_with(b"crash\n"));
        assert!(watch.halt_evt().read().is_err(), "a panic is not a halt");
    }

    #[test]
    fn power_down_line_signals_the_halt_event() {
        let mut out = ConsoleOutput::new(None).unwrap();
        let watch = out.watch();
        out.write_all(b"[    3.1] reboot: Power down\n").unwrap();
        assert_eq!(watch.halt_evt().read().unwrap(), 1);
        assert!(!watch.panicked());
    }

    #[test]
    fn output_past_the_cap_is_dropped_after_one_marker_line() {
        let sink = Sink::default();
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone())))
            .unwrap()
            .with_limit(10);
        let metrics = out.metrics();
        let watch = out.watch();
        out.write_all(b"12345").unwrap();
        out.write_all(b"67890abc").unwrap();
        for _ in 0..1000 {
            out.write_all(b"flood flood flood\n").unwrap();
        }
        // The watch still reads past the cap.
        out.write_all(b"Kernel panic - not syncing\n").unwrap();
        out.flush().unwrap();
        let mut want = b"1234567890".to_vec();
        want.extend_from_slice(CAPPED_MARKER);
        assert_eq!(*sink.0.lock().unwrap(), want);
        assert_eq!(metrics.written_bytes.get(), 10);
        assert_eq!(metrics.dropped_bytes.get(), 3 + 18 * 1000 + 27);
        assert!(watch.panicked());

        // Exactly at the cap: no marker until a byte is dropped.
        let sink = Sink::default();
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone())))
            .unwrap()
            .with_limit(3);
        out.write_all(b"abc").unwrap();
        out.flush().unwrap();
        assert_eq!(*sink.0.lock().unwrap(), b"abc");
        out.write_all(b"d").unwrap();
        assert!(sink.0.lock().unwrap().ends_with(CAPPED_MARKER));

        // 0 is no limit.
        let sink = Sink::default();
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone())))
            .unwrap()
            .with_limit(0);
        out.write_all(&[b'x'; 100_000]).unwrap();
        out.flush().unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), 100_000);
        assert_eq!(out.metrics().dropped_bytes.get(), 0);
    }

    #[test]
    fn very_long_lines_do_not_grow_memory() {
        let mut out = ConsoleOutput::new(None).unwrap();
        out.write_all(&vec![b'x'; 100_000]).unwrap();
        assert!(out.line.len() <= MAX_LINE);
    }
}
