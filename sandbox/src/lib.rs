//! Host-side runtime of one Bulkhead pod: one microVM per sandbox. Used by the CLI
//! (`bulkhead run`) and the containerd shim.
//!
//! [`Sandbox::start`] creates the run directory, starts virtiofsd and `bulkhead-vmm`,
//! connects to the guest agent over hybrid vsock, checks its version and sets the sandbox
//! up; the container operations are typed async methods on [`Sandbox`];
//! [`Sandbox::destroy`] powers the VM off and leaves nothing behind.
//!
//! - [`hybrid_vsock`]: `CONNECT <port>` to a guest port through the VMM's unix socket;
//! - [`vmm_process`] / [`virtiofsd_process`]: the two child processes;
//! - [`run_dir`]: the per-sandbox directory and its safe removal;
//! - [`sizing`]: VM size from the pod's limits;
//! - [`agent`]: the agent connection (usable alone against an agent on the host);
//! - [`sandbox`]: the lifecycle; [`error`]: errors that name their phase.

pub mod agent;
pub mod child_fds;
pub mod console;
pub mod error;
pub mod hybrid_vsock;
pub mod run_dir;
pub mod sandbox;
pub mod sizing;
pub mod virtiofsd_process;
pub mod vmm_process;

pub use agent::{AgentConn, AgentEndpoint, ExitInfo};
pub use error::{Phase, SandboxError, StdioError};
pub use sandbox::{Sandbox, SandboxConfig, SHARED_FS_TAG};
pub use sizing::{PodResources, VmSize};
pub use virtiofsd_process::{FsCache, FsSandbox, VirtiofsdOptions};
pub use vmm_process::VmExit;

/// The protocol crate's types used in this crate's API.
pub use bulkhead_protocol::resources::ResourceUpdate;
pub use bulkhead_protocol::stdio::StreamKind;
pub use bulkhead_protocol::types::{
    ContainerConfig, ContainerStats, DnsConfig, ExecConfig, ProcessRef, StdioConfig, WinSize,
};
