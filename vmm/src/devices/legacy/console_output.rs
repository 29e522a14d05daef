//! Where the guest console's bytes go, and the watch for a kernel panic in them.
//!
//! The guest kernel runs with `panic=1 reboot=k`: after a panic it resets through the i8042
//! exactly as a `reboot -f` does. The only difference the VMM can see is the console: the
//! kernel prints `Kernel panic - not syncing` first. [`PanicWatch`] scans complete lines for
//! that text so the VMM can end with the crash status instead of the clean one. A guest
//! program can print the same text to fake a panic; that only changes the exit status of its
//! own VM, so it grants nothing.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Longest line kept for matching; longer lines are matched on their first part only.
const MAX_LINE: usize = 512;

/// Shared flag: has the guest kernel announced a panic?
#[derive(Clone, Default, Debug)]
pub struct PanicWatch(Arc<AtomicBool>);

impl PanicWatch {
    /// Whether a panic line has been seen.
    pub fn panicked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The serial console's output: forwards bytes, flushing per line, and watches for a panic.
pub struct ConsoleOutput {
    out: Option<io::LineWriter<Box<dyn Write + Send>>>,
    line: Vec<u8>,
    watch: PanicWatch,
}

impl ConsoleOutput {
    /// Output to `out`, or nowhere when `None` (the panic watch still works).
    pub fn new(out: Option<Box<dyn Write + Send>>) -> Self {
        ConsoleOutput {
            out: out.map(io::LineWriter::new),
            line: Vec::with_capacity(MAX_LINE),
            watch: PanicWatch::default(),
        }
    }

    /// A handle on the panic flag.
    pub fn panic_watch(&self) -> PanicWatch {
        self.watch.clone()
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                if contains(&self.line, PANIC_MARKER) {
                    self.watch.0.store(true, Ordering::Release);
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
        match &mut self.out {
            // A console that cannot be written (closed pipe, full disk) must not stop the
            // guest: the bytes are dropped.
            Some(out) => {
                if out.write_all(buf).is_err() {
                    self.out = None;
                }
                Ok(buf.len())
            }
            None => Ok(buf.len()),
        }
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
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone())));
        let watch = out.panic_watch();
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
    }

    #[test]
    fn very_long_lines_do_not_grow_memory() {
        let mut out = ConsoleOutput::new(None);
        out.write_all(&vec![b'x'; 100_000]).unwrap();
        assert!(out.line.len() <= MAX_LINE);
    }
}
