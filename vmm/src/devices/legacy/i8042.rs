//! The i8042 keyboard controller, kept only for its reset line: the guest kernel with
//! `reboot=k` resets by writing 0xfe to port 0x64. The VMM sees the reset as an eventfd.

use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// The controller at ports 0x60-0x64.
pub struct I8042 {
    dev: vm_superio::I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest pulses the reset line.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 {
            dev: vm_superio::I8042Device::new(EventFdTrigger::new(reset_evt)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            *byte = self.dev.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.dev.write(off, *byte) {
                log::error!("i8042: could not signal the guest's reset: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_eventfd() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let probe = evt.try_clone().unwrap();
        let mut i8042 = I8042::new(evt);
        assert!(probe.read().is_err(), "nothing signalled yet");
        i8042.write(4, &[0xfe]);
        assert_eq!(probe.read().unwrap(), 1);
    }
}
