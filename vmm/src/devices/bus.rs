//! Address-range buses (port I/O and MMIO) that route vCPU exits to device models.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes on a bus. `offset` is relative to the base address
/// the device was inserted at.
pub trait BusDevice: Send {
    /// Fill `data` with the device's answer. Unhandled bytes must be left as the bus filled
    /// them (zero), so a guest probing an absent register sees 0, not garbage.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Accept a write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors when building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    /// A zero-length range.
    #[error("bus range at {0:#x} has zero length")]
    ZeroLength(u64),
}

#[derive(Clone)]
struct BusEntry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    entries: BTreeMap<u64, BusEntry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((&prev_base, prev)) = self.entries.range(..end).next_back() {
            if prev_base + prev.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.entries.insert(base, BusEntry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &BusEntry)> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((addr - base, entry))
    }

    /// Route a read. Returns false when no device owns `addr` (the data stays zeroed).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        match self.find(addr) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Route a write. Returns false when no device owns `addr` (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device mutex, recovering from poisoning: a device whose handler panicked on one
/// thread keeps its last state rather than taking the whole VMM down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = self.0 + offset as u8;
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(10)));
        bus.insert(dev.clone(), 0x100, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x104, 8),
            Err(BusError::Overlap {
                base: 0x104,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf8, 9),
            Err(BusError::Overlap { base: 0xf8, len: 9 })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x50, 0),
            Err(BusError::ZeroLength(0x50))
        );
        bus.insert(dev, 0x108, 8).unwrap();

        let mut b = [0xffu8; 1];
        assert!(bus.read(0x102, &mut b));
        assert_eq!(b[0], 12);
        assert!(bus.write(0x100, &[20]));
        assert!(bus.read(0x100, &mut b));
        assert_eq!(b[0], 20);
        let mut b = [0xffu8; 2];
        assert!(!bus.read(0x200, &mut b));
        assert_eq!(b, [0, 0], "absent devices read as zero");
    }
}
