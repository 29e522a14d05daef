//! virtio-fs as an event-loop subscriber: virtiofsd's per-queue "call" eventfds (forwarded to
//! the guest as queue interrupts) and the vhost-user socket (watched for hang-up).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::DeviceState;
use super::Fs;
use crate::devices::virtio::device::VirtioInterruptType;

/// What we watch the socket for: only hang-up and errors. Replies to our requests are read
/// synchronously by the thread that sent them; waking up for them here would race with it.
fn socket_events() -> EventSet {
    EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR
}

impl Fs {
    /// virtiofsd used buffers of a queue: tell the guest.
    fn forward_call(&self) {
        let DeviceState::Active(active) = &self.state else {
            self.metrics.stray_calls.inc();
            return;
        };
        match active.interrupt.trigger(VirtioInterruptType::Queue) {
            Ok(()) => self.metrics.interrupts.inc(),
            Err(e) => {
                self.metrics.interrupt_fails.inc();
                log::error!(
                    "virtio-fs {}: cannot raise queue interrupt: {e}",
                    self.tag()
                );
            }
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        // The call eventfds and the socket live as long as the device, so they are registered
        // once; a call that arrives while the device is inactive is dropped.
        for call in &self.calls {
            if let Err(e) = ops.add(Events::new(call, EventSet::IN)) {
                self.metrics.event_fails.inc();
                log::error!(
                    "virtio-fs {}: cannot register call eventfd: {e}",
                    self.tag()
                );
            }
        }
        if let Err(e) = ops.add(Events::new(&self.conn, socket_events())) {
            self.metrics.event_fails.inc();
            log::error!(
                "virtio-fs {}: cannot watch the vhost-user socket: {e}",
                self.tag()
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(call) = self.calls.iter().find(|c| c.as_raw_fd() == fd) {
            // Non-blocking; several signals since the last read collapse into one interrupt.
            let _ = call.read();
            self.forward_call();
        } else if fd == self.conn.as_raw_fd() {
            // Level-triggered: stop watching, or the loop would spin on the dead socket.
            let _ = ops.remove(events);
            self.backend_failed("exited (vhost-user socket closed)");
        } else {
            log::warn!(
                "virtio-fs {}: event on unexpected fd {fd}, unregistering it",
                self.tag()
            );
            let _ = ops.remove(events);
        }
    }
}
