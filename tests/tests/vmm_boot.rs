//! Boots the guest kernel + test initramfs with bulkhead-vmm: init marker,
//! vCPU count, virtio-rng, and the exit status contract (0 on guest reboot,
//! 3 on guest panic). Skips without a Linux-capable KVM (run via the
//! harness) or without a built VMM binary.

use std::time::Duration;

use bulkhead_e2e::boot::{hwrng_ok, report_value, Scratch};
use bulkhead_e2e::{
    kernel_dir, require_linux_kvm, run_with_timeout, vmm_binary, vmm_command, BootSpec,
};

const TIMEOUT: Duration = Duration::from_secs(180);

fn vmm_or_skip(test: &str) -> Option<std::path::PathBuf> {
    if !require_linux_kvm(test) {
        return None;
    }
    match vmm_binary() {
        Ok(p) => Some(p),
        Err(e) => {
            bulkhead_e2e::skip_test(test, e);
            None
        }
    }
}

#[test]
fn vmm_boots_kernel_to_init_and_exits_0_on_reboot() {
    let Some(vmm) = vmm_or_skip("vmm_boots_kernel_to_init_and_exits_0_on_reboot") else {
        return;
    };
    let kernel = kernel_dir().expect("guest kernel (kernel-config/build-kernel.sh)");
    let scratch = Scratch::new("vmm-reboot").unwrap();
    let spec = BootSpec::new(&kernel.vmlinux(), &scratch.initrd, 2, 128, "reboot");
    let out = run_with_timeout(&mut vmm_command(&vmm, &spec), TIMEOUT).unwrap();
    let serial = &out.stdout;
    assert!(
        !out.timed_out,
        "VMM did not end after reboot -f:\n{serial}\n{}",
        out.stderr
    );
    assert!(
        serial.contains("BULKHEAD-INIT-READY"),
        "{serial}\n{}",
        out.stderr
    );
    assert_eq!(report_value(serial, "nproc"), Some("2"), "{serial}");
    assert!(hwrng_ok(serial), "{serial}");
    assert_eq!(out.code(), Some(0), "{serial}\n{}", out.stderr);
}

#[test]
fn vmm_exits_3_on_guest_panic() {
    let Some(vmm) = vmm_or_skip("vmm_exits_3_on_guest_panic") else {
        return;
    };
    let kernel = kernel_dir().expect("guest kernel (kernel-config/build-kernel.sh)");
    let scratch = Scratch::new("vmm-panic").unwrap();
    let spec = BootSpec::new(&kernel.vmlinux(), &scratch.initrd, 1, 128, "panic");
    let out = run_with_timeout(&mut vmm_command(&vmm, &spec), TIMEOUT).unwrap();
    let serial = &out.stdout;
    assert!(
        !out.timed_out,
        "VMM did not end after the guest panic:\n{serial}\n{}",
        out.stderr
    );
    assert!(serial.contains("Kernel panic - not syncing"), "{serial}");
    assert_eq!(out.code(), Some(3), "{serial}\n{}", out.stderr);
}

#[test]
fn vmm_boots_bzimage_with_one_vcpu() {
    let Some(vmm) = vmm_or_skip("vmm_boots_bzimage_with_one_vcpu") else {
        return;
    };
    let kernel = kernel_dir().expect("guest kernel (kernel-config/build-kernel.sh)");
    let scratch = Scratch::new("vmm-bzimage").unwrap();
    let spec = BootSpec::new(&kernel.bzimage(), &scratch.initrd, 1, 128, "reboot");
    let out = run_with_timeout(&mut vmm_command(&vmm, &spec), TIMEOUT).unwrap();
    let serial = &out.stdout;
    assert!(!out.timed_out, "VMM did not end:\n{serial}\n{}", out.stderr);
    assert!(
        serial.contains("BULKHEAD-INIT-READY"),
        "{serial}\n{}",
        out.stderr
    );
    assert_eq!(report_value(serial, "nproc"), Some("1"), "{serial}");
    assert!(hwrng_ok(serial), "{serial}");
    assert_eq!(out.code(), Some(0), "{serial}\n{}", out.stderr);
    assert!(
        out.stderr.contains("LinuxBoot"),
        "a bzImage boots by the Linux boot protocol: {}",
        out.stderr
    );
}

#[test]
fn vmm_exits_0_on_guest_poweroff() {
    let Some(vmm) = vmm_or_skip("vmm_exits_0_on_guest_poweroff") else {
        return;
    };
    let kernel = kernel_dir().expect("guest kernel (kernel-config/build-kernel.sh)");
    let scratch = Scratch::new("vmm-poweroff").unwrap();
    let spec = BootSpec::new(&kernel.vmlinux(), &scratch.initrd, 1, 128, "poweroff");
    let out = run_with_timeout(&mut vmm_command(&vmm, &spec), TIMEOUT).unwrap();
    let serial = &out.stdout;
    assert!(
        !out.timed_out,
        "VMM did not end after poweroff -f:\n{serial}\n{}",
        out.stderr
    );
    assert_eq!(out.code(), Some(0), "{serial}\n{}", out.stderr);
    assert!(out.stderr.contains("powered off"), "{}", out.stderr);
}
