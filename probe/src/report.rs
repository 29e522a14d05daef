//! The probe's output (JSON on stdout), read by `bulkhead compare`.

use serde::{Deserialize, Serialize};

/// Everything one probe run found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub identity: Identity,
    pub results: Vec<ProbeResult>,
    pub costs: Costs,
}

/// What the workload sees of its machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub kernel: String,
    pub boot_id: String,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// `CapEff` of the probe, as hex, and how many capabilities that is.
    pub capabilities_hex: String,
    pub capabilities: u32,
    /// `Seccomp` of `/proc/self/status`: 0 none, 2 filter.
    pub seccomp_mode: u32,
    pub no_new_privs: bool,
}

/// The kind of check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// What the workload can see of the host.
    Visibility,
    /// What the workload can do: escapes and abuses.
    Abuse,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The kernel let it happen (or showed it).
    Allowed,
    /// The kernel refused (or hid it).
    Refused,
    /// Could not be tried here (no such device, feature missing).
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub id: String,
    pub group: Group,
    pub title: String,
    pub outcome: Outcome,
    /// What was seen: the errno, a count, the path found.
    pub detail: String,
    /// The probe saw something that is certainly the host's (the comparer's nonce, its
    /// marker process, its file), whatever kernel it ran on.
    pub host_evidence: bool,
}

/// Measured costs inside the workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    pub getpid_ns: f64,
    pub open_close_ns: f64,
    pub mmap_munmap_ns: f64,
    /// Sequential write (with fsync) and read of a file, MiB/s.
    pub rootfs_write_mib_s: f64,
    pub rootfs_read_mib_s: f64,
    pub volume_write_mib_s: Option<f64>,
    pub volume_read_mib_s: Option<f64>,
}
