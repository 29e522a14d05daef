//! The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).
//!
//! The guest needs it for two things: its reset line (`reboot=k` writes 0xfe to 0x64,
//! which the VMM sees as an eventfd), and an answer when Linux's i8042 driver reads the
//! controller's configuration byte (CTR) at boot. `vm_superio::I8042Device` only does the
//! reset and reads back 0, so the driver polls for a byte that never comes, retries, and
//! gives up ("Can't read CTR") after seconds of timeouts under nested virtualization.
//! This model answers the controller commands Linux issues; no keyboard is attached, so
//! bytes for the keyboard are dropped and no interrupt is raised (the driver polls the
//! status register for command replies). What the guest can make it hold is bounded.

use std::collections::VecDeque;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// Register offsets from port 0x60.
const DATA: u64 = 0;
const STATUS_COMMAND: u64 = 4;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// "System flag": set once the controller passed its power-on self test.
const STATUS_SYSTEM: u8 = 0x04;
/// The last write went to the command port.
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Keyboard not inhibited (no key lock engaged).
const STATUS_NOT_INHIBITED: u8 = 0x10;

/// Controller commands (written to 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

/// CTR bits.
const CTR_KBD_INTERRUPT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;

/// Replies to controller tests.
const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;
/// Output port: bit 0 high keeps the CPU out of reset, bit 1 is the A20 gate.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
/// The output buffer of a real controller holds one byte; a few more are harmless and
/// anything beyond is dropped, so a guest cannot make the VMM hold memory.
const OUTPUT_LIMIT: usize = 8;

/// What the next byte written to the data port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    Ctr,
    OutputPort,
    /// 0xd2/0xd3: the byte comes back as if the device had sent it.
    Echo,
    /// 0xd4: a byte for the (absent) mouse.
    Aux,
}

