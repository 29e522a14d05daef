//! The pod network as an OCI spec names it, and what the guest gets instead. CRI puts the
//! namespace CNI made (`/var/run/netns/cni-…`) into every container's spec as the `network`
//! namespace path. That path exists on the host only: the VM's NIC is wired into that
//! namespace on the host side (`bulkhead_sandbox::network`), and inside the guest the pod's
//! containers share the VM's own network namespace, where the agent has set the pod's
//! addresses and routes (as Kata does). A `network` entry without a path (`ctr run`
//! without `--net-host`) keeps its meaning: a private namespace with loopback only. A spec
//! without a `network` entry (CRI's `hostNetwork: true`) shares the VM's namespace too,
//! which has only loopback: a VM cannot share the host's network stack.

use std::path::PathBuf;

use serde_json::Value;

/// The host network namespace a spec asks for: the `path` of its `linux.namespaces` entry
/// of type `network`, if it has one.
pub fn host_netns(spec: &Value) -> Option<PathBuf> {
    network_entries(spec)
        .find_map(|ns| ns.get("path").and_then(Value::as_str))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Removes the `network` namespace entries that name a host path, so that the container
/// joins the guest's pod network; returns the paths removed.
pub fn join_guest_network(spec: &mut Value) -> Vec<String> {
    let Some(namespaces) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    namespaces.retain(|ns| {
        let path = ns.get("path").and_then(Value::as_str).unwrap_or_default();
        if is_network(ns) && !path.is_empty() {
            removed.push(path.to_owned());
            false
        } else {
            true
        }
    });
    removed
}

fn is_network(ns: &Value) -> bool {
    ns.get("type").and_then(Value::as_str) == Some("network")
}

fn network_entries(spec: &Value) -> impl Iterator<Item = &Value> {
    spec.get("linux")
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ns| is_network(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cri_spec(network: Value) -> Value {
        json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"},
            network,
            {"type": "mount"}
        ]}})
    }

    #[test]
    fn a_cni_namespace_is_the_host_side_and_leaves_the_guest_spec() {
        let mut spec = cri_spec(json!({"type": "network", "path": "/var/run/netns/cni-1234"}));
        assert_eq!(
            host_netns(&spec),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        assert_eq!(join_guest_network(&mut spec), ["/var/run/netns/cni-1234"]);
        assert_eq!(
            spec,
            json!({"linux": {"namespaces": [
                {"type": "pid"},
                {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "mount"}
            ]}})
        );
        assert_eq!(host_netns(&spec), None);
    }

    #[test]
    fn a_private_namespace_without_a_path_is_kept() {
        let mut spec = cri_spec(json!({"type": "network"}));
        let before = spec.clone();
        assert_eq!(host_netns(&spec), None);
        assert!(join_guest_network(&mut spec).is_empty());
        assert_eq!(spec, before);
    }

    #[test]
    fn host_network_and_odd_specs_have_no_pod_namespace() {
        let mut spec = json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert_eq!(host_netns(&spec), None);
        assert!(join_guest_network(&mut spec).is_empty());
        for mut odd in [
            json!({}),
            json!({"linux": {"namespaces": "x"}}),
            json!("spec"),
        ] {
            assert_eq!(host_netns(&odd), None);
            assert!(join_guest_network(&mut odd).is_empty());
        }
        let empty = cri_spec(json!({"type": "network", "path": ""}));
        assert_eq!(host_netns(&empty), None);
    }
}
