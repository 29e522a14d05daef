//! The 8250 UART at COM1 (port 0x3f8, IRQ 4), on `vm-superio`'s emulation.

use std::io;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::ConsoleOutput;
use crate::devices::bus::BusDevice;

/// Raises an interrupt by writing an eventfd (an irqfd registered with KVM).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wrap an eventfd.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The guest's serial console.
pub struct SerialConsole {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleOutput>,
}

impl SerialConsole {
    /// A UART that interrupts through `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: ConsoleOutput) -> Self {
        SerialConsole {
            serial: Serial::new(EventFdTrigger::new(irq), out),
        }
    }

    /// Queue bytes for the guest to read (host keyboard input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.serial
            .enqueue_raw_bytes(bytes)
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("serial input: {e:?}")))
    }

    /// How many bytes the receive FIFO can take now.
    pub fn input_room(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Flush console output (at VMM exit).
    pub fn flush(&mut self) {
        let _ = io::Write::flush(self.serial.writer_mut());
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            *byte = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            // Errors here are output errors that ConsoleOutput already absorbs, or a failed
            // interrupt, which the guest will recover from by polling.
            let _ = self.serial.write(off, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn transmit_register_writes_reach_the_console_and_raise_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq_probe = irq.try_clone().unwrap();
        let mut uart = SerialConsole::new(irq, ConsoleOutput::new(None).unwrap());
        // Enable the THR-empty interrupt (IER bit 1), then write a byte.
        uart.write(1, &[0x02]);
        uart.write(0, b"A");
        assert!(irq_probe.read().unwrap() >= 1);
        // Multi-byte accesses are ignored, not a panic.
        uart.write(0, b"AB");
        let mut two = [0u8; 2];
        uart.read(5, &mut two);
        assert_eq!(two, [0, 0]);
        uart.flush();
        let _ = std::io::sink().flush();
    }

    #[test]
    fn input_is_readable_from_the_receive_register() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut uart = SerialConsole::new(irq, ConsoleOutput::new(None).unwrap());
        uart.enqueue_input(b"z").unwrap();
        let mut lsr = [0u8];
        uart.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        uart.read(0, &mut rbr);
        assert_eq!(rbr[0], b'z');
    }
}
