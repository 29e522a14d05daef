//! The VMM under its seccomp filters on the real `/dev/kvm`, with tiny guests (these run even
//! where KVM cannot boot Linux):
//! - a vCPU thread started by `Vcpu::spawn` with the strict vCPU filter runs its guest through
//!   serial and virtio-mmio exits to a triple fault, reports it and ends, all under the filter;
//! - the `bulkhead-vmm` binary boots a hand-made PVH ELF "kernel" with `--seccomp strict` and
//!   two vCPUs: set-up, privilege drop, filters, event loop, console, reset and exit.
//!
//! A syscall missing from a list makes these fail with status 159 and the syscall's number.

mod common;

use common::{kvm_available, pvh_elf, TinyVm, SAY_HI_AND_RESET, SAY_HI_WAIT_FOR_INPUT_AND_RESET};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_vmm::arch::x86_64::layout;
use bulkhead_vmm::exit_status::GuestExit;
use bulkhead_vmm::seccomp::{RuleOptions, SeccompFilters, SeccompMode};
use bulkhead_vmm::vstate::vcpu::{vcpu_events, VcpuEvent};
use vmm_sys_util::tempdir::TempDir;

#[test]
fn vcpu_thread_runs_its_guest_under_the_strict_filter() {
    if !kvm_available() {
        return;
    }
    let mmio = layout::VIRTIO_MMIO_BASE as u32;
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', 0xee, // mov al, 'O'; out dx, al
        0xb0, b'K', 0xee, // mov al, 'K'; out dx, al
        0xc7, 0x05, // mov dword [Status], 1 (ACKNOWLEDGE)
    ];
    code.extend_from_slice(&(mmio + 0x70).to_le_bytes());
    code.extend_from_slice(&1u32.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x0b]); // ud2: no IDT, so a triple fault

    let TinyVm {
        _mem,
        vm: _,
        sink,
        buses,
        legacy,
        cmdline: _,
        vcpu,
    } = TinyVm::new(&code);

    let filters =
        SeccompFilters::compile(SeccompMode::Strict, &RuleOptions::for_this_process(false))
            .unwrap();
    let buses = Arc::new(buses);
    let (events, receiver) = vcpu_events().unwrap();
    let thread = vcpu
        .spawn(buses.clone(), events, filters.vcpu.clone())
        .unwrap();
    // The thread confines itself, runs the guest to its triple fault, reports and ends.
    let (index, event) = receiver
        .rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the vCPU thread reported");
    thread.join().expect("the vCPU thread ended cleanly");
    assert_eq!(index, 0);
    assert!(
        matches!(event, VcpuEvent::Stopped(GuestExit::Crash)),
        "{event:?}"
    );
    assert_eq!(
        receiver.evt.read().unwrap(),
        1,
        "the event loop was signalled"
    );
    legacy.serial.lock().unwrap().flush();
    assert_eq!(&*sink.0.lock().unwrap(), b"OK");
    let mut status = [0u8; 4];
    assert!(buses
        .mmio
        .read(layout::VIRTIO_MMIO_BASE + 0x70, &mut status));
    assert_eq!(u32::from_le_bytes(status), 1);
}

