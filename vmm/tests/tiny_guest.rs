//! Tiny guests on the real `/dev/kvm`: a few bytes of 32-bit code that write to the serial
//! port, read and write virtio-mmio registers and pulse the i8042 reset line, run through the
//! VMM's own VM, buses, devices and exit handling. These run even on hosts whose KVM cannot
//! boot Linux (nested PVM); they skip, saying so, where `/dev/kvm` is absent.

mod common;

use common::{kvm_available, TinyVm};

use bulkhead_vmm::arch::x86_64::layout;
use bulkhead_vmm::vstate::vcpu::{handle_exit, ExitAction};

#[test]
fn tiny_guest_drives_serial_virtio_mmio_and_reset() {
    if !kvm_available() {
        return;
    }
    let mmio = layout::VIRTIO_MMIO_BASE as u32;
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', 0xee, // mov al, 'O'; out dx, al
        0xb0, b'K', 0xee, // mov al, 'K'; out dx, al
        0xa1, // mov eax, [MagicValue]
    ];
    code.extend_from_slice(&mmio.to_le_bytes());
    code.push(0xee); // out dx, al  (low byte of "virt": 'v')
    code.extend_from_slice(&[0xc7, 0x05]); // mov dword [Status], 1 (ACKNOWLEDGE)
    code.extend_from_slice(&(mmio + 0x70).to_le_bytes());
    code.extend_from_slice(&1u32.to_le_bytes());
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
    code.push(0xf4); // hlt (never reached: the test stops at the reset)

    let TinyVm {
        _mem,
        vm: _,
        sink,
        buses,
        legacy,
        cmdline,
        mut vcpu,
    } = TinyVm::new(&code);

    let mut exits = 0;
    loop {
        exits += 1;
        assert!(exits < 100, "the tiny guest did not reach its reset");
        let exit = vcpu.fd_mut().run().expect("KVM_RUN");
        assert_eq!(handle_exit(exit, &buses), ExitAction::Continue);
        if legacy.reset_evt.read().is_ok() {
            break;
        }
    }
    legacy.serial.lock().unwrap().flush();
    assert_eq!(&*sink.0.lock().unwrap(), b"OKv");
    let mut status = [0u8; 4];
    assert!(buses
        .mmio
        .read(layout::VIRTIO_MMIO_BASE + 0x70, &mut status));
    assert_eq!(
        u32::from_le_bytes(status),
        1,
        "the guest's status write reached the transport"
    );
    assert!(
        cmdline
            .as_cstring()
            .unwrap()
            .to_str()
            .unwrap()
            .contains("virtio_mmio.device=4K@0x"),
        "the device is announced on the command line"
    );
}
