//! The `bulkhead-vmm` binary refuses bad input with exit status 1 and a message that names
//! the problem, without panicking. None of these cases boots a guest, so they run anywhere
//! (the ones that get as far as loading a kernel need `/dev/kvm`, and skip without it).

use std::io::Write;
use std::process::Command;

use vmm_sys_util::tempfile::TempFile;

const VMM: &str = env!("CARGO_BIN_EXE_bulkhead-vmm");

fn file_with(bytes: &[u8]) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().write_all(bytes).unwrap();
    f
}

/// Run the VMM; return (status, stderr).
fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(VMM)
        .args(args)
        .args(["--serial", "off"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "the VMM panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_refused(args: &[&str], needle: &str) {
    let (status, stderr) = vmm(args);
    assert_eq!(status, 1, "expected the VMM error status; stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}: {stderr}"
    );
}

#[test]
fn missing_kernel_is_named() {
    assert_refused(
        &["--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn zero_vcpus_and_bad_memory_sizes_are_refused() {
    let k = file_with(b"\x7fELF");
    let k = k.as_path().to_str().unwrap();
    assert_refused(
        &["--kernel", k, "--vcpus", "0"],
        "--vcpus must be between 1 and",
    );
    assert_refused(
        &["--kernel", k, "--vcpus", "33"],
        "--vcpus must be between 1 and",
    );
    assert_refused(
        &["--kernel", k, "--memory", "4"],
        "--memory must be at least",
    );
    assert_refused(
        &["--kernel", k, "--memory", "100000000"],
        "--memory 100000000 MiB is more than",
    );
}

#[test]
fn over_long_command_line_is_refused() {
    let k = file_with(b"\x7fELF");
    let long = "x".repeat(3000);
    assert_refused(
        &[
            "--kernel",
            k.as_path().to_str().unwrap(),
            "--cmdline",
            &long,
        ],
        "kernel command line is 3001 bytes, the limit is 2048",
    );
}

#[test]
fn corrupt_kernels_are_refused() {
    if !std::path::Path::new("/dev/kvm").exists() {
        bulkhead_test_skip::skip("/dev/kvm is absent");
        return;
    }
    let garbage = file_with(&[0x5au8; 8192]);
    assert_refused(
        &["--kernel", garbage.as_path().to_str().unwrap()],
        "is neither an ELF vmlinux nor a bzImage",
    );
    // A truncated ELF header.
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(100, 0);
    let elf = file_with(&elf);
    assert_refused(
        &["--kernel", elf.as_path().to_str().unwrap()],
        "cannot load kernel",
    );
}

#[test]
fn an_initramfs_that_does_not_fit_is_refused() {
    if !std::path::Path::new("/dev/kvm").exists() {
        bulkhead_test_skip::skip("/dev/kvm is absent");
        return;
    }
    // A minimal ELF64 executable with one PT_LOAD segment of 16 bytes at 1 MiB.
    let kernel = file_with(&tiny_elf());
    let initrd = TempFile::new().unwrap();
    initrd.as_file().set_len(48 << 20).unwrap();
    assert_refused(
        &[
            "--kernel",
            kernel.as_path().to_str().unwrap(),
            "--initrd",
            initrd.as_path().to_str().unwrap(),
            "--memory",
            "32",
        ],
        "does not fit in guest memory",
    );
}

/// An ELF64 image with a single 16-byte PT_LOAD at 0x100000 (no PVH note).
fn tiny_elf() -> Vec<u8> {
    let mut e = vec![0u8; 0x40 + 0x38 + 16];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&0x40u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&0x38u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 0x40;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    e[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // offset
    e[ph + 16..ph + 24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // vaddr
    e[ph + 24..ph + 32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
    e[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes()); // filesz
    e[ph + 40..ph + 48].copy_from_slice(&16u64.to_le_bytes()); // memsz
    e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes()); // align
    e
}
