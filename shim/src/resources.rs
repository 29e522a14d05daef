//! containerd's Update request: the OCI `LinuxResources` it carries (JSON in an Any, as
//! containerd's typeurl encodes runtime-spec types) to the agent's [`ResourceUpdate`].
//!
//! Applied: CPU shares, quota, period, cpuset cpus and mems, memory limit and swap, pids
//! limit. Zero means "not set" there (as in runc). Device rules are fixed at Create and
//! ignored (CRI resends the container's whole resources, devices included); limits the
//! guest does not apply (block I/O, huge pages, unified, rdma, network, memory
//! reservation and the like) are refused rather than dropped.

use bulkhead_sandbox::ResourceUpdate;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use serde_json::{Map, Value};

use crate::error::{Result, ShimError};

/// The type URL containerd gives runtime-spec `LinuxResources`.
pub const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

fn invalid(msg: String) -> ShimError {
    ShimError::InvalidArgument(msg)
}

/// Decodes an Update request's resources.
pub fn from_any(any: &Any) -> Result<ResourceUpdate> {
    if !any.type_url.is_empty() && any.type_url != LINUX_RESOURCES_TYPE_URL {
        return Err(invalid(format!(
            "update: resources of type {:?}, expected {LINUX_RESOURCES_TYPE_URL}",
            any.type_url
        )));
    }
    if any.value.is_empty() {
        return Ok(ResourceUpdate::default());
    }
    let value: Value = serde_json::from_slice(&any.value)
        .map_err(|e| invalid(format!("update: the resources are not JSON: {e}")))?;
    from_json(&value)
}

/// Decodes OCI `LinuxResources` JSON.
pub fn from_json(value: &Value) -> Result<ResourceUpdate> {
    let top = object(value, "resources")?;
    for (key, v) in top {
        match key.as_str() {
            "cpu" | "memory" | "pids" | "devices" => {}
            _ if is_unset(v) => {}
            _ => {
                return Err(invalid(format!(
                    "update: resources.{key} cannot be changed in a bulkhead guest"
                )))
            }
        }
    }
    let mut u = ResourceUpdate::default();
    if let Some(cpu) = top.get("cpu") {
        let cpu = object(cpu, "cpu")?;
        only(cpu, "cpu", &["shares", "quota", "period", "cpus", "mems"])?;
        u.cpu_shares = uint(cpu, "cpu", "shares")?;
        u.cpu_quota = int(cpu, "cpu", "quota")?;
        u.cpu_period = uint(cpu, "cpu", "period")?;
        u.cpuset_cpus = string(cpu, "cpu", "cpus")?;
        u.cpuset_mems = string(cpu, "cpu", "mems")?;
    }
    if let Some(memory) = top.get("memory") {
        let memory = object(memory, "memory")?;
        // `disableOOMKiller` false and `swappiness` absent are what every client sends.
        only(memory, "memory", &["limit", "swap", "disableOOMKiller"])?;
        if memory.get("disableOOMKiller") == Some(&Value::Bool(true)) {
            return Err(invalid(
                "update: resources.memory.disableOOMKiller cannot be changed in a bulkhead guest"
                    .into(),
            ));
        }
        u.memory_limit = int(memory, "memory", "limit")?;
        u.memory_swap = int(memory, "memory", "swap")?;
    }
    if let Some(pids) = top.get("pids") {
        let pids = object(pids, "pids")?;
        only(pids, "pids", &["limit"])?;
        u.pids_limit = int(pids, "pids", "limit")?;
    }
    u.validate().map_err(|e| invalid(format!("update: {e}")))?;
    Ok(u)
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| invalid(format!("update: resources {what} is not an object")))
}

/// A null, zero, empty string, empty list or empty object: what Go's JSON leaves for an
/// unset field.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_unset),
    }
}

