//! virtio-net as an event-loop subscriber: the activation eventfd, the two queue eventfds, and
//! the tap, watched for EPOLLIN only while no received frame waits for guest buffers and for
//! EPOLLOUT only while a transmitted frame waits for the tap.
//!
//! With vhost-net the kernel reads the queue eventfds and the tap; the event loop watches
//! neither, and instead relays vhost-net's two call eventfds to the transport's interrupt.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Net;
use crate::devices::virtio::device::VirtioInterruptType;
use crate::devices::virtio::rate_limited::warn_limited;

impl Net {
    /// The tap events the device wants watched in its current state (empty: none).
    pub(super) fn wanted_tap_events(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state.is_some() && !self.tap_gone && self.vhost.is_none() {
            if self.rx.pending.is_none() {
                set |= EventSet::IN;
            }
            if self.tx_blocked {
                set |= EventSet::OUT;
            }
        }
        set
    }

    /// Make the tap's registration match [`Net::wanted_tap_events`].
    fn sync_tap_events(&mut self, ops: &mut EventOps) {
        let want = Some(self.wanted_tap_events()).filter(|w| !w.is_empty());
        if want == self.tap_events {
            return;
        }
        let fd = self.tap.as_raw_fd();
        let result = match (self.tap_events, want) {
            (None, Some(w)) => ops.add(Events::new_raw(fd, w)),
            (Some(_), Some(w)) => ops.modify(Events::new_raw(fd, w)),
            (Some(old), None) => ops.remove(Events::new_raw(fd, old)),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => self.tap_events = want,
            Err(e) => {
                self.metrics.event_fails.inc();
                log::error!(
                    "virtio-net {}: cannot update the tap's event registration: {e}",
                    self.tap.name()
                );
            }
        }
    }

    /// Drop the queue eventfds registered before, register the current ones if active.
    fn sync_queue_events(&mut self, ops: &mut EventOps) {
        for evt in self.registered.drain(..) {
            if let Err(e) = ops.remove(Events::new(&*evt, EventSet::IN)) {
                self.metrics.event_fails.inc();
                log::error!("virtio-net: cannot unregister a queue eventfd: {e}");
            }
        }
        let current = match &self.state {
            // vhost-net reads them (they are its kick fds).
            Some(_) if self.vhost.is_some() => Vec::new(),
            Some(a) => vec![a.rx_notify.clone(), a.tx_notify.clone()],
            None => Vec::new(),
        };
        for evt in current {
            match ops.add(Events::new(&*evt, EventSet::IN)) {
                Ok(()) => self.registered.push(evt),
                Err(e) => {
                    self.metrics.event_fails.inc();
                    log::error!("virtio-net: cannot register a queue eventfd: {e}");
                }
            }
        }
    }

    /// Whether `fd` is one of vhost-net's call eventfds; if so, drain it and interrupt the
    /// guest (vhost-net already honoured the driver's interrupt suppression).
    fn relay_vhost_call(&mut self, fd: i32) -> bool {
        let Some(call) = self
            .vhost
            .as_ref()
            .and_then(|v| v.calls().iter().find(|c| c.as_raw_fd() == fd))
        else {
            return false;
        };
        // Non-blocking; several signals since the last read collapse into one interrupt.
        let _ = call.read();
        let Some(active) = &self.state else {
            // Late signal of a device that was reset meanwhile.
            return true;
        };
        self.metrics.vhost_calls.inc();
        if let Err(e) = active.interrupt.trigger(VirtioInterruptType::Queue) {
            self.metrics.interrupt_fails.inc();
            warn_limited!(
                self.tap_log,
                "virtio-net: cannot raise queue interrupt for vhost-net: {e}"
            );
        }
        true
    }

    fn is_notify(&self, fd: i32, which: usize) -> bool {
        self.state.as_ref().is_some_and(|a| {
            let evt = if which == super::device::RX_INDEX {
                &a.rx_notify
            } else {
                &a.tx_notify
            };
            evt.as_raw_fd() == fd
        })
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        // If `activate()` already ran, the eventfd is readable and `process` catches up.
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            self.metrics.event_fails.inc();
            log::error!("virtio-net: cannot register the activation eventfd: {e}");
        }
        // vhost-net's call eventfds live as long as the device; a signal that arrives while it
        // is inactive is dropped.
        if let Some(vhost) = &self.vhost {
            for call in vhost.calls() {
                if let Err(e) = ops.add(Events::new(call, EventSet::IN)) {
                    self.metrics.event_fails.inc();
                    log::error!("virtio-net: cannot register a vhost-net call eventfd: {e}");
                }
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.sync_queue_events(ops);
            if self.state.is_some() {
                self.apply_offloads();
                // The driver may have posted buffers (and kicked) before we listened (with
                // vhost-net the kernel catches up on pending kicks itself: both return).
                self.process_tx();
                self.process_rx();
            }
        } else if self.relay_vhost_call(fd) {
            return;
        } else if fd == self.tap.as_raw_fd() {
            let set = events.event_set();
            if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                // A detached tap polls as EPOLLERR forever: stop watching it.
                let e = std::io::Error::from_raw_os_error(libc::EBADFD);
                self.tap_failed("poll", &e);
            } else {
                if set.contains(EventSet::OUT) {
                    self.process_tx();
                }
                if set.contains(EventSet::IN) {
                    self.process_rx();
                }
            }
        } else if self.is_notify(fd, super::device::RX_INDEX) {
            if let Some(a) = &self.state {
                let _ = a.rx_notify.read();
            }
            self.process_rx();
        } else if self.is_notify(fd, super::device::TX_INDEX) {
            if let Some(a) = &self.state {
                let _ = a.tx_notify.read();
            }
            self.process_tx();
        } else if let Some(evt) = self.registered.iter().find(|e| e.as_raw_fd() == fd) {
            // A queue eventfd of a reset device, not yet unregistered: just drain it.
            let _ = evt.read();
        } else {
            log::warn!("virtio-net: event on unexpected fd {fd}, unregistering it");
            let _ = ops.remove(events);
        }
        self.sync_tap_events(ops);
    }
}
