//! Container resource updates (UpdateContainer): the OCI `linux.resources` subset the
//! agent applies to a running container's cgroup, with range checks on the values the
//! kernel would refuse anyway, so a bad request is named before it reaches a cgroup file.

use crate::proto;
use crate::types::{validate_container_id, InvalidField};

/// New limits for a container; `None` leaves a limit as it is. `-1` means "max" (no
/// limit) for the signed fields, as in the OCI runtime spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceUpdate {
    /// OCI CPU shares (the agent derives cgroup v2 `cpu.weight`).
    pub cpu_shares: Option<u64>,
    /// `cpu.max` quota in microseconds per period, `-1` for unlimited.
    pub cpu_quota: Option<i64>,
    /// `cpu.max` period in microseconds.
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// `memory.max` in bytes, `-1` for unlimited.
    pub memory_limit: Option<i64>,
    /// OCI memory + swap in bytes, `-1` for unlimited.
    pub memory_swap: Option<i64>,
    /// `pids.max`, `-1` for unlimited (callers map the OCI "0: not set" to `None`).
    pub pids_limit: Option<i64>,
}

impl ResourceUpdate {
    pub fn is_empty(&self) -> bool {
        *self == ResourceUpdate::default()
    }

    /// Checks the ranges the kernel accepts (cgroup v2 `cpu.max` period 1 ms..1 s, shares
    /// within OCI's 2..=262144, "-1 or positive" limits, list syntax of cpusets).
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(s) = self.cpu_shares {
            if !(2..=262_144).contains(&s) {
                return Err(invalid("cpu_shares", format!("{s} is not in 2..=262144")));
            }
        }
        if let Some(q) = self.cpu_quota {
            if q == 0 || q < -1 {
                return Err(invalid(
                    "cpu_quota",
                    format!("{q} is neither -1 nor positive"),
                ));
            }
        }
        if let Some(p) = self.cpu_period {
            if !(1_000..=1_000_000).contains(&p) {
                return Err(invalid(
                    "cpu_period",
                    format!("{p} is not in 1000..=1000000"),
                ));
            }
        }
        for (field, list) in [
            ("cpuset_cpus", &self.cpuset_cpus),
            ("cpuset_mems", &self.cpuset_mems),
        ] {
            if let Some(list) = list {
                validate_cpu_list(field, list)?;
            }
        }
        for (field, value) in [
            ("memory_limit", self.memory_limit),
            ("memory_swap", self.memory_swap),
        ] {
            if let Some(v) = value {
                if v == 0 || v < -1 {
                    return Err(invalid(field, format!("{v} is neither -1 nor positive")));
                }
            }
        }
        if let (Some(limit), Some(swap)) = (self.memory_limit, self.memory_swap) {
            if limit > 0 && swap > 0 && swap < limit {
                return Err(invalid(
                    "memory_swap",
                    format!("{swap} is below the memory limit {limit} (it counts memory too)"),
                ));
            }
        }
        if self.memory_swap.is_some() && self.memory_limit.is_none() {
            return Err(invalid(
                "memory_swap",
                "set without memory_limit".to_owned(),
            ));
        }
        if let Some(p) = self.pids_limit {
            if p == 0 || p < -1 {
                return Err(invalid(
                    "pids_limit",
                    format!("{p} is neither -1 nor positive"),
                ));
            }
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: String) -> InvalidField {
    InvalidField { field, reason }
}

/// The kernel's list format: `0-3,5`, digits, commas and dashes, at most 256 bytes.
fn validate_cpu_list(field: &'static str, list: &str) -> Result<(), InvalidField> {
    let ok = list.len() <= 256
        && !list.is_empty()
        && list.split(',').all(|range| {
            let mut ends = range.splitn(2, '-');
            let is_num = |s: Option<&str>| {
                s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            };
            let first = ends.next();
            match ends.next() {
                None => is_num(first),
                last => is_num(first) && is_num(last),
            }
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{list:?} is not a cpu list")))
    }
}

impl From<&ResourceUpdate> for proto::Resources {
    fn from(u: &ResourceUpdate) -> Self {
        let mut r = proto::Resources::new();
        r.cpu_shares = u.cpu_shares;
        r.cpu_quota = u.cpu_quota;
        r.cpu_period = u.cpu_period;
        r.cpuset_cpus = u.cpuset_cpus.clone();
        r.cpuset_mems = u.cpuset_mems.clone();
        r.memory_limit = u.memory_limit;
        r.memory_swap = u.memory_swap;
        r.pids_limit = u.pids_limit;
        r
    }
}

impl From<&proto::Resources> for ResourceUpdate {
    fn from(r: &proto::Resources) -> Self {
        ResourceUpdate {
            cpu_shares: r.cpu_shares,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            memory_limit: r.memory_limit,
            memory_swap: r.memory_swap,
            pids_limit: r.pids_limit,
        }
    }
}

/// UpdateContainer, decoded and validated (agent side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRequest {
    pub container_id: String,
    pub resources: ResourceUpdate,
}

impl TryFrom<&proto::UpdateContainerRequest> for UpdateRequest {
    type Error = InvalidField;

