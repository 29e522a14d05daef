//! virtio-rng as an event-loop subscriber: the activation eventfd and the queue eventfd.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Rng;

impl Rng {
    /// Make the event loop's registrations match the device state: drop the queue eventfd we
    /// registered before (if any), then register the current one if the device is active.
    fn sync_queue_events(&mut self, ops: &mut EventOps) {
        for evt in self.registered.drain(..) {
            if let Err(e) = ops.remove(Events::new(&*evt, EventSet::IN)) {
                self.metrics.event_fails.inc();
                log::error!("virtio-rng: cannot unregister queue eventfd: {e}");
            }
        }
        if let Some(evt) = self.active_notify() {
            match ops.add(Events::new(&*evt, EventSet::IN)) {
                Ok(()) => self.registered.push(evt),
                Err(e) => {
                    self.metrics.event_fails.inc();
                    log::error!("virtio-rng: cannot register queue eventfd: {e}");
                }
            }
        }
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        // If `activate()` already ran, the eventfd is readable and `process` catches up.
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            self.metrics.event_fails.inc();
            log::error!("virtio-rng: cannot register activation eventfd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            // Non-blocking; the counter may hold several activations/resets, one sync covers all.
            let _ = self.activate_evt.read();
            self.sync_queue_events(ops);
            // The driver may have posted buffers (and kicked) before we listened.
            self.process_queue();
        } else if let Some(evt) = self.registered.iter().find(|e| e.as_raw_fd() == fd) {
            let _ = evt.read();
            self.process_queue();
        } else {
            log::warn!("virtio-rng: event on unexpected fd {fd}, unregistering it");
            let _ = ops.remove(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::bus::lock;
    use crate::devices::virtio::device::VirtioDevice;
    use crate::devices::virtio::rng::test_utils::*;
    use crate::devices::virtio::rng::RNG_QUEUE_SIZE;

    type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    #[test]
    fn event_loop_serves_the_queue_after_activation_and_stops_after_reset() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(rng.clone());
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "nothing to do yet");

        // A buffer posted before activation is served as soon as the device starts.
        vq.add_desc_chains(&[desc(BUF, 16, WRITE, 0)], 0).unwrap();
        let irq = Arc::new(FakeInterrupt::default());
        let aq = activated_queue(&vq);
        let notify = aq.notify.clone();
        lock(&rng)
            .activate(mem.clone(), irq.clone(), vec![aq])
            .unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(used(&vq), vec![(0, 16)]);
        assert_eq!(irq.queue_count(), 1);

        // The driver posts a buffer and kicks the queue.
        vq.add_desc_chains(&[desc(BUF + 0x100, 32, WRITE, 0)], 1)
            .unwrap();
        notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(used(&vq), vec![(0, 16), (1, 32)]);
        assert_eq!(irq.queue_count(), 2);
        assert_eq!(lock(&rng).metrics().entropy_bytes.get(), 48);

        // After a reset the queue eventfd is no longer watched.
        assert!(lock(&rng).reset());
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1, "reset event");
        vq.add_desc_chains(&[desc(BUF + 0x200, 8, WRITE, 0)], 2)
            .unwrap();
        notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 0);
        assert_eq!(used(&vq).len(), 2);
        assert_eq!(lock(&rng).metrics().event_fails.get(), 0);
    }

    #[test]
    fn reactivation_reuses_the_same_eventfd_without_double_registration() {
        let mem = test_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), RNG_QUEUE_SIZE);
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(rng.clone());
        let irq = Arc::new(FakeInterrupt::default());
        let aq = activated_queue(&vq);
        let notify = aq.notify.clone();
        lock(&rng)
            .activate(mem.clone(), irq.clone(), vec![aq])
            .unwrap();
        manager.run_with_timeout(100).unwrap();

        // Reset and re-activate (as the transport does, with the same notify eventfd) before
        // the event loop gets to run.
        assert!(lock(&rng).reset());
        let mut again = activated_queue(&vq);
        again.notify = notify.clone();
        lock(&rng).activate(mem.clone(), irq, vec![again]).unwrap();
        manager.run_with_timeout(100).unwrap();
        assert_eq!(lock(&rng).metrics().event_fails.get(), 0);

        vq.add_desc_chains(&[desc(BUF, 8, WRITE, 0)], 0).unwrap();
        notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(used(&vq), vec![(0, 8)]);
    }
}