/// The controller.
pub struct I8042 {
    reset: EventFdTrigger,
    ctr: u8,
    output: VecDeque<u8>,
    next_data: DataTarget,
    last_was_command: bool,
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest pulses the reset line.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 {
            reset: EventFdTrigger::new(reset_evt),
            ctr: CTR_KBD_INTERRUPT | CTR_SYSTEM | CTR_AUX_DISABLED | CTR_TRANSLATE,
            output: VecDeque::with_capacity(OUTPUT_LIMIT),
            next_data: DataTarget::Keyboard,
            last_was_command: false,
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM | STATUS_NOT_INHIBITED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn reply(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_LIMIT {
            self.output.push_back(byte);
        }
    }

    fn pulse_reset(&mut self) {
        if let Err(e) = self.reset.trigger() {
            log::error!("i8042: could not signal the guest's reset: {e}");
        }
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.next_data = DataTarget::Keyboard;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR => self.next_data = DataTarget::Ctr,
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_TEST_AUX | CMD_TEST_KBD => self.reply(INTERFACE_TEST_PASSED),
            CMD_SELF_TEST => self.reply(SELF_TEST_PASSED),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_INPUT_PORT => self.reply(0),
            CMD_READ_OUTPUT_PORT => self.reply(OUTPUT_PORT_DEFAULT),
            CMD_WRITE_OUTPUT_PORT => self.next_data = DataTarget::OutputPort,
            CMD_WRITE_KBD_BUFFER | CMD_WRITE_AUX_BUFFER => self.next_data = DataTarget::Echo,
            CMD_WRITE_TO_AUX => self.next_data = DataTarget::Aux,
            CMD_PULSE_RESET => self.pulse_reset(),
            // Other pulse-output-line commands and anything unknown: nothing to do.
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.last_was_command = false;
        match std::mem::replace(&mut self.next_data, DataTarget::Keyboard) {
            DataTarget::Ctr => self.ctr = byte,
            // Bit 0 low holds the CPU in reset.
            DataTarget::OutputPort if byte & 0x01 == 0 => self.pulse_reset(),
            DataTarget::OutputPort => {}
            DataTarget::Echo => self.reply(byte),
            // No keyboard and no mouse are attached: their bytes go nowhere, as on a
            // controller with empty ports, and the driver's device probes time out.
            DataTarget::Keyboard | DataTarget::Aux => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else { return };
        *byte = match offset {
            DATA => self.output.pop_front().unwrap_or(0),
            STATUS_COMMAND => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else { return };
        match offset {
            DATA => self.data(*byte),
            STATUS_COMMAND => self.command(*byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let probe = evt.try_clone().unwrap();
        (I8042::new(evt), probe)
    }

    fn read(i8042: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        i8042.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_the_eventfd() {
        let (mut i8042, probe) = controller();
        assert!(probe.read().is_err(), "nothing signalled yet");
        i8042.write(STATUS_COMMAND, &[CMD_PULSE_RESET]);
        assert_eq!(probe.read().unwrap(), 1);
    }

    #[test]
    fn output_port_with_bit_0_low_resets_too() {
        let (mut i8042, probe) = controller();
        i8042.write(STATUS_COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        i8042.write(DATA, &[0x02]);
        assert_eq!(probe.read().unwrap(), 1);
        i8042.write(STATUS_COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        i8042.write(DATA, &[0x03]);
        assert!(probe.read().is_err());
    }

    #[test]
    fn the_ctr_reads_back_what_was_written_with_the_output_full_flag() {
        let (mut i8042, _) = controller();
        assert_eq!(read(&mut i8042, STATUS_COMMAND) & STATUS_OUTPUT_FULL, 0);
        i8042.write(STATUS_COMMAND, &[CMD_READ_CTR]);
        let status = read(&mut i8042, STATUS_COMMAND);
        assert_ne!(status & STATUS_OUTPUT_FULL, 0);
        assert_ne!(status & STATUS_SYSTEM, 0);
        let ctr = read(&mut i8042, DATA);
        assert_eq!(ctr & CTR_SYSTEM, CTR_SYSTEM);
        assert_eq!(read(&mut i8042, STATUS_COMMAND) & STATUS_OUTPUT_FULL, 0);

        i8042.write(STATUS_COMMAND, &[CMD_WRITE_CTR]);
        i8042.write(DATA, &[0x61]);
        i8042.write(STATUS_COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut i8042, DATA), 0x61);
    }

    #[test]
    fn self_test_and_interface_tests_pass() {
        let (mut i8042, _) = controller();
        i8042.write(STATUS_COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut i8042, DATA), SELF_TEST_PASSED);
        i8042.write(STATUS_COMMAND, &[CMD_TEST_KBD]);
        assert_eq!(read(&mut i8042, DATA), INTERFACE_TEST_PASSED);
    }

    #[test]
    fn enable_and_disable_commands_change_the_ctr() {
        let (mut i8042, _) = controller();
        i8042.write(STATUS_COMMAND, &[CMD_DISABLE_KBD]);
        i8042.write(STATUS_COMMAND, &[CMD_ENABLE_AUX]);
        i8042.write(STATUS_COMMAND, &[CMD_READ_CTR]);
        let ctr = read(&mut i8042, DATA);
        assert_eq!(
            ctr & (CTR_KBD_DISABLED | CTR_AUX_DISABLED),
            CTR_KBD_DISABLED
        );
    }

    #[test]
    fn keyboard_bytes_are_dropped_and_echo_comes_back() {
        let (mut i8042, _) = controller();
        i8042.write(DATA, &[0xf2]);
        assert_eq!(read(&mut i8042, STATUS_COMMAND) & STATUS_OUTPUT_FULL, 0);
        i8042.write(STATUS_COMMAND, &[CMD_WRITE_KBD_BUFFER]);
        i8042.write(DATA, &[0x1c]);
        assert_eq!(read(&mut i8042, DATA), 0x1c);
        // The data port is the keyboard's again.
        i8042.write(DATA, &[0x1c]);
        assert_eq!(read(&mut i8042, STATUS_COMMAND) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn a_guest_cannot_fill_the_output_without_bound() {
        let (mut i8042, _) = controller();
        for _ in 0..10_000 {
            i8042.write(STATUS_COMMAND, &[CMD_SELF_TEST]);
        }
        assert_eq!(i8042.output.len(), OUTPUT_LIMIT);
        // Odd sizes and offsets are ignored, not a panic.
        i8042.write(DATA, &[1, 2]);
        let mut wide = [0u8; 4];
        i8042.read(STATUS_COMMAND, &mut wide);
        assert_eq!(read(&mut i8042, 2), 0xff);
    }
}
