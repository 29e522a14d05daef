//! How the VMM process ends, and the exit status for each way.
//!
//! Scripts and the shim tell the cases apart by status alone:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the guest rebooted or powered off on purpose (`reboot -f`, `poweroff -f`) |
//! | 1 | the VMM failed (bad input, KVM error, device set-up); its log says why |
//! | 3 | the guest crashed: a kernel panic (`panic=1 reboot=k`), a triple fault, or KVM's crash event |
//! | 159 | a VMM thread made a syscall its seccomp filter forbids (128 + SIGSYS; see `seccomp`) |
//!
//! (2 is left to the argument parser, which uses it for usage errors.)

use std::fmt;

/// Why a running guest stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest asked for a reset or power-off and had not panicked.
    Shutdown,
    /// The guest kernel panicked (seen on its console) and then reset.
    Panic,
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN) or KVM reported a guest crash.
    Crash,
}

/// Exit status for a guest that stopped by itself.
pub const STATUS_GUEST_SHUTDOWN: i32 = 0;
/// Exit status for any VMM-side failure.
pub const STATUS_VMM_ERROR: i32 = 1;
/// Exit status for a guest panic or crash.
pub const STATUS_GUEST_CRASH: i32 = 3;

impl GuestExit {
    /// The process exit status for this way of ending.
    pub fn status(self) -> i32 {
        match self {
            GuestExit::Shutdown => STATUS_GUEST_SHUTDOWN,
            GuestExit::Panic | GuestExit::Crash => STATUS_GUEST_CRASH,
        }
    }
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestExit::Shutdown => "guest shut down (reboot or power-off)",
            GuestExit::Panic => "guest kernel panicked and reset",
            GuestExit::Crash => "guest crashed (triple fault or crash event)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct() {
        assert_eq!(GuestExit::Shutdown.status(), 0);
        assert_eq!(GuestExit::Panic.status(), 3);
        assert_eq!(GuestExit::Crash.status(), 3);
        assert_ne!(STATUS_VMM_ERROR, STATUS_GUEST_CRASH);
        assert_ne!(STATUS_VMM_ERROR, STATUS_GUEST_SHUTDOWN);
    }
}
