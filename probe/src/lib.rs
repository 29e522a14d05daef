//! The isolation lab's probe (`bulkhead-probe`), run inside a container by
//! `bulkhead compare`: what the workload sees of its kernel and of the host, which classic
//! escapes and abuses the kernel lets it attempt, and what basic operations cost.
//!
//! Every probe is safe for the kernel it runs on: access is proved, never used (a file is
//! opened for writing and closed, a module image the kernel will reject is offered, a disk
//! is mounted read-only and unmounted). The probe reports raw outcomes; the verdict
//! (blocked, contained to a guest kernel, or host exposed) is the comparer's, which knows
//! the host's side.

pub mod report;

#[cfg(target_os = "linux")]
pub mod abuses;
#[cfg(target_os = "linux")]
pub mod costs;
#[cfg(target_os = "linux")]
pub mod identity;
#[cfg(target_os = "linux")]
pub mod visibility;

/// What the comparer tells the probe about the host (environment variables).
#[derive(Debug, Clone, Default)]
pub struct HostHints {
    /// A random token in the host-side paths and processes the probe looks for.
    pub nonce: String,
    /// A host process (in the host's pid namespace) the workload should not see.
    pub marker_pid: Option<u32>,
    /// A file on the host's root filesystem (path from its root) holding the nonce.
    pub host_file: Option<String>,
    /// The host's network interfaces.
    pub host_interfaces: Vec<String>,
    /// A directory bind-mounted read-write from the host.
    pub rw_dir: Option<String>,
}

impl HostHints {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        HostHints {
            nonce: var("BULKHEAD_PROBE_NONCE").unwrap_or_default(),
            marker_pid: var("BULKHEAD_PROBE_MARKER_PID").and_then(|p| p.parse().ok()),
            host_file: var("BULKHEAD_PROBE_HOST_FILE"),
            host_interfaces: var("BULKHEAD_PROBE_HOST_IFACES")
                .map(|l| l.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            rw_dir: var("BULKHEAD_PROBE_RW_DIR"),
        }
    }
}
