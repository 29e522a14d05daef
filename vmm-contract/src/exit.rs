//! How the VMM process ends: one exit status per way, and [`VmmExit`], the host's reading of
//! a collected status.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the guest rebooted or powered off on purpose (`reboot -f`, `poweroff -f`) |
//! | 1 | the VMM failed (bad input, KVM error, device set-up); its log says why |
//! | 2 | the VMM refused its command line (clap's usage error) |
//! | 3 | the guest crashed: a kernel panic (`panic=1 reboot=k`), a triple fault, or KVM's crash event |
//! | 159 | a VMM thread made a syscall its seccomp filter forbids (128 + SIGSYS) |

use std::fmt;
use std::process::ExitStatus;

/// The guest rebooted or powered off.
pub const STATUS_GUEST_SHUTDOWN: i32 = 0;
/// The VMM itself failed; the last line of its log says why.
pub const STATUS_VMM_ERROR: i32 = 1;
/// The VMM refused its flags (clap exits with 2 on a usage error).
pub const STATUS_BAD_FLAGS: i32 = 2;
/// The guest kernel panicked, the vCPU triple-faulted or KVM reported a guest crash.
pub const STATUS_GUEST_CRASH: i32 = 3;
/// A VMM thread made a syscall its seccomp filter forbids: the SIGSYS reporter exits with
/// 128 + SIGSYS, as a shell reports a process killed by SIGSYS.
pub const STATUS_SECCOMP_KILL: i32 = 128 + libc::SIGSYS;

/// The statuses as `bulkhead-vmm --help` lists them.
pub const EXIT_STATUS_HELP: &str = "Exit status: 0 guest rebooted or powered off, 1 VMM error, \
2 bad flags, 3 guest kernel panic or crash, 159 forbidden syscall (seccomp).";

/// How a VMM process ended, read from its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// Status 0: the guest rebooted or powered off (DestroySandbox ends this way).
    Shutdown,
    /// Status 3: the guest kernel panicked, triple-faulted or KVM reported a crash.
    GuestCrash,
    /// Status 1: the VMM failed (bad kernel, KVM error, device set-up).
    VmmError,
    /// Status 2: the VMM refused its flags (a version mismatch with the host side).
    BadFlags,
    /// Status 159, or killed by SIGSYS: a VMM thread made a syscall its seccomp filter
    /// forbids (a VMM bug, or a guest that reached a code path the allow-list lacks).
    SeccompKill,
    /// Any other status.
    Other(i32),
    /// Killed by a signal (9 when the host killed it).
    Signal(i32),
    /// The status could not be collected.
    Unknown,
}

impl VmmExit {
    /// Classify an exit code.
    pub fn from_code(code: i32) -> Self {
        match code {
            STATUS_GUEST_SHUTDOWN => VmmExit::Shutdown,
            STATUS_VMM_ERROR => VmmExit::VmmError,
            STATUS_BAD_FLAGS => VmmExit::BadFlags,
            STATUS_GUEST_CRASH => VmmExit::GuestCrash,
            STATUS_SECCOMP_KILL => VmmExit::SeccompKill,
            other => VmmExit::Other(other),
        }
    }

    /// Classify a collected process status.
    pub fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => VmmExit::from_code(code),
            // With SIGSYS blocked, the kernel kills the thread group with the default action.
            (None, Some(libc::SIGSYS)) => VmmExit::SeccompKill,
            (None, Some(sig)) => VmmExit::Signal(sig),
            (None, None) => VmmExit::Unknown,
        }
    }

    /// The exit code this way of ending has, if it is one of the VMM's own.
    pub fn code(self) -> Option<i32> {
        match self {
            VmmExit::Shutdown => Some(STATUS_GUEST_SHUTDOWN),
            VmmExit::VmmError => Some(STATUS_VMM_ERROR),
            VmmExit::BadFlags => Some(STATUS_BAD_FLAGS),
            VmmExit::GuestCrash => Some(STATUS_GUEST_CRASH),
            VmmExit::SeccompKill => Some(STATUS_SECCOMP_KILL),
            VmmExit::Other(code) => Some(code),
            VmmExit::Signal(_) | VmmExit::Unknown => None,
        }
    }

    /// Whether the guest shut down cleanly.
    pub fn is_clean(self) -> bool {
        self == VmmExit::Shutdown
    }

    /// Whether the VMM (not the guest) is to blame: its own log says more than the console.
    pub fn is_vmm_failure(self) -> bool {
        matches!(
            self,
            VmmExit::VmmError | VmmExit::BadFlags | VmmExit::SeccompKill | VmmExit::Other(_)
        )
    }
}

impl fmt::Display for VmmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmmExit::Shutdown => write!(f, "the guest shut down (status 0)"),
            VmmExit::GuestCrash => write!(f, "the guest kernel panicked or crashed (status 3)"),
            VmmExit::VmmError => write!(f, "the VMM failed (status 1)"),
            VmmExit::BadFlags => write!(f, "the VMM refused its command line (status 2)"),
            VmmExit::SeccompKill => write!(
                f,
                "the VMM made a system call its seccomp filter forbids and was stopped \
                 (status {STATUS_SECCOMP_KILL}); its log names the call"
            ),
            VmmExit::Other(code) => write!(f, "the VMM exited with unexpected status {code}"),
            VmmExit::Signal(sig) => write!(f, "the VMM was killed by signal {sig}"),
            VmmExit::Unknown => write!(f, "the VMM ended with an unknown status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn every_status_has_its_meaning() {
        for (code, want) in [
            (0, VmmExit::Shutdown),
            (1, VmmExit::VmmError),
            (2, VmmExit::BadFlags),
            (3, VmmExit::GuestCrash),
            (159, VmmExit::SeccompKill),
            (42, VmmExit::Other(42)),
        ] {
            // A wait status carries the exit code in its second byte.
            let got = VmmExit::from_status(ExitStatus::from_raw(code << 8));
            assert_eq!(got, want, "status {code}");
            assert_eq!(got.code(), Some(code));
        }
        assert_eq!(
            VmmExit::from_status(ExitStatus::from_raw(libc::SIGKILL)),
            VmmExit::Signal(9)
        );
        assert_eq!(
            VmmExit::from_status(ExitStatus::from_raw(libc::SIGSYS)),
            VmmExit::SeccompKill
        );
        assert_eq!(STATUS_SECCOMP_KILL, 159);
    }

    #[test]
    fn messages_say_what_happened() {
        assert!(VmmExit::GuestCrash.to_string().contains("panicked"));
        let seccomp = VmmExit::SeccompKill.to_string();
        assert!(
            seccomp.contains("seccomp") && seccomp.contains("159"),
            "{seccomp}"
        );
        assert!(!seccomp.contains("unexpected"));
        assert!(VmmExit::Shutdown.is_clean());
        assert!(!VmmExit::Signal(9).is_clean());
        assert!(VmmExit::SeccompKill.is_vmm_failure());
        assert!(!VmmExit::GuestCrash.is_vmm_failure());
    }
}