/// Refuses set fields other than `known`.
fn only(map: &Map<String, Value>, what: &str, known: &[&str]) -> Result<()> {
    match map
        .iter()
        .find(|(k, v)| !known.contains(&k.as_str()) && !is_unset(v))
    {
        Some((k, _)) => Err(invalid(format!(
            "update: resources.{what}.{k} cannot be changed in a bulkhead guest"
        ))),
        None => Ok(()),
    }
}

fn int(map: &Map<String, Value>, what: &str, key: &str) -> Result<Option<i64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(0) => Ok(None),
            Some(n) => Ok(Some(n)),
            None => Err(invalid(format!(
                "update: resources.{what}.{key} is not an integer: {v}"
            ))),
        },
    }
}

fn uint(map: &Map<String, Value>, what: &str, key: &str) -> Result<Option<u64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(None),
            Some(n) => Ok(Some(n)),
            None => Err(invalid(format!(
                "update: resources.{what}.{key} is not an unsigned integer: {v}"
            ))),
        },
    }
}

fn string(map: &Map<String, Value>, what: &str, key: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(format!(
            "update: resources.{what}.{key} is not a string: {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn any(v: Value) -> Any {
        let mut a = Any::new();
        a.type_url = LINUX_RESOURCES_TYPE_URL.into();
        a.value = serde_json::to_vec(&v).unwrap();
        a
    }

    #[test]
    fn what_ctr_and_cri_send_is_translated() {
        // CRI's UpdateContainerResources: the container's resources, devices included.
        let u = from_any(&any(json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": 67108864, "swap": 67108864},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": ""},
            "pids": {"limit": 0}
        })))
        .unwrap();
        assert_eq!(
            u,
            ResourceUpdate {
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                cpuset_cpus: Some("0".into()),
                cpuset_mems: None,
                memory_limit: Some(64 << 20),
                memory_swap: Some(64 << 20),
                pids_limit: None,
            }
        );
        // `ctr task update --memory-limit`: only the memory.
        let u = from_any(&any(json!({"memory": {"limit": 1048576}}))).unwrap();
        assert_eq!(u.memory_limit, Some(1 << 20));
        assert_eq!(u.cpu_shares, None);
        // Unlimited.
        let u = from_any(&any(
            json!({"memory": {"limit": -1}, "pids": {"limit": -1}}),
        ))
        .unwrap();
        assert_eq!((u.memory_limit, u.pids_limit), (Some(-1), Some(-1)));
        // Nothing at all.
        assert!(from_any(&Any::new()).unwrap().is_empty());
    }

    #[test]
    fn what_the_guest_cannot_apply_is_refused_by_name() {
        for (resources, needle) in [
            (json!({"blockIO": {"weight": 10}}), "resources.blockIO"),
            (
                json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}),
                "hugepageLimits",
            ),
            (
                json!({"unified": {"memory.high": "1"}}),
                "resources.unified",
            ),
            (
                json!({"memory": {"limit": 1048576, "reservation": 1}}),
                "memory.reservation",
            ),
            (
                json!({"memory": {"limit": 1048576, "disableOOMKiller": true}}),
                "disableOOMKiller",
            ),
            (
                json!({"cpu": {"realtimeRuntime": 5}}),
                "cpu.realtimeRuntime",
            ),
            (json!({"cpu": {"shares": "many"}}), "cpu.shares"),
            (json!({"cpu": {"period": 10}}), "cpu_period"),
            (json!({"memory": 5}), "memory"),
        ] {
            let err = from_any(&any(resources.clone())).unwrap_err();
            let ShimError::InvalidArgument(msg) = &err else {
                panic!("{err:?}");
            };
            assert!(msg.contains(needle), "{resources}: {msg}");
        }
        // Empty leftovers Go's JSON writes are fine.
        assert!(from_any(&any(json!({"unified": {}, "blockIO": null}))).is_ok());
        let mut other = any(json!({}));
        other.type_url = "types.containerd.io/WindowsResources".into();
        assert!(from_any(&other).is_err());
        let mut garbage = any(json!({}));
        garbage.value = b"{".to_vec();
        assert!(from_any(&garbage).is_err());
    }
}
