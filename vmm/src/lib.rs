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
//! - [`seccomp`]: confinement after set-up (seccomp allow-list per thread, privilege drop).

pub mod arch;
pub mod builder;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod exit_status;
pub mod kernel_loader;
pub mod logger;
pub mod seccomp;
pub mod vmm_config;
pub mod vstate;
