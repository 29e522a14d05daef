//! Bulkhead's microVM monitor.
//!
//! The crate is laid out the way the boot works:
//! - [`vmm_config`]: validated configuration (what the user asked for);
//! - [`vstate`]: the KVM objects (guest memory, VM, vCPUs);
//! - [`arch`]: x86_64 boot set-up (memory layout, boot protocols, registers, CPUID, MP table);
//! - [`devices`]: device models, with no KVM handles inside;
//! - [`device_manager`]: the one place that wires devices to KVM (buses, ioeventfd, irqfd,
//!   kernel command line);
//! - [`builder`]: the boot recipe, a straight list of steps that each return a typed error;
//! - [`seccomp`]: confinement after set-up (seccomp allow-list per thread, privilege drop);
//! - [`exit_status`]: how the guest stopped, as the contract's exit statuses;
//! - [`terminal`]: raw mode for the console on the VMM's own terminal;
//! - [`metrics_report`]: device counters logged at exit and on SIGUSR1;
//! - [`panic_hook`]: a panic report that works under the seccomp filters.
//!
//! The command line, exit statuses and limits the host relies on are defined once in
//! `bulkhead_vmm_contract`; this crate uses them.

pub mod arch;
pub mod builder;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod exit_status;
pub mod kernel_loader;
pub mod logger;
pub mod metrics_report;
pub mod panic_hook;
pub mod seccomp;
pub mod terminal;
pub mod vmm_config;
pub mod vstate;

/// "a: b: c" from an error and its sources: printed once where the error is handled (the
/// binary's edge), or carried as a string where errors travel as messages (vCPU threads report
/// failures to the event loop that way; a device's failure reason). The one helper of every
/// Bulkhead binary.
pub use bulkhead_log::error_chain;
