//! VM sizing: vCPUs and memory of a pod's microVM from the pod's limits plus a fixed guest
//! overhead (the guest kernel, the agent, page cache for the shared filesystem).
//!
//! - vCPUs = [`GUEST_OVERHEAD_VCPUS`] + ceil(cpu limit in cores); no CPU limit adds nothing.
//!   Capped at the host's CPU count and at [`MAX_VCPUS`].
//! - memory = [`GUEST_OVERHEAD_MIB`] + ceil(memory limit in MiB), or
//!   + [`UNLIMITED_POD_MIB`] when the pod has no memory limit. Capped at [`MAX_MEMORY_MIB`].
//!
//! The guest's cgroups still enforce each container's own limits; the VM size only bounds
//! what the pod as a whole can take from the host.

use std::collections::HashMap;

use bulkhead_vmm_contract::limits;
use thiserror::Error;

/// vCPUs the guest gets on top of the pod's CPU limit (the agent, the kernel's own work, and
/// the whole pod when it has no limit).
pub const GUEST_OVERHEAD_VCPUS: u32 = 1;
/// MiB the guest gets on top of the pod's memory limit: kernel, agent, page tables,
/// virtio buffers.
pub const GUEST_OVERHEAD_MIB: u64 = 128;
/// MiB given to a pod that has no memory limit (on top of the overhead).
pub const UNLIMITED_POD_MIB: u64 = 256;
/// Most vCPUs the VMM supports (the contract's limit, in this module's units).
pub const MAX_VCPUS: u32 = limits::MAX_VCPUS as u32;
/// Least memory the VMM accepts (the contract's limit).
pub const MIN_MEMORY_MIB: u64 = limits::MIN_MEMORY_MIB as u64;
/// Most memory the VMM accepts (the contract's limit).
pub const MAX_MEMORY_MIB: u64 = limits::MAX_MEMORY_MIB as u64;

/// CRI annotations that carry the pod's total limits (containerd sets them on the sandbox).
pub const ANNOTATION_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANNOTATION_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const ANNOTATION_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// A pod's resource limits, from CRI annotations or CLI flags. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodResources {
    /// CPU limit in millicores (1000 = one core).
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
}

/// The size of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("annotation {key}: {value:?} is not a valid number")]
pub struct BadAnnotation {
    pub key: &'static str,
    pub value: String,
}

impl PodResources {
    /// Reads the CRI sandbox annotations. Absent, zero or negative values (CRI's "no limit")
    /// give `None`; text that is not a number is an error.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Self, BadAnnotation> {
        let num = |key: &'static str| -> Result<Option<i64>, BadAnnotation> {
            match annotations.get(key) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<i64>()
                    .map(|n| (n > 0).then_some(n))
                    .map_err(|_| BadAnnotation {
                        key,
                        value: v.clone(),
                    }),
            }
        };
        let quota = num(ANNOTATION_CPU_QUOTA)?;
        let period = num(ANNOTATION_CPU_PERIOD)?;
        let memory = num(ANNOTATION_MEMORY)?;
        let cpu_millis = match (quota, period) {
            (Some(q), Some(p)) => Some(div_ceil((q as u64).saturating_mul(1000), p as u64)),
            _ => None,
        };
        Ok(PodResources {
            cpu_millis,
            memory_bytes: memory.map(|m| m as u64),
        })
    }
}

impl VmSize {
    /// The VM for a pod with these limits on a host with `host_cpus` CPUs.
    pub fn for_pod(resources: &PodResources, host_cpus: u32) -> Self {
        let pod_vcpus = resources
            .cpu_millis
            .map(|m| div_ceil(m, 1000))
            .unwrap_or(0)
            .min(u64::from(MAX_VCPUS)) as u32;
        let vcpus = (GUEST_OVERHEAD_VCPUS + pod_vcpus)
            .min(host_cpus.max(1))
            .min(MAX_VCPUS);
        let pod_mib = resources
            .memory_bytes
            .map(|b| div_ceil(b, 1 << 20))
            .unwrap_or(UNLIMITED_POD_MIB);
        let memory_mib = GUEST_OVERHEAD_MIB
            .saturating_add(pod_mib)
            .clamp(MIN_MEMORY_MIB, MAX_MEMORY_MIB);
        VmSize { vcpus, memory_mib }
    }

