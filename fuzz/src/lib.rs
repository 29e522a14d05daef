//! Shared pieces of Bulkhead's fuzz targets: a hostile guest driver over guest memory
//! ([`guest`]), the event loop as the VMM runs it ([`evloop`]), a socketpair tap
//! ([`fake_tap`]), and a directory snapshot for "nothing outside changed" checks ([`snapshot`]).

pub mod evloop;
pub mod fake_tap;
pub mod guest;
pub mod image_spec;
pub mod import_check;
pub mod snapshot;
pub mod tarb;

use std::sync::{Arc, Mutex};

use bulkhead_vmm::devices::virtio::{VirtioInterrupt, VirtioInterruptType};

/// Counts the interrupts a device raises.
#[derive(Default)]
pub struct CountingInterrupt {
    pub raised: Mutex<u64>,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, _kind: VirtioInterruptType) -> std::io::Result<()> {
        if let Ok(mut n) = self.raised.lock() {
            *n += 1;
        }
        Ok(())
    }
}

/// A fresh interrupt handle.
pub fn interrupt() -> Arc<CountingInterrupt> {
    Arc::new(CountingInterrupt::default())
}
