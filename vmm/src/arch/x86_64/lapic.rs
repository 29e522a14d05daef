//! Local APIC set-up: LINT0 delivers the 8259 PIC's interrupts (ExtINT) and LINT1 delivers
//! NMIs, as the MP table says. Done on KVM's in-kernel LAPIC register image.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::error::{Error, Result};

/// Offset of the LVT LINT0 register in the LAPIC register page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the LAPIC register page.
pub const APIC_LVT1: usize = 0x360;
/// Delivery mode: NMI.
pub const APIC_MODE_NMI: u32 = 0x4;
/// Delivery mode: external interrupt (8259 PIC).
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// Bits 8..=10 of an LVT register hold the delivery mode.
const DELIVERY_MODE_MASK: u32 = 0x700;

/// Reads the 32-bit register at `offset` of the LAPIC image (a register offset below 0x400;
/// panics past the 1 KiB image).
pub fn get_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// Writes the 32-bit register at `offset` of the LAPIC image (panics past the 1 KiB image).
pub fn set_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// `reg` with its delivery mode replaced by `mode`.
pub fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !DELIVERY_MODE_MASK) | ((mode << 8) & DELIVERY_MODE_MASK)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in the LAPIC image, keeping the other bits.
pub fn configure_lint(state: &mut kvm_lapic_state) {
    let lvt0 = get_reg(state, APIC_LVT0);
    set_reg(state, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(state, APIC_LVT1);
    set_reg(state, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Configures LINT0/LINT1 of `vcpu`'s in-kernel LAPIC (needs the in-kernel irqchip).
pub fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut state = vcpu
        .get_lapic()
        .map_err(|e| Error::Kvm("KVM_GET_LAPIC", e))?;
    configure_lint(&mut state);
    vcpu.set_lapic(&state)
        .map_err(|e| Error::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::test_utils::kvm_vcpu;

    #[test]
    fn registers_are_little_endian_words() {
        let mut state = kvm_lapic_state::default();
        set_reg(&mut state, APIC_LVT0, 0x1234_5678);
        assert_eq!(state.regs[APIC_LVT0] as u8, 0x78);
        assert_eq!(state.regs[APIC_LVT0 + 3] as u8, 0x12);
        assert_eq!(get_reg(&state, APIC_LVT0), 0x1234_5678);
        assert_eq!(get_reg(&state, APIC_LVT1), 0);
    }

    #[test]
    fn delivery_mode_replaces_only_bits_8_to_10() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0xffff_ffff, APIC_MODE_NMI), 0xffff_fcff);
        assert_eq!(set_delivery_mode(0x0000_0700, 0), 0);
    }

    #[test]
    fn lint_configuration() {
        let mut state = kvm_lapic_state::default();
        // Masked, as after reset.
        set_reg(&mut state, APIC_LVT0, 0x1_0000);
        set_reg(&mut state, APIC_LVT1, 0x1_0000);
        configure_lint(&mut state);
        assert_eq!(get_reg(&state, APIC_LVT0), 0x1_0700);
        assert_eq!(get_reg(&state, APIC_LVT1), 0x1_0400);
    }

    #[test]
    fn kvm_round_trip() {
        let Some((_kvm, _vm, vcpu)) = kvm_vcpu() else {
            return;
        };
        set_lint(&vcpu).unwrap();
        let state = vcpu.get_lapic().unwrap();
        assert_eq!((get_reg(&state, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((get_reg(&state, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
