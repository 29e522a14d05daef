//! The contract between the Bulkhead host side (shim, CLI) and the guest
//! agent: the ttrpc service generated from `proto/agent.proto`, Rust domain
//! types with validated conversions from and to the protobuf messages, the
//! stdio stream header, and the version handshake.
//!
//! Protobuf types stay at the edges: the agent's core and the shim work on the
//! types in [`types`]; [`proto`] and [`ttrpc_api`] are only touched where a
//! request is decoded or sent.

pub mod client;
pub mod network;
pub mod network_proto;
pub mod resources;
pub mod stdio;
pub mod types;
pub mod version;

/// Protobuf messages of `bulkhead.agent.v1` (generated).
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_imports,
    unused_results,
    unused_mut,
    unsafe_code
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// Async ttrpc client (`AgentClient`) and server (`Agent` trait,
/// `create_agent`) of the `Agent` service (generated).
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_results,
    unused_mut,
    unused_qualifications
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use agent as proto;
pub use agent_ttrpc as ttrpc_api;
pub use version::{check_protocol_version, VersionMismatch, PROTOCOL_VERSION};

/// vsock port of the agent's ttrpc server.
pub const AGENT_PORT: u32 = 1024;
/// vsock port the host connects to for each process stdio stream.
pub const STDIO_PORT: u32 = 1025;
/// Where the agent mounts the sandbox's shared virtio-fs directory.
pub const SHARED_FS_MOUNT_POINT: &str = "/run/bulkhead/shared";
/// Directory holding the sandbox's `resolv.conf` and `hostname`, written by
/// CreateSandbox for the host to bind-mount into containers.
pub const SANDBOX_ETC_DIR: &str = "/run/bulkhead/sandbox";
