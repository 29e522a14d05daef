//! The event loop a device runs under in the VMM, driven without blocking: each pump handles
//! whatever is ready until nothing is (bounded, so a device that keeps itself busy is found).

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

/// The VMM's event manager type.
pub type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// An event manager with `dev` subscribed.
pub fn with(dev: Arc<Mutex<dyn MutEventSubscriber + Send>>) -> Em {
    let mut em: Em = EventManager::new().expect("event manager");
    em.add_subscriber(dev);
    em
}

/// Dispatch ready events until none is left. Panics if the device is still busy after many
/// rounds with no new input (it would spin the VMM's event loop).
pub fn pump(em: &mut Em) {
    for _ in 0..256 {
        match em.run_with_timeout(0) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => panic!("event loop failed: {e:?}"),
        }
    }
    panic!("device still has events after 256 rounds without new input");
}
