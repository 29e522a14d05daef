//! The VMM's jail, Firecracker-jailer style, for both front ends: each sandbox's
//! `bulkhead-vmm` runs
//!
//! - as its own unprivileged uid and gid ([`ids`]: allocated per sandbox, never shared by two
//!   live sandboxes), with no capabilities, an empty bounding set and no supplementary groups;
//! - as PID 1 of new PID, mount, IPC and UTS namespaces, in the pod's network namespace
//!   (or a new, empty one when the pod has none);
//! - with its root `pivot_root`ed into a private read-only tmpfs ([`plan`]) that holds only
//!   `/bulkhead-vmm`, `/kernel` and `/initrd` (read-only binds) and `/dev/kvm` (plus
//!   `/dev/vhost-net` when the NICs use it), device nodes owned by its uid; every socket and
//!   log it uses is an inherited descriptor, so the jail has no writable directory at all;
//! - in a cgroup of its own with virtiofsd ([`cgroup`]): memory (guest memory plus a
//!   measured overhead), CPU (the vCPUs plus one) and a pid limit.
//!
//! [`enter`] performs the steps in the forked child, before `exec`; the VMM adds its own
//! seccomp filters once set up.

pub mod cgroup;
pub mod enter;
pub mod ids;
pub mod plan;
pub mod sandbox_jail;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use cgroup::{CgroupLimits, SandboxCgroup};
pub use ids::{JailId, DEFAULT_ID_BASE, DEFAULT_ID_COUNT};
pub use plan::{JailContents, JailPlan};
pub use sandbox_jail::SandboxJail;

/// Memory the VMM and virtiofsd use beyond guest memory, added to the sandbox cgroup's
/// `memory.max` (measured in the harness: see docs/security.md).
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u64 = 96;

/// The cgroup (below the cgroup2 root) that holds one cgroup per jailed sandbox.
pub const DEFAULT_CGROUP_PARENT: &str = "bulkhead-sandboxes";

/// Where the id allocation keeps its lock files.
pub const DEFAULT_IDS_DIR: &str = "/run/bulkhead/jail-ids";

/// How sandboxes are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSettings {
    /// The first uid/gid handed out, and how many there are.
    pub id_base: u32,
    pub id_count: u32,
    /// Lock files of the allocated ids.
    pub ids_dir: PathBuf,
    /// Below the cgroup2 root; `None`: no cgroup of its own (the VMM stays in the caller's).
    pub cgroup_parent: Option<PathBuf>,
    /// Added to guest memory for the cgroup's `memory.max`.
    pub memory_overhead_mib: u64,
}

impl Default for JailSettings {
    fn default() -> Self {
        JailSettings {
            id_base: DEFAULT_ID_BASE,
            id_count: DEFAULT_ID_COUNT,
            ids_dir: PathBuf::from(DEFAULT_IDS_DIR),
            cgroup_parent: Some(PathBuf::from(DEFAULT_CGROUP_PARENT)),
            memory_overhead_mib: DEFAULT_MEMORY_OVERHEAD_MIB,
        }
    }
}

#[derive(Debug, Error)]
pub enum JailError {
    #[error("the jail needs root (the VMM is started as root and drops to its own uid)")]
    NotRoot,
    #[error("cannot allocate a uid for the sandbox in {dir}")]
    IdsDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("all {count} jail uids from {base} are in use")]
    IdsExhausted { base: u32, count: u32 },
    #[error("the jail's uid range {base}+{count} is invalid (0, overflow, or includes root)")]
    IdRange { base: u32, count: u32 },
    #[error(
        "{0} is dynamically linked; a jailed VMM must be a static binary (scripts/build-static.sh \
         builds one), or turn the jail off with [vm] jail = false"
    )]
    NotStatic(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} contains a NUL byte")]
    Nul(PathBuf),
    #[error("no cgroup2 hierarchy on this host for the sandbox's cgroup")]
    NoCgroup2,
    #[error("cannot {what} the sandbox cgroup {path}")]
    Cgroup {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