    fn try_from(r: &proto::UpdateContainerRequest) -> Result<Self, InvalidField> {
        validate_container_id(&r.container_id)?;
        let resources = r
            .resources
            .as_ref()
            .map(ResourceUpdate::from)
            .unwrap_or_default();
        resources.validate()?;
        Ok(UpdateRequest {
            container_id: r.container_id.clone(),
            resources,
        })
    }
}

impl From<&UpdateRequest> for proto::UpdateContainerRequest {
    fn from(u: &UpdateRequest) -> Self {
        let mut r = proto::UpdateContainerRequest::new();
        r.container_id = u.container_id.clone();
        r.resources = Some(proto::Resources::from(&u.resources)).into();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ResourceUpdate {
        ResourceUpdate {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0-1,3".into()),
            cpuset_mems: Some("0".into()),
            memory_limit: Some(64 << 20),
            memory_swap: Some(-1),
            pids_limit: Some(100),
        }
    }

    #[test]
    fn round_trip_keeps_set_and_unset_fields() {
        for resources in [full(), ResourceUpdate::default()] {
            let req = UpdateRequest {
                container_id: "c1".into(),
                resources,
            };
            let wire = proto::UpdateContainerRequest::from(&req);
            assert_eq!(UpdateRequest::try_from(&wire).unwrap(), req);
        }
        // Unset is not zero on the wire.
        let wire = proto::Resources::from(&ResourceUpdate::default());
        assert_eq!(wire.memory_limit, None);
        assert!(ResourceUpdate::default().is_empty());
        assert!(!full().is_empty());
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases: [(&str, ResourceUpdate); 11] = [
            (
                "cpu_shares",
                ResourceUpdate {
                    cpu_shares: Some(1),
                    ..full()
                },
            ),
            (
                "cpu_quota",
                ResourceUpdate {
                    cpu_quota: Some(0),
                    ..full()
                },
            ),
            (
                "cpu_period",
                ResourceUpdate {
                    cpu_period: Some(10),
                    ..full()
                },
            ),
            (
                "cpuset_cpus",
                ResourceUpdate {
                    cpuset_cpus: Some("0-".into()),
                    ..full()
                },
            ),
            (
                "cpuset_mems",
                ResourceUpdate {
                    cpuset_mems: Some("a".into()),
                    ..full()
                },
            ),
            (
                "memory_limit",
                ResourceUpdate {
                    memory_limit: Some(-2),
                    ..full()
                },
            ),
            (
                "memory_swap",
                ResourceUpdate {
                    memory_swap: Some(1 << 20),
                    ..full()
                },
            ),
            (
                "pids_limit",
                ResourceUpdate {
                    pids_limit: Some(-5),
                    ..full()
                },
            ),
            (
                "pids_limit",
                ResourceUpdate {
                    pids_limit: Some(0),
                    ..full()
                },
            ),
            (
                "memory_swap",
                ResourceUpdate {
                    memory_limit: None,
                    ..full()
                },
            ),
            ("container_id", full()),
        ];
        for (field, resources) in cases {
            let mut req = UpdateRequest {
                container_id: "c1".into(),
                resources,
            };
            if field == "container_id" {
                req.container_id = "../x".into();
            }
            let err =
                UpdateRequest::try_from(&proto::UpdateContainerRequest::from(&req)).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        assert!(full().validate().is_ok());
        let unlimited = ResourceUpdate {
            cpu_quota: Some(-1),
            memory_limit: Some(-1),
            pids_limit: Some(-1),
            ..Default::default()
        };
        assert!(unlimited.validate().is_ok());
    }
}
