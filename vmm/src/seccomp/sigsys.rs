//! The SIGSYS reporter: in strict mode a forbidden syscall traps (SECCOMP_RET_TRAP) into this
//! handler, which writes one line naming the syscall number and the thread kind to stderr and
//! ends the process with [`STATUS_SECCOMP_KILL`] (159, the contract's status). The syscall
//! itself never runs.
//!
//! The handler only uses `write` and `exit_group`, which every filter allows. It cannot be
//! replaced after the filters are in (`rt_sigaction` is allowed for SIGABRT only), and if
//! SIGSYS is blocked the kernel falls back to the default action: the process dies either way.

use std::cell::Cell;
use std::sync::OnceLock;

pub use bulkhead_vmm_contract::exit::STATUS_SECCOMP_KILL;

thread_local! {
    /// Which filter this thread runs under, for the report ("vmm": only the process-wide one,
    /// as on helper threads started during set-up).
    static THREAD_KIND: Cell<&'static str> = const { Cell::new("vmm") };
}

/// Remember the calling thread's kind (`vcpu`, `main`) for the report.
pub fn set_thread_kind(kind: &'static str) {
    THREAD_KIND.with(|k| k.set(kind));
}

/// The SIGSYS fields of `siginfo_t` on x86_64 (`_sigsys` in the kernel's union, which
/// starts at offset 16).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer formatted without allocating (the handler runs in signal context).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The report line for syscall `nr` on a thread of `kind`.
fn report(nr: i64, kind: &str) -> Line {
    let mut line = Line::new();
    line.push(b"bulkhead-vmm: seccomp: forbidden syscall ");
    line.push_number(nr);
    line.push(b" on a ");
    line.push(kind.as_bytes());
    line.push(b" thread; exiting (rerun with --seccomp log to list every missing syscall)\n");
    line
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS from
        // seccomp its union holds the `_sigsys` fields laid out as in `SigsysInfo`.
        i64::from(unsafe { (*(info as *const SigsysInfo)).syscall })
    };
    let kind = THREAD_KIND.try_with(|k| k.get()).unwrap_or("exiting");
    let line = report(nr, kind);
    let bytes = line.as_bytes();
    // SAFETY: write(2) and exit_group(2) are async-signal-safe and allowed by every filter;
    // the buffer is valid for its length.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::syscall(libc::SYS_exit_group, STATUS_SECCOMP_KILL);
    }
}

/// Install the reporter (once per process; later calls return the first result).
pub fn install() -> std::io::Result<()> {
    // The errno of a failed attempt, kept so every caller sees the same outcome.
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let outcome = *INSTALLED.get_or_init(|| {
        // SAFETY: sigaction with a zeroed struct, our handler and SA_SIGINFO; the handler is
        // an `extern "C"` function with the three-argument signature SA_SIGINFO expects.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigsys as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EINVAL));
            }
        }
        Ok(())
    });
    outcome.map_err(std::io::Error::from_raw_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_the_syscall_and_thread() {
        let line = report(41, "vcpu");
        let text = std::str::from_utf8(line.as_bytes()).unwrap();
        assert!(
            text.starts_with("bulkhead-vmm: seccomp: forbidden syscall 41 on a vcpu thread;"),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        let line = report(-1, "main");
        assert!(std::str::from_utf8(line.as_bytes())
            .unwrap()
            .contains("syscall -1 on a main"));
        let line = report(i64::MIN, "x");
        assert!(std::str::from_utf8(line.as_bytes())
            .unwrap()
            .contains("-9223372036854775808"));
    }

    #[test]
    fn status_reads_as_killed_by_sigsys() {
        assert_eq!(STATUS_SECCOMP_KILL, 159);
    }
}
