//! Host keyboard to guest console: an event-loop subscriber that moves bytes from the VMM's
//! standard input into the UART's receive FIFO, as much as the FIFO has room for.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::SerialConsole;
use crate::devices::bus::lock;

/// Forwards a readable fd (normally stdin) to the serial console.
pub struct SerialInput<R: Read + AsRawFd + Send> {
    input: R,
    serial: Arc<Mutex<SerialConsole>>,
}

impl<R: Read + AsRawFd + Send> SerialInput<R> {
    /// Forward `input` to `serial`.
    pub fn new(input: R, serial: Arc<Mutex<SerialConsole>>) -> Self {
        SerialInput { input, serial }
    }

    fn fd(&self) -> RawFd {
        self.input.as_raw_fd()
    }
}

impl<R: Read + AsRawFd + Send> MutEventSubscriber for SerialInput<R> {
    fn init(&mut self, ops: &mut EventOps) {
        match ops.add(Events::new_raw(self.fd(), EventSet::IN)) {
            Ok(()) => {}
            // epoll refuses regular files and /dev/null: input that never waits, which is
            // how a VMM started without a terminal (by the runtime) is meant to run.
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EPERM => {
                log::debug!("serial: no console input (stdin cannot be polled)");
            }
            Err(e) => log::warn!("serial: console input disabled: {e}"),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = lock(&self.serial);
        let room = serial.input_room();
        let mut buf = [0u8; 64];
        let want = room.clamp(1, buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                // End of input: stop watching, the guest keeps running.
                let _ = ops.remove(events);
            }
            // With a full FIFO the byte read to make progress is dropped, as on real hardware.
            Ok(n) if room > 0 => {
                let _ = serial.enqueue_input(&buf[..n]);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial: console input closed: {e}");
                let _ = ops.remove(events);
            }
        }
    }
}
