//! A device's "I can no longer work, stop the VM" signal: an eventfd the VMM's exit monitor
//! watches, plus the reason, kept once (the first failure wins).

use std::io;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::lock;

/// Set once by a device whose backend is gone; read by whoever decides to stop the VM.
///
/// The eventfd becomes readable on the first [`DeviceFailure::fail`] and stays readable until
/// someone reads it; [`DeviceFailure::reason`] stays set for good.
#[derive(Debug)]
pub struct DeviceFailure {
    evt: EventFd,
    reason: Mutex<Option<String>>,
}

impl DeviceFailure {
    /// A signal that has not fired.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// The eventfd to watch (readable once the device failed). Read it to re-arm epoll; the
    /// reason stays available.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    /// Why the device failed, if it did.
    pub fn reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// Whether the device failed.
    pub fn has_failed(&self) -> bool {
        lock(&self.reason).is_some()
    }

    /// Record `reason` (unless a failure was already recorded) and signal the eventfd.
    /// Returns true if this call recorded the failure (so the caller logs it once).
    pub fn fail(&self, reason: String) -> bool {
        let first = {
            let mut slot = lock(&self.reason);
            if slot.is_some() {
                false
            } else {
                *slot = Some(reason);
                true
            }
        };
        if first {
            if let Err(e) = self.evt.write(1) {
                // The reason is still recorded; the exit monitor sees it on its next look.
                log::error!("cannot signal device failure eventfd: {e}");
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_wins_and_signals_once() {
        let f = DeviceFailure::new().unwrap();
        assert!(!f.has_failed());
        assert!(f.evt().read().is_err(), "not readable before a failure");
        assert!(f.fail("virtiofsd for tag a exited".into()));
        assert!(!f.fail("later".into()));
        assert_eq!(f.evt().read().unwrap(), 1);
        assert_eq!(f.reason().as_deref(), Some("virtiofsd for tag a exited"));
        assert!(f.has_failed());
    }
}
