//! One sandbox's jail resources, held for the sandbox's life: its uid/gid and its cgroup.
//! [`SandboxJail::plan`] turns them into the [`JailPlan`] the VMM is spawned with.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::cgroup::{CgroupLimits, SandboxCgroup};
use super::ids::JailId;
use super::plan::{JailContents, JailPlan};
use super::{JailError, JailSettings};

/// How long removing the cgroup waits for the killed processes to leave it.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct SandboxJail {
    // The cgroup goes before the id: the id must stay taken until every process is gone.
    cgroup: Option<SandboxCgroup>,
    id: JailId,
}

impl SandboxJail {
    /// Takes a uid for sandbox `name` and creates its cgroup, sized for a VM of `vcpus` and
    /// `memory_mib`.
    pub fn prepare(
        settings: &JailSettings,
        name: &str,
        vcpus: u32,
        memory_mib: u64,
    ) -> Result<Self, JailError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::NotRoot);
        }
        let id = JailId::allocate(&settings.ids_dir, settings.id_base, settings.id_count, name)?;
        let cgroup = match &settings.cgroup_parent {
            Some(parent) => {
                let limits = CgroupLimits::for_vm(vcpus, memory_mib, settings.memory_overhead_mib);
                // The uid makes the name unique among live sandboxes, whatever their run root.
                let cgroup_name = format!("{name}-{}", id.uid());
                Some(SandboxCgroup::create(parent, &cgroup_name, &limits)?)
            }
            None => None,
        };
        Ok(SandboxJail { cgroup, id })
    }

    pub fn uid(&self) -> u32 {
        self.id.uid()
    }

    pub fn gid(&self) -> u32 {
        self.id.gid()
    }

    pub fn cgroup(&self) -> Option<&SandboxCgroup> {
        self.cgroup.as_ref()
    }

    /// The cgroups' `cgroup.procs` for a child to move itself in (none without a cgroup).
    pub fn cgroup_procs(&self) -> Result<Vec<OwnedFd>, JailError> {
        match &self.cgroup {
            Some(cgroup) => cgroup.procs_fds(),
            None => Ok(Vec::new()),
        }
    }

    /// The plan for the VMM's child process.
    pub fn plan(&self, contents: &JailContents<'_>) -> Result<JailPlan, JailError> {
        JailPlan::new(contents, self.uid(), self.gid(), self.cgroup_procs()?)
    }

    /// Removes the cgroup once the VMM and virtiofsd have gone; the uid is released on drop.
    pub fn release(&mut self) -> Result<(), JailError> {
        match self.cgroup.as_mut() {
            Some(cgroup) => cgroup.remove(CGROUP_EMPTY_WAIT),
            None => Ok(()),
        }
    }
}
