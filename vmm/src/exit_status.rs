//! How a running guest stopped ([`GuestExit`]), and the VMM exit status for each way.
//!
//! The statuses themselves are part of the host <-> VMM contract
//! ([`bulkhead_vmm_contract::exit`]): 0 guest shut down, 1 VMM error, 2 bad flags (clap),
//! 3 guest crash, 159 forbidden syscall (the SIGSYS reporter, `seccomp::sigsys`).

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

pub use bulkhead_vmm_contract::exit::{
    STATUS_BAD_FLAGS, STATUS_GUEST_CRASH, STATUS_GUEST_SHUTDOWN, STATUS_SECCOMP_KILL,
    STATUS_VMM_ERROR,
};

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