    /// [`VmSize::for_pod`] on this host.
    pub fn for_pod_on_this_host(resources: &PodResources) -> Self {
        Self::for_pod(resources, host_cpus())
    }
}

/// The CPUs this process may run on (its affinity and cgroup quota considered), at least 1.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

fn div_ceil(a: u64, b: u64) -> u64 {
    if b == 0 {
        return 0;
    }
    a.div_ceil(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_pod_gets_the_overhead_and_the_default() {
        let size = VmSize::for_pod(&PodResources::default(), 8);
        assert_eq!(size.vcpus, GUEST_OVERHEAD_VCPUS);
        assert_eq!(size.memory_mib, GUEST_OVERHEAD_MIB + UNLIMITED_POD_MIB);
    }

    #[test]
    fn limits_round_up_and_add_the_overhead() {
        let r = PodResources {
            cpu_millis: Some(1500),
            memory_bytes: Some(512 * 1024 * 1024 + 1),
        };
        let size = VmSize::for_pod(&r, 8);
        assert_eq!(size.vcpus, 1 + 2);
        assert_eq!(size.memory_mib, 128 + 513);
        let small = PodResources {
            cpu_millis: Some(100),
            memory_bytes: Some(1),
        };
        assert_eq!(
            VmSize::for_pod(&small, 8),
            VmSize {
                vcpus: 2,
                memory_mib: 129
            }
        );
    }

    #[test]
    fn caps_hold_for_huge_and_odd_inputs() {
        let huge = PodResources {
            cpu_millis: Some(u64::MAX),
            memory_bytes: Some(u64::MAX),
        };
        let size = VmSize::for_pod(&huge, 1000);
        assert_eq!(size.vcpus, MAX_VCPUS);
        assert_eq!(size.memory_mib, MAX_MEMORY_MIB);
        // Never more vCPUs than the host has, never zero.
        assert_eq!(VmSize::for_pod(&huge, 2).vcpus, 2);
        assert_eq!(VmSize::for_pod(&huge, 0).vcpus, 1);
    }

    #[test]
    fn this_host_has_cpus() {
        assert!(host_cpus() >= 1);
        assert!(VmSize::for_pod_on_this_host(&PodResources::default()).vcpus <= host_cpus());
    }

    #[test]
    fn cri_annotations() {
        let mut a = HashMap::new();
        a.insert(ANNOTATION_CPU_QUOTA.to_string(), "150000".to_string());
        a.insert(ANNOTATION_CPU_PERIOD.to_string(), "100000".to_string());
        a.insert(ANNOTATION_MEMORY.to_string(), "268435456".to_string());
        let r = PodResources::from_annotations(&a).unwrap();
        assert_eq!(r.cpu_millis, Some(1500));
        assert_eq!(r.memory_bytes, Some(256 << 20));

        // CRI writes -1 / 0 for "no limit"; a quota without a period means nothing.
        a.insert(ANNOTATION_CPU_QUOTA.to_string(), "-1".to_string());
        a.insert(ANNOTATION_MEMORY.to_string(), "0".to_string());
        assert_eq!(
            PodResources::from_annotations(&a).unwrap(),
            PodResources::default()
        );
        a.insert(ANNOTATION_MEMORY.to_string(), "1Gi".to_string());
        let err = PodResources::from_annotations(&a).unwrap_err();
        assert_eq!(err.key, ANNOTATION_MEMORY);
        assert!(PodResources::from_annotations(&HashMap::new())
            .unwrap()
            .cpu_millis
            .is_none());
    }
}
