//! Legacy devices on the port I/O bus: COM1 (0x3f8, IRQ 4) and the i8042 (0x60-0x64).

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::DeviceManagerError;
use crate::devices::legacy::{ConsoleOutput, ConsoleWatch, SerialConsole, I8042};
use crate::vstate::vcpu::Buses;
use crate::vstate::vm::Vm;

const COM1_PORT: u64 = 0x3f8;
const COM1_LEN: u64 = 8;
const COM1_GSI: u32 = 4;
const I8042_PORT: u64 = 0x60;
const I8042_LEN: u64 = 5;

/// Handles on the legacy devices the event loop needs.
pub struct LegacyDevices {
    /// The serial console (for input and the final flush).
    pub serial: Arc<Mutex<SerialConsole>>,
    /// Signalled when the guest resets through the i8042.
    pub reset_evt: EventFd,
    /// What the guest kernel printed about its end (panic, power-off).
    pub console_watch: ConsoleWatch,
}

impl LegacyDevices {
    /// Create COM1 and the i8042 and put them on the I/O bus.
    pub fn attach(
        vm: &Vm,
        buses: &mut Buses,
        console: ConsoleOutput,
    ) -> Result<Self, DeviceManagerError> {
        let efd = |what| {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| DeviceManagerError::EventFd(what, e))
        };
        let serial_irq = efd("the serial interrupt")?;
        vm.fd()
            .register_irqfd(&serial_irq, COM1_GSI)
            .map_err(|source| DeviceManagerError::Irqfd {
                what: "the serial console".into(),
                gsi: COM1_GSI,
                source,
            })?;
        let console_watch = console.watch();
        let serial = Arc::new(Mutex::new(SerialConsole::new(serial_irq, console)));
        buses
            .io
            .insert(serial.clone(), COM1_PORT, COM1_LEN)
            .map_err(|e| DeviceManagerError::Bus("the serial console".into(), e))?;

        let reset_evt = efd("the i8042 reset line")?;
        let reset_for_device = reset_evt
            .try_clone()
            .map_err(|e| DeviceManagerError::EventFd("the i8042 reset line", e))?;
        buses
            .io
            .insert(
                Arc::new(Mutex::new(I8042::new(reset_for_device))),
                I8042_PORT,
                I8042_LEN,
            )
            .map_err(|e| DeviceManagerError::Bus("the i8042".into(), e))?;
        Ok(LegacyDevices {
            serial,
            reset_evt,
            console_watch,
        })
    }
}
