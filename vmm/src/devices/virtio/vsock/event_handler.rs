//! The vsock device as an event-manager subscriber: activation/reset, queue notifications,
//! the host listener and every host connection socket.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Vsock, TXQ};
use super::muxer::Poller;
use crate::devices::virtio::rate_limited::warn_limited;

/// Adapts the event manager's per-subscriber operations to what the muxer needs. Failures
/// are kept (the first one, and a count) and logged by the device through its limiter once
/// the event is handled: a guest that opens many streams can make them happen.
struct OpsPoller<'a, 'b> {
    ops: &'a mut EventOps<'b>,
    failures: u64,
    first: Option<String>,
}

impl<'a, 'b> OpsPoller<'a, 'b> {
    fn new(ops: &'a mut EventOps<'b>) -> Self {
        OpsPoller {
            ops,
            failures: 0,
            first: None,
        }
    }

    fn failed(&mut self, what: std::fmt::Arguments<'_>) {
        self.failures += 1;
        if self.first.is_none() {
            self.first = Some(what.to_string());
        }
    }
}

impl Poller for OpsPoller<'_, '_> {
    fn add(&mut self, fd: RawFd, events: EventSet) {
        if let Err(e) = self.ops.add(Events::new_raw(fd, events)) {
            self.failed(format_args!("cannot watch fd {fd}: {e}"));
        }
    }

    fn modify(&mut self, fd: RawFd, events: EventSet) {
        if let Err(e) = self.ops.modify(Events::new_raw(fd, events)) {
            self.failed(format_args!("cannot change watch on fd {fd}: {e}"));
        }
    }

    fn remove(&mut self, fd: RawFd) {
        if let Err(e) = self.ops.remove(Events::empty_raw(fd)) {
            self.failed(format_args!("cannot unwatch fd {fd}: {e}"));
        }
    }
}

impl Vsock {
    /// Activation or reset happened: swap the registered queue fds, drop connections after a
    /// reset, and catch up with anything the driver queued before we were watching.
    fn handle_activate_evt(&mut self, poller: &mut dyn Poller) {
        let _ = self.activate_evt.read();
        for evt in std::mem::take(&mut self.registered_notify) {
            poller.remove(evt.as_raw_fd());
        }
        if self.reset_pending {
            self.reset_pending = false;
            self.muxer.clear(poller);
        }
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let notify: Vec<Arc<EventFd>> = active.notify.to_vec();
        for evt in notify {
            poller.add(evt.as_raw_fd(), EventSet::IN);
            self.registered_notify.push(evt);
        }
        self.process_tx(poller);
    }

    fn notify_queue(&self, fd: RawFd) -> Option<usize> {
        let active = self.active.as_ref()?;
        let q = active.notify.iter().position(|e| e.as_raw_fd() == fd)?;
        let _ = active.notify[q].read();
        Some(q)
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let mut poller = OpsPoller::new(ops);
        poller.add(self.activate_evt.as_raw_fd(), EventSet::IN);
        poller.add(self.muxer.listener_fd(), EventSet::IN);
        if let Some(first) = poller.first {
            log::error!("vsock: {first}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut poller = OpsPoller::new(ops);
        let fd = events.fd();
        let ev = events.event_set();
        if fd == self.activate_evt.as_raw_fd() {
            self.handle_activate_evt(&mut poller);
        } else if fd == self.muxer.listener_fd() {
            self.muxer.accept_clients(&mut poller);
        } else if let Some(q) = self.notify_queue(fd) {
            // New rx buffers are filled by run_queues below; the event queue is unused.
            if q == TXQ {
                self.process_tx(&mut poller);
            }
        } else if !self.muxer.handle_host_event(fd, ev, &mut poller) {
            // Not ours any more (e.g. a stale queue fd after reset): stop the noise.
            warn_limited!(self.log_limit, "vsock: event on unknown fd {fd}");
            poller.remove(fd);
        }
        self.run_queues(&mut poller);
        if let Some(first) = poller.first {
            let more = poller.failures - 1;
            warn_limited!(
                self.log_limit,
                "vsock: {first}{}",
                if more > 0 {
                    format!(" (and {more} more event loop errors)")
                } else {
                    String::new()
                }
            );
        }
    }
}
