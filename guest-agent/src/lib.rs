//! bulkhead-agent: PID 1 of the Bulkhead guest. Serves the agent API
//! (`bulkhead-protocol`) over vsock and runs OCI containers with youki's
//! libcontainer. The binary (`main.rs`) only reads options, sets up logging
//! and PID 1 duties, and runs [`run`].

pub mod cap_bounding;
pub mod cgroup_stats;
pub mod cgroup_update;
pub mod config;
pub mod container;
pub mod error;
pub mod fd_stream;
pub mod host_only;
pub mod init;
pub mod logger;
pub mod network;
pub mod process_io;
pub mod reaper;
pub mod sandbox;
pub mod seccomp_compat;
pub mod server;
pub mod service;
pub mod stall_watch;

use std::sync::Arc;

use tokio::sync::watch;

pub use error::AgentError;
use sandbox::{Sandbox, SandboxOptions};

/// Serves the agent until DestroySandbox. Returns after containers are gone
/// and the reply had a moment to leave; the caller powers off or exits.
pub async fn run(opts: &config::Options, manage_system: bool) -> Result<(), AgentError> {
    let sandbox = Sandbox::new(SandboxOptions {
        state_dir: opts.state_dir.clone(),
        manage_system,
    })?;
    sandbox.spawn_oom_watcher();
    stall_watch::start(nix::unistd::gettid().as_raw());
    if manage_system {
        // Every sandbox has a loopback, with or without a pod network.
        network::bring_up_loopback(&network::Netlink::open()?).await?;
    }
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let _server = server::start(Arc::clone(&sandbox), &opts.api, &opts.stdio, shutdown_tx).await?;
    while !*shutdown_rx.borrow_and_update() {
        if shutdown_rx.changed().await.is_err() {
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(())
}
