//! Every way a vCPU thread ends, driven on the real `/dev/kvm` with the strict filters
//! installed as the VMM installs them (the process filter on every thread, the vCPU filter on
//! top): the guest stops (triple fault), KVM fails (guest memory gone: `KVM_RUN` fails
//! with EFAULT, or KVM reports an internal error), a
//! device model panics on the vCPU thread, the event loop is already gone, and the start gate
//! is dropped. In each case the thread must report (where someone listens) and end without a
//! syscall its filter forbids: a forbidden one ends the child with status 159 and names it.
//!
//! The devices on the buses include a vsock device (a unix listener) and its transport, and
//! the test drops every other reference to them first, so the vCPU thread holds the last one,
//! as it does in the VMM once the event loop has returned.
//!
//! Installing a filter cannot be undone, so each case runs in a child: this test binary run
//! again with `BULKHEAD_VCPU_CASE=<case>`, which executes only the ignored `child` test.

mod common;

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_vmm::devices::bus::BusDevice;
use bulkhead_vmm::devices::virtio::vsock::unix::HostListener;
use bulkhead_vmm::devices::virtio::vsock::Vsock;
use bulkhead_vmm::exit_status::GuestExit;
use bulkhead_vmm::seccomp::{
    RuleOptions, SeccompFilters, SeccompMode, StartGate, STATUS_SECCOMP_KILL,
};
use bulkhead_vmm::vstate::vcpu::{vcpu_events, VcpuEvent};
use common::{kvm_available, TinyVm};
use vm_memory::{GuestAddress, GuestMemoryBackend};

const CASE_ENV: &str = "BULKHEAD_VCPU_CASE";
const CHILD_OK: &str = "vcpu-case-ok";
/// An MMIO address no device uses, below the virtio window.
const PANIC_ADDR: u64 = 0xc000_0000;

fn run_child(case: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads=1"])
        .env(CASE_ENV, case)
        // A backtrace would read the binary and /proc: the VMM's panic hook never takes one.
        .env("RUST_BACKTRACE", "full")
        .output()
        .unwrap()
}

fn assert_case(case: &str, want: &str) {
    let out = run_child(case);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(STATUS_SECCOMP_KILL),
        "case {case}: killed by its filter\nstderr:\n{stderr}"
    );
    assert!(
        out.status.success() && stdout.contains(CHILD_OK),
        "case {case}: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(want),
        "case {case}: want {want:?} in\n{stdout}"
    );
}

#[test]
fn guest_stop_ends_the_thread_under_the_filter() {
    if kvm_available() {
        assert_case("triple-fault", "event: Stopped(Crash)");
    }
}

#[test]
fn kvm_failure_ends_the_thread_under_the_filter() {
    // KVM_RUN fails with EFAULT, or (PVM) KVM reports an internal error: either way the
    // vCPU reports a failure, the path a host whose KVM cannot run the guest takes.
    if kvm_available() {
        assert_case("guest-memory-gone", "event: Failed(");
    }
}

#[test]
fn a_panic_on_the_vcpu_thread_is_reported_under_the_filter() {
    if kvm_available() {
        assert_case("device-panic", "vCPU thread panicked: device model bug");
    }
}

#[test]
fn a_vcpu_ending_after_the_event_loop_is_gone_ends_quietly() {
    if kvm_available() {
        assert_case("no-listener", "no listener");
    }
}

#[test]
fn a_dropped_start_gate_ends_the_thread_under_the_process_filter() {
    if kvm_available() {
        assert_case("gate-closed", "could not be confined");
    }
}

/// A device model with a bug: any write panics (on the vCPU thread that routes it).
struct PanickingDevice;

impl BusDevice for PanickingDevice {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        panic!("device model bug");
    }
}

/// Guest code: a write to [`PANIC_ADDR`], then `ud2` (no IDT: a triple fault).
fn write_then_fault() -> Vec<u8> {
    let mut code = vec![0xc7, 0x05]; // mov dword [PANIC_ADDR], 1
    code.extend_from_slice(&(PANIC_ADDR as u32).to_le_bytes());
    code.extend_from_slice(&1u32.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x0b]);
    code
}

/// The child side: builds a tiny VM with a vsock device, confines like the VMM and drives the
/// case `BULKHEAD_VCPU_CASE` names.
#[test]
#[ignore = "runs only as the child of the vCPU error path tests"]
fn child() {
    let Ok(case) = std::env::var(CASE_ENV) else {
        return;
    };
    bulkhead_vmm::panic_hook::install();
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/bulkhead-vcpu-").unwrap();
    let code = if case == "device-panic" {
        write_then_fault()
    } else {
        vec![0x0f, 0x0b]
    };
    // The second virtio-mmio slot: a vsock device, whose last reference the vCPU thread holds.
    let uds = dir.as_path().join("v.sock");
    let TinyVm {
        _mem: mem,
        vm,
        sink: _,
        mut buses,
        legacy: _,
        cmdline: _,
        vcpu,
    } = TinyVm::with_devices(
        &code,
        Box::new(move |vm, mem, buses, cmdline, slots| {
            let listener = HostListener::bind(&uds).unwrap();
            let vsock = Vsock::new(3, listener, false).unwrap();
            slots
                .attach(
                    vm,
                    mem,
                    buses,
                    cmdline,
                    "virtio-vsock",
                    Arc::new(Mutex::new(vsock)),
                )
                .unwrap();
        }),
    );
    buses
        .mmio
        .insert(Arc::new(Mutex::new(PanickingDevice)), PANIC_ADDR, 0x1000)
        .unwrap();
    if case == "guest-memory-gone" {
        // The memory slot stays registered while its mapping goes: the guest's first
        // instruction fetch cannot be served and KVM_RUN fails with EFAULT. (The transports'
        // copies of `mem` are never used again.)
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        // SAFETY: the 64 MiB mapping of the tiny VM's memory; nothing reads it afterwards.
        assert_eq!(unsafe { libc::munmap(host.cast(), 64 << 20) }, 0);
    }
    std::mem::forget(mem);

    let filters =
        SeccompFilters::compile(SeccompMode::Strict, &RuleOptions::for_this_process(false))
            .unwrap();
    let (events, receiver) = vcpu_events().unwrap();
    let receiver = if case == "no-listener" {
        drop(receiver);
        None
    } else {
        Some(receiver)
    };
    let gate = StartGate::new();
    let thread = vcpu
        .spawn(Arc::new(buses), events, filters.vcpu.gated(&gate))
        .unwrap();
    gate.wait_for_arrivals(1);
    filters.process.apply_all_threads().unwrap();
    if case == "gate-closed" {
        drop(gate);
    } else {
        gate.open(true);
    }
    match receiver {
        Some(receiver) => {
            let (_, event) = receiver
                .rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the vCPU thread reported");
            match &event {
                VcpuEvent::Failed(why) => println!("event: Failed({why:?}) {why}"),
                VcpuEvent::Stopped(GuestExit::Crash) => println!("event: Stopped(Crash)"),
                other => println!("event: {other:?}"),
            }
        }
        None => println!("no listener"),
    }
    // The thread ends after reporting: everything it drops, it drops under its filters.
    thread
        .join()
        .expect("the vCPU thread ended without a panic");
    drop(vm);
    println!("{CHILD_OK}");
    // Not dropped: removing a directory is not on the main list, nor needed by the VMM.
    std::mem::forget(dir);
}
