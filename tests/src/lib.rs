//! End-to-end test support: locating the guest kernel and the VMM, building
//! test initramfs images, launching the VMM or QEMU with timeouts, and
//! deciding whether boot tests can run here (else they skip).

pub mod bench;
pub mod boot;
pub mod cpio;
pub mod guest;
pub mod initramfs;
pub mod kvm;
pub mod launch;
pub mod locate;
pub mod memory;
pub mod process;

/// The one test-skip helper of the workspace (crate `bulkhead-test-skip`, in `tests/skip/`).
pub use bulkhead_test_skip::{skip, skip_test, skipping_fails};

pub use initramfs::{TestInitramfs, INIT_READY_MARKER};
pub use kvm::{linux_kvm_available, require_linux_kvm};
pub use launch::{qemu_microvm_command, vmm_command, BootSpec, BASE_CMDLINE};
pub use locate::{kernel_dir, vmm_binary, workspace_root, KernelDir};
pub use process::{run_with_timeout, RunOutput, WatchedChild};
