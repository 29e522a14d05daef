//! Device counters in one shape: every virtio device's metrics are a struct of [`Counter`]s
//! declared with [`device_metrics!`], which also lists them for [`DeviceMetrics::summary`].
//! The VMM logs one summary line per device when the guest stops (`builder::MicroVm::wait`),
//! so what a guest did to its devices (malformed chains, refused connections) is on record.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter, readable from any thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a device's counters say.
pub trait DeviceMetrics: Send + Sync {
    /// Every counter by name, in declaration order.
    fn counters(&self) -> Vec<(&'static str, u64)>;

    /// One log line: `NAME: counter=value ...`.
    fn summary(&self, name: &str) -> String {
        let mut line = format!("{name}:");
        for (counter, value) in self.counters() {
            line.push_str(&format!(" {counter}={value}"));
        }
        line
    }
}

/// Declares a metrics struct of [`Counter`]s and its [`DeviceMetrics`] listing.
macro_rules! device_metrics {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $crate::devices::virtio::metrics::Counter, )*
        }

        impl $crate::devices::virtio::metrics::DeviceMetrics for $name {
            fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($field), self.$field.get()), )*]
            }
        }
    };
}
pub(crate) use device_metrics;

#[cfg(test)]
mod tests {
    use super::*;

    device_metrics! {
        /// Two counters.
        pub struct TwoCounters {
            /// The first.
            pub first,
            pub second,
        }
    }

    #[test]
    fn summary_lists_every_counter_in_order() {
        let m = TwoCounters::default();
        m.first.inc();
        m.second.add(41);
        m.second.inc();
        assert_eq!(m.counters(), vec![("first", 1), ("second", 42)]);
        assert_eq!(m.summary("virtio-test"), "virtio-test: first=1 second=42");
    }
}
