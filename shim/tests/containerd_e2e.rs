//! The shim under a real containerd (Debian's 1.6.20), driven with `ctr`.
//!
//! Every test starts its own containerd (own config, root on a fresh tmpfs, state, socket,
//! namespace), imports a busybox image built here from `/bin/busybox` (busybox-static), and
//! stops containerd at the end, checking that no shim, VMM or mount is left behind.
//!
//! - `boot_failure_reaches_ctr_and_leaves_nothing`: runs wherever root, containerd and
//!   busybox are: the "VMM" is a script that fails the way a VMM without KVM does; the
//!   error `ctr` prints must name the phase and quote the VMM's log.
//! - every scenario of `support/scenarios.rs` twice:
//!   - `*_with_the_host_agent`: with `BULKHEAD_AGENT_BIN`, the real agent on the host behind
//!     a fake VMM (`tests/fake-vm/vmm`): the Task API through `ctr` without KVM;
//!   - `*_in_a_vm`: the real thing; needs the KVM harness (`BULKHEAD_IN_HARNESS=1`) and
//!     `BULKHEAD_KERNEL`, `BULKHEAD_INITRD`, `BULKHEAD_VMM` (and `BULKHEAD_VIRTIOFSD`, or
//!     virtiofsd in PATH) naming real files. Run them all in one harness boot with the
//!     filter `in_a_vm` and `--test-threads 1`.
//!
//! A test that cannot run prints `SKIPPED <test>: <reason>` and passes.

mod support;

use support::scenarios::{self, Setup};
use support::*;

#[test]
fn boot_failure_reaches_ctr_and_leaves_nothing() {
    if let Err(reason) = containerd_prerequisites() {
        return skip(&reason);
    }
    let tools = tempfile::tempdir().unwrap();
    let vmm = tools.path().join("failing-vmm");
    write_script(
        &vmm,
        "#!/bin/sh\necho 'error: cannot open /dev/kvm: No such file or directory' >&2\nexit 1\n",
    );
    let kernel = tools.path().join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let c = Containerd::start(
        &[
            ("BULKHEAD_VMM", vmm.to_str().unwrap()),
            ("BULKHEAD_KERNEL", kernel.to_str().unwrap()),
            ("BULKHEAD_INITRD", ""),
            ("BULKHEAD_VIRTIOFSD", ""),
        ],
        // A shell script cannot be jailed (the jail holds one static binary).
        "[jail]\nenabled = false\n",
    );
    c.import_busybox();
    let out = run(c.ctr().args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "fails",
        "echo",
        "hi",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("ctr run: {stderr}");
    assert!(!out.status.success(), "ctr run succeeded without a VM");
    assert!(
        stderr.contains("starting the VM for fails"),
        "the error names the phase: {stderr}\ncontainerd log:\n{}",
        c.log()
    );
    assert!(
        stderr.contains("cannot open /dev/kvm"),
        "the VMM log is quoted: {stderr}"
    );
    // ctr leaves the container record after a failed task create.
    let _ = run(c.ctr().args(["containers", "rm", "fails"]));
    c.assert_clean();
}

/// Runs `scenario` against a setup, or prints why it cannot.
fn with(setup: Result<Setup, String>, scenario: fn(&Setup)) {
    match setup {
        Ok(s) => scenario(&s),
        Err(reason) => skip(&reason),
    }
}

#[test]
fn ctr_run_in_a_vm() {
    with(Setup::real_vm(), scenarios::output_status_and_stdin);
}

#[test]
fn ctr_run_with_the_host_agent() {
    with(Setup::host_agent(), scenarios::output_status_and_stdin);
}

#[test]
fn exec_ps_metrics_kill_in_a_vm() {
    with(Setup::real_vm(), scenarios::exec_ps_metrics_kill);
}

#[test]
fn exec_ps_metrics_kill_with_the_host_agent() {
    with(Setup::host_agent(), scenarios::exec_ps_metrics_kill);
}

#[test]
fn pause_resume_in_a_vm() {
    with(Setup::real_vm(), scenarios::pause_and_resume);
}

#[test]
fn pause_resume_with_the_host_agent() {
    with(Setup::host_agent(), scenarios::pause_and_resume);
}

#[test]
fn a_killed_vmm_in_a_vm() {
    with(Setup::real_vm(), scenarios::a_killed_vmm);
}

#[test]
fn a_killed_vmm_with_the_host_agent() {
    with(Setup::host_agent(), scenarios::a_killed_vmm);
}

#[test]
fn a_killed_shim_in_a_vm() {
    with(Setup::real_vm(), scenarios::a_killed_shim);
}

#[test]
fn a_killed_shim_with_the_host_agent() {
    with(Setup::host_agent(), scenarios::a_killed_shim);
}

#[test]
fn a_pod_in_a_vm() {
    with(Setup::real_vm(), scenarios::a_pods_containers_share_one_vm);
}

#[test]
fn a_pod_with_the_host_agent() {
    with(
        Setup::host_agent(),
        scenarios::a_pods_containers_share_one_vm,
    );
}

fn terminal(s: &Setup) {
    if let Err(reason) = scenarios::a_terminal_session(s) {
        skip(&reason);
    }
}

#[test]
fn ctr_run_t_in_a_vm() {
    with(Setup::real_vm(), terminal);
}

#[test]
fn ctr_run_t_with_the_host_agent() {
    with(Setup::host_agent(), terminal);
}