fn vmm_command(dir: &TempDir, code: &[u8], extra: &[&str]) -> Command {
    let kernel = dir.as_path().join("tiny.elf");
    std::fs::write(&kernel, pvh_elf(code)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-vmm"));
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--vcpus", "2", "--memory", "64"])
        .args(extra);
    cmd
}

fn run_vmm(dir: &TempDir, extra: &[&str]) -> std::process::Output {
    vmm_command(dir, SAY_HI_AND_RESET, extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_clean_run(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {:?}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HI\n", "{what}");
}

#[test]
fn binary_boots_a_tiny_pvh_guest_under_strict_seccomp() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let out = run_vmm(&dir, &["--seccomp", "strict"]);
    assert_clean_run(&out, "strict");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seccomp strict"), "{stderr}");
    assert!(stderr.contains("seccomp: main thread confined"), "{stderr}");

    // The default is strict too.
    let out = run_vmm(&dir, &[]);
    assert_clean_run(&out, "default");
    assert!(String::from_utf8_lossy(&out.stderr).contains("seccomp strict"));
}

#[test]
fn binary_runs_with_log_and_off_modes() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new().unwrap();
    for mode in ["log", "off"] {
        let out = run_vmm(&dir, &["--seccomp", mode]);
        assert_clean_run(&out, mode);
    }
    let out = run_vmm(&dir, &["--seccomp", "kill"]);
    assert_eq!(out.status.code(), Some(2), "a bad mode is a usage error");
}

#[test]
fn binary_switches_identity_when_root() {
    if !kvm_available() {
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bulkhead_test_skip::skip("needs root");
        return;
    }
    let dir = TempDir::new().unwrap();
    let out = run_vmm(&dir, &["--uid", "65534", "--gid", "65534"]);
    assert_clean_run(&out, "uid/gid 65534");
}

#[test]
fn binary_serves_vsock_clients_and_console_input_under_strict_seccomp() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let uds = dir.as_path().join("v.sock");
    serve_vsock_clients(&dir, &uds, None);
    assert!(
        uds.exists(),
        "the socket file stays (no unlink under the filter): its directory's owner removes it"
    );
    // A second VMM at the same path replaces the stale file.
    serve_vsock_clients(&dir, &uds, None);
}

#[test]
fn binary_serves_vsock_clients_on_an_inherited_listener() {
    use std::os::fd::AsRawFd;

    if !kvm_available() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let uds = dir.as_path().join("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&uds).unwrap();
    serve_vsock_clients(&dir, &uds, Some(listener.as_raw_fd()));

    // Not a listener: refused with the descriptor named, before the guest runs.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let out = vmm_command(&dir, SAY_HI_AND_RESET, &["--vsock", "fd=3"])
        .stdin(Stdio::null())
        .fd_as_3(a.as_raw_fd())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fd 3 is a unix stream socket that is not listening"),
        "{stderr}"
    );
    // Guest-initiated connections need a path: a usage error.
    let out = vmm_command(
        &dir,
        SAY_HI_AND_RESET,
        &["--vsock", "fd=3", "--vsock-guest-connect"],
    )
    .stdin(Stdio::null())
    .fd_as_3(listener.as_raw_fd())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Gives a child `fd` as its descriptor 3, without close-on-exec.
trait FdAs3 {
    fn fd_as_3(&mut self, fd: i32) -> &mut Self;
}

impl FdAs3 for Command {
    fn fd_as_3(&mut self, fd: i32) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: dup2 is async-signal-safe; `fd` stays open in the parent until spawn.
        unsafe {
            self.pre_exec(move || {
                // dup2 onto itself keeps close-on-exec: clear it then.
                let rc = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

/// Boot a guest that waits for a console byte, with the vsock listener at `uds` (bound by
/// the VMM, or `inherited` as its fd 3), talk to it as a host client, then end the guest.
fn serve_vsock_clients(dir: &TempDir, uds: &std::path::Path, inherited: Option<i32>) {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    let vsock = match inherited {
        Some(_) => "fd=3".to_string(),
        None => uds.to_str().unwrap().to_string(),
    };
    let mut cmd = vmm_command(
        dir,
        SAY_HI_WAIT_FOR_INPUT_AND_RESET,
        &["--seccomp", "strict", "--vsock", &vsock],
    );
    if let Some(fd) = inherited {
        cmd.fd_as_3(fd);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut hi = [0u8; 3];
    if let Err(e) = stdout.read_exact(&mut hi) {
        let out = child.wait_with_output().unwrap();
        panic!(
            "no console output ({e}): {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(&hi, b"HI\n");

    // The guest runs and the main thread is confined: a host client goes through accept,
    // non-blocking set-up and the handshake read in the event loop.
    let mut client = UnixStream::connect(uds).expect("the vsock listener is up");
    client.write_all(b"CONNECT 1024\n").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    // No guest driver answers: the VMM may keep the request pending or close it; either way
    // it must still be alive afterwards.
    let _ = client.read(&mut buf);
    drop(client);
    let second = UnixStream::connect(uds).expect("still accepting");
    drop(second);

    // A key on stdin reaches the guest's UART through the event loop; the guest resets.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"q").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("seccomp: main thread confined"), "{stderr}");
}
