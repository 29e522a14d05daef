//! Per-pod VM knobs from pod annotations of our own prefix (`io.bulkhead.vm.<name>`):
//! vCPUs, memory and extra kernel parameters. Each is honoured only when the
//! configuration's `[shim] enable_annotations` names it (Kata's `enable_annotations`);
//! any other `io.bulkhead.*` annotation, or one not allowed, is refused with an error
//! naming it, so a pod author can never size the VM behind the administrator's back.

use std::collections::HashMap;

use bulkhead_sandbox::config::VmAnnotation;
use bulkhead_sandbox::sizing::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use bulkhead_sandbox::VmSize;

use crate::error::{Result, ShimError};

/// Every annotation of ours starts with this.
pub const PREFIX: &str = "io.bulkhead.";
/// The VM knobs: `io.bulkhead.vm.<name>` with the names of [`VmAnnotation`].
pub const VM_PREFIX: &str = "io.bulkhead.vm.";
/// Kernel parameters an annotation may not set: the guest's init is the agent, and the
/// agent's own settings are the runtime's.
const RESERVED_KERNEL_PARAMS: &[&str] = &["init", "rdinit"];
const RESERVED_KERNEL_PARAM_PREFIX: &str = "bulkhead.";
/// At most this many bytes of extra kernel parameters.
const MAX_KERNEL_PARAMS_BYTES: usize = 1024;

/// What a pod's annotations change in its VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmOverrides {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub kernel_params: Option<String>,
}

impl VmOverrides {
    /// Reads the `io.bulkhead.*` annotations; `allowed` is `[shim] enable_annotations`.
    pub fn from_annotations(
        annotations: &HashMap<String, String>,
        allowed: &[VmAnnotation],
    ) -> Result<Self> {
        let mut o = VmOverrides::default();
        let mut keys: Vec<&String> = annotations
            .keys()
            .filter(|k| k.starts_with(PREFIX))
            .collect();
        keys.sort();
        for key in keys {
            let value = annotations[key].trim();
            let knob = key
                .strip_prefix(VM_PREFIX)
                .and_then(|name| VmAnnotation::ALL.into_iter().find(|a| a.name() == name))
                .ok_or_else(|| {
                    let known: Vec<String> = VmAnnotation::ALL
                        .iter()
                        .map(|a| format!("{VM_PREFIX}{}", a.name()))
                        .collect();
                    invalid(format!(
                        "unknown annotation {key} (Bulkhead's are {})",
                        known.join(", ")
                    ))
                })?;
            if !allowed.contains(&knob) {
                return Err(invalid(format!(
                    "annotation {key} is not allowed: the runtime's configuration does not \
                     name \"{}\" in [shim] enable_annotations",
                    knob.name()
                )));
            }
            match knob {
                VmAnnotation::Vcpus => {
                    o.vcpus = Some(number(key, value, 1, u64::from(MAX_VCPUS))? as u32)
                }
                VmAnnotation::MemoryMib => {
                    o.memory_mib = Some(number(key, value, MIN_MEMORY_MIB, MAX_MEMORY_MIB)?)
                }
                VmAnnotation::KernelParams => o.kernel_params = Some(kernel_params(key, value)?),
            }
        }
        Ok(o)
    }

    /// The size with the overrides applied.
    pub fn size(&self, mut size: VmSize) -> VmSize {
        if let Some(v) = self.vcpus {
            size.vcpus = v;
        }
        if let Some(m) = self.memory_mib {
            size.memory_mib = m;
        }
        size
    }
}

fn invalid(message: String) -> ShimError {
    ShimError::InvalidArgument(message)
}

fn number(key: &str, value: &str, min: u64, max: u64) -> Result<u64> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            invalid(format!(
                "annotation {key}: {value:?} is not a number from {min} to {max}"
            ))
        })
}

/// Space-separated `name` or `name=value` words of plain characters; none of them the
/// guest's init or the agent's own parameters.
fn kernel_params(key: &str, value: &str) -> Result<String> {
    if value.len() > MAX_KERNEL_PARAMS_BYTES {
        return Err(invalid(format!(
            "annotation {key}: longer than {MAX_KERNEL_PARAMS_BYTES} bytes"
        )));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "._,:=/+-".contains(c);
    for word in value.split_whitespace() {
        if !word.chars().all(plain) {
            return Err(invalid(format!(
                "annotation {key}: {word:?} has a character other than letters, digits and ._,:=/+-"
            )));
        }
        let name = word.split('=').next().unwrap_or_default();
        if RESERVED_KERNEL_PARAMS.contains(&name) || name.starts_with(RESERVED_KERNEL_PARAM_PREFIX)
        {
            return Err(invalid(format!(
                "annotation {key}: the kernel parameter {name} is the runtime's"
            )));
        }
    }
    Ok(value.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ALL: &[VmAnnotation] = &VmAnnotation::ALL;

    #[test]
    fn allowed_annotations_change_the_vm() {
        let o = VmOverrides::from_annotations(
            &ann(&[
                ("io.bulkhead.vm.vcpus", "2"),
                ("io.bulkhead.vm.memory_mib", "768"),
                ("io.bulkhead.vm.kernel_params", " quiet  panic=5 "),
                ("io.kubernetes.cri.sandbox-id", "p"),
            ]),
            ALL,
        )
        .unwrap();
        assert_eq!(o.kernel_params.as_deref(), Some("quiet panic=5"));
        let size = o.size(VmSize {
            vcpus: 1,
            memory_mib: 384,
        });
        assert_eq!(
            size,
            VmSize {
                vcpus: 2,
                memory_mib: 768
            }
        );
        assert_eq!(
            VmOverrides::from_annotations(&ann(&[]), &[]).unwrap(),
            VmOverrides::default()
        );
    }

    #[test]
    fn an_annotation_not_allowed_is_refused_by_name() {
        let e = VmOverrides::from_annotations(
            &ann(&[("io.bulkhead.vm.vcpus", "2")]),
            &[VmAnnotation::MemoryMib],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("annotation io.bulkhead.vm.vcpus is not allowed"),
            "{e}"
        );
        assert!(e.contains("enable_annotations"), "{e}");
        let e = VmOverrides::from_annotations(&ann(&[("io.bulkhead.vm.gpus", "1")]), ALL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown annotation io.bulkhead.vm.gpus"), "{e}");
        assert!(e.contains("io.bulkhead.vm.vcpus"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (k, v, want) in [
            ("io.bulkhead.vm.vcpus", "0", "not a number from 1"),
            ("io.bulkhead.vm.vcpus", "lots", "not a number"),
            ("io.bulkhead.vm.memory_mib", "1", "not a number from"),
            (
                "io.bulkhead.vm.kernel_params",
                "init=/bin/sh",
                "init is the runtime's",
            ),
            (
                "io.bulkhead.vm.kernel_params",
                "bulkhead.log_format=text",
                "is the runtime's",
            ),
            ("io.bulkhead.vm.kernel_params", "a;b", "has a character"),
        ] {
            let e = VmOverrides::from_annotations(&ann(&[(k, v)]), ALL)
                .unwrap_err()
                .to_string();
            assert!(e.contains(k) && e.contains(want), "{k}={v}: {e}");
        }
    }
}
