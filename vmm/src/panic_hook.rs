//! The VMM's panic hook: one line naming the thread, the message and the place, written with
//! a single `write` to stderr. No backtrace, whatever `RUST_BACKTRACE` says: taking one reads
//! the binary and `/proc`, which no seccomp list allows, so under the filters the default hook
//! would end the VMM with status 159 instead of reporting the panic. Installed first thing in
//! `main` (and by tests that confine a thread that may panic).

use std::io::Write;
use std::panic::PanicHookInfo;

/// Replace the default panic hook with [`report`].
pub fn install() {
    std::panic::set_hook(Box::new(report));
}

/// The report line for a panic.
pub fn line(info: &PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    let place = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    format!(
        "bulkhead-vmm: thread {name:?} panicked{place}: {}\n",
        payload_message(info.payload())
    )
}

/// The message a panic payload carries (`panic!` with a literal or with format arguments).
pub fn payload_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

fn report(info: &PanicHookInfo<'_>) {
    let _ = std::io::stderr().lock().write_all(line(info).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_messages() {
        let p: Box<dyn std::any::Any + Send> = Box::new("literal");
        assert_eq!(payload_message(&*p), "literal");
        let p: Box<dyn std::any::Any + Send> = Box::new(format!("formatted {}", 7));
        assert_eq!(payload_message(&*p), "formatted 7");
        let p: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(payload_message(&*p), "(no message)");
    }
}
