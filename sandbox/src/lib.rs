//! Host-side runtime of one Bulkhead pod: one microVM per sandbox. Used by the CLI
//! (`bulkhead run`) and the containerd shim.
//!
//! [`Sandbox::start`] creates the run directory, starts virtiofsd and `bulkhead-vmm`,
//! connects to the guest agent over hybrid vsock, checks its version and sets the sandbox
//! up; the container operations are typed async methods on [`Sandbox`];
//! [`Sandbox::destroy`] powers the VM off and leaves nothing behind.
//!
//! - [`hybrid_vsock`]: `CONNECT <port>` to a guest port through the VMM's unix socket;
//! - [`vmm_process`] / [`virtiofsd_process`]: the two child processes, launched with the
//!   host <-> VMM contract (`bulkhead_vmm_contract`: command line, exit statuses, limits,
//!   virtiofsd options; re-exported as [`vmm_contract`]);
//! - [`run_dir`]: the per-sandbox directory and its safe removal; [`naming`]: sandbox
//!   names that keep its unix sockets within `sun_path`;
//! - [`sizing`]: VM size from the pod's limits, and the host's CPU count;
//! - [`mountinfo`]: the mount table, parsed once; [`propagation`]: the run root as a shared
//!   mount; [`mount`]: mount points, bind and overlay mounts, detaching;
//! - [`host_agent`]: the agent binary on the host (container isolation); [`cgroup`]: the
//!   host's cgroup2 hierarchy for it; [`leftovers`]: what a dead front end left behind;
//! - [`network`]: the pod network (taps mirrored with the namespace's NICs);
//! - [`agent`]: the agent connection (usable alone against an agent on the host);
//! - [`config`]: the configuration schema and loader of both front ends (layers, defaults,
//!   "auto" discovery of the kernel, initramfs, VMM and virtiofsd);
//! - [`sandbox`]: the lifecycle; [`error`]: errors that name their phase.

pub mod agent;
pub mod cgroup;
pub mod child_fds;
pub mod config;
pub mod console;
pub mod error;
pub mod host_agent;
pub mod hybrid_vsock;
pub mod jail;
pub mod leftovers;
pub mod mount;
pub mod mountinfo;
pub mod naming;
pub mod network;
pub mod propagation;
pub mod run_dir;
pub mod sandbox;
pub mod sizing;
pub mod virtiofsd_process;
pub mod vmm_process;

pub use agent::{AgentConn, AgentEndpoint, ExitInfo};
/// The host <-> VMM contract, for front ends that need its types.
pub use bulkhead_vmm_contract as vmm_contract;
pub use error::{Phase, SandboxError, StdioError};
pub use sandbox::{NetBackend, Sandbox, SandboxConfig, SHARED_FS_TAG};
pub use sizing::{PodResources, VmSize};
pub use virtiofsd_process::{FsCache, FsConfinement, VirtiofsdOptions};
pub use vmm_process::VmExit;

/// The protocol crate's types used in this crate's API.
pub use bulkhead_protocol::resources::ResourceUpdate;
pub use bulkhead_protocol::stdio::StreamKind;
pub use bulkhead_protocol::types::{
    ContainerConfig, ContainerStats, DnsConfig, ExecConfig, ProcessRef, StdioConfig, WinSize,
};
