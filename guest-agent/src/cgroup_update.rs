//! UpdateContainer: new cgroup v2 limits for a running container. The request becomes an
//! OCI `LinuxResources` and is applied with libcgroups' v2 manager (the code libcontainer
//! runs at create, so shares-to-weight and `cpu.max` follow the same rules); libcontainer
//! 0.7 itself has no update call.

use std::path::{Path, PathBuf};

use bulkhead_protocol::resources::ResourceUpdate;
use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::v2::manager::{Manager, V2ManagerError};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use thiserror::Error;

use crate::cgroup_stats::{cgroup_dir, CGROUP_ROOT};

#[derive(Debug, Error)]
pub enum UpdateError {
    #[error("cannot build the OCI resources")]
    Spec(#[source] oci_spec::OciSpecError),
    #[error("cannot open cgroup {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<V2ManagerError>,
    },
    #[error("cannot apply the limits to cgroup {path}")]
    Apply {
        path: PathBuf,
        #[source]
        source: Box<V2ManagerError>,
    },
}

/// The OCI resources for `update`. `swap_supported`: the cgroup has `memory.swap.max`
/// (a guest kernel without swap has none, and a swap limit means nothing there).
pub fn to_linux_resources(
    update: &ResourceUpdate,
    swap_supported: bool,
) -> Result<LinuxResources, UpdateError> {
    let mut resources = LinuxResourcesBuilder::default();
    let cpu_set = update.cpu_shares.is_some()
        || update.cpu_quota.is_some()
        || update.cpu_period.is_some()
        || update.cpuset_cpus.is_some()
        || update.cpuset_mems.is_some();
    if cpu_set {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(v) = update.cpu_shares {
            cpu = cpu.shares(v);
        }
        if let Some(v) = update.cpu_quota {
            cpu = cpu.quota(v);
        }
        if let Some(v) = update.cpu_period {
            cpu = cpu.period(v);
        }
        if let Some(v) = &update.cpuset_cpus {
            cpu = cpu.cpus(v.clone());
        }
        if let Some(v) = &update.cpuset_mems {
            cpu = cpu.mems(v.clone());
        }
        resources = resources.cpu(cpu.build().map_err(UpdateError::Spec)?);
    }
    if let Some(limit) = update.memory_limit {
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if let (Some(swap), true) = (update.memory_swap, swap_supported) {
            memory = memory.swap(swap);
        }
        resources = resources.memory(memory.build().map_err(UpdateError::Spec)?);
    }
    if let Some(limit) = update.pids_limit {
        let pids = LinuxPidsBuilder::default()
            .limit(limit)
            .build()
            .map_err(UpdateError::Spec)?;
        resources = resources.pids(pids);
    }
    resources.build().map_err(UpdateError::Spec)
}

/// Applies `update` to the container cgroup `cgroup_path` (its OCI `cgroupsPath`).
pub fn apply(cgroup_path: &Path, update: &ResourceUpdate) -> Result<(), UpdateError> {
    let dir = cgroup_dir(cgroup_path);
    let swap_supported = dir.join("memory.swap.max").exists();
    let resources = to_linux_resources(update, swap_supported)?;
    let manager =
        Manager::new(PathBuf::from(CGROUP_ROOT), cgroup_path.to_owned()).map_err(|source| {
            UpdateError::Open {
                path: dir.clone(),
                source: Box::new(source),
            }
        })?;
    let opt = ControllerOpt {
        resources: &resources,
        disable_oom_killer: false,
        oom_score_adj: None,
        freezer_state: None,
    };
    manager.apply(&opt).map_err(|source| UpdateError::Apply {
        path: dir,
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_given_limits_are_set() {
        let update = ResourceUpdate {
            cpu_quota: Some(20_000),
            cpu_period: Some(100_000),
            memory_limit: Some(32 << 20),
            memory_swap: Some(64 << 20),
            ..Default::default()
        };
        let r = to_linux_resources(&update, true).unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(20_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.shares(), None);
        assert_eq!(cpu.cpus(), &None);
        let memory = r.memory().as_ref().unwrap();
        assert_eq!(memory.limit(), Some(32 << 20));
        assert_eq!(memory.swap(), Some(64 << 20));
        assert!(r.pids().is_none());

        // No swap in the kernel: the swap limit is dropped, the memory limit kept.
        let r = to_linux_resources(&update, false).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().swap(), None);
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(32 << 20));

        let r = to_linux_resources(&ResourceUpdate::default(), true).unwrap();
        assert!(r.cpu().is_none() && r.memory().is_none() && r.pids().is_none());

        let update = ResourceUpdate {
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(-1),
            ..Default::default()
        };
        let r = to_linux_resources(&update, true).unwrap();
        assert_eq!(r.cpu().as_ref().unwrap().cpus().as_deref(), Some("0"));
        assert_eq!(r.pids().as_ref().unwrap().limit(), -1);
    }
}
