//! The host-only parts of an OCI spec, removed before it goes to the guest: Linux
//! security module labels name policies loaded in the host kernel (CRI puts the host's
//! `cri-containerd.apparmor.d` profile in every app container and exec where AppArmor is
//! on), and the guest kernel has no AppArmor or SELinux. Passed on, libcontainer refuses
//! the container (it reads `/sys/module/apparmor/parameters/enabled`, absent in the
//! guest: "io error: No such file or directory"). The VM is the isolation boundary here,
//! as in Kata Containers, which drops the same fields.

use serde_json::Value;

/// Process fields that name host LSM policies.
const PROCESS_LABELS: [&str; 2] = ["apparmorProfile", "selinuxLabel"];
/// `linux` fields that name host LSM policies.
const LINUX_LABELS: [&str; 1] = ["mountLabel"];

/// Removes host LSM labels from a whole runtime spec; returns what was removed.
pub fn strip_host_labels(spec: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    if let Some(process) = spec.get_mut("process") {
        removed.extend(strip(process, "process", &PROCESS_LABELS));
    }
    if let Some(linux) = spec.get_mut("linux") {
        removed.extend(strip(linux, "linux", &LINUX_LABELS));
    }
    removed
}

/// Removes host LSM labels from an OCI process object (an exec's spec); returns what
/// was removed.
pub fn strip_process_labels(process: &mut Value) -> Vec<String> {
    strip(process, "process", &PROCESS_LABELS)
}

fn strip(object: &mut Value, prefix: &str, fields: &[&str]) -> Vec<String> {
    let Some(map) = object.as_object_mut() else {
        return Vec::new();
    };
    fields
        .iter()
        .filter_map(|f| {
            map.remove(*f)
                .map(|v| format!("{prefix}.{f}={}", v.as_str().unwrap_or("?")))
        })
        .collect()
}

/// Rewrites the namespace paths a pod's containers share (`/proc/<pid>/ns/ipc`, `uts`,
/// `pid`, ...). containerd names them after the sandbox task's pid, which is the VMM's host
/// pid (the pid the shim reports, as Kata does); in the guest the pod's namespaces are
/// those of the sandbox container's init, `guest_pid`. Returns how many were rewritten.
pub fn guest_namespace_paths(spec: &mut Value, host_pid: u32, guest_pid: u32) -> usize {
    let prefix = format!("/proc/{host_pid}/ns/");
    let Some(namespaces) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let mut rewritten = 0;
    for ns in namespaces {
        let Some(path) = ns.get("path").and_then(Value::as_str) else {
            continue;
        };
        if let Some(kind) = path.strip_prefix(&prefix) {
            let guest = format!("/proc/{guest_pid}/ns/{kind}");
            if let Some(obj) = ns.as_object_mut() {
                obj.insert("path".into(), Value::String(guest));
                rewritten += 1;
            }
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lsm_labels_are_removed_and_everything_else_kept() {
        let mut spec = json!({
            "process": {
                "args": ["sh"],
                "apparmorProfile": "cri-containerd.apparmor.d",
                "selinuxLabel": "system_u:system_r:container_t:s0",
                "capabilities": {"bounding": ["CAP_KILL"]}
            },
            "linux": {"mountLabel": "system_u:object_r:container_file_t:s0", "namespaces": []},
            "root": {"path": "rootfs"}
        });
        let removed = strip_host_labels(&mut spec);
        assert_eq!(
            removed,
            [
                "process.apparmorProfile=cri-containerd.apparmor.d",
                "process.selinuxLabel=system_u:system_r:container_t:s0",
                "linux.mountLabel=system_u:object_r:container_file_t:s0",
            ]
        );
        assert_eq!(
            spec,
            json!({
                "process": {"args": ["sh"], "capabilities": {"bounding": ["CAP_KILL"]}},
                "linux": {"namespaces": []},
                "root": {"path": "rootfs"}
            })
        );
        // Nothing to remove: nothing changes.
        let before = spec.clone();
        assert!(strip_host_labels(&mut spec).is_empty());
        assert_eq!(spec, before);
    }

    #[test]
    fn exec_process_labels_are_removed() {
        let mut process = json!({"args": ["ls"], "apparmorProfile": "p", "cwd": "/"});
        assert_eq!(
            strip_process_labels(&mut process),
            ["process.apparmorProfile=p"]
        );
        assert_eq!(process, json!({"args": ["ls"], "cwd": "/"}));
        assert!(strip_process_labels(&mut json!("not an object")).is_empty());
    }

    #[test]
    fn shared_namespaces_name_the_sandbox_init_in_the_guest() {
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/469/ns/ipc"},
            {"type": "uts", "path": "/proc/469/ns/uts"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "mount"},
            {"type": "cgroup", "path": "/proc/4690/ns/cgroup"}
        ]}});
        assert_eq!(guest_namespace_paths(&mut spec, 469, 33), 2);
        let ns = &spec["linux"]["namespaces"];
        assert_eq!(ns[1]["path"], "/proc/33/ns/ipc");
        assert_eq!(ns[2]["path"], "/proc/33/ns/uts");
        assert_eq!(ns[3]["path"], "/var/run/netns/cni-1");
        assert_eq!(
            ns[5]["path"], "/proc/4690/ns/cgroup",
            "another pid is left alone"
        );
        assert_eq!(guest_namespace_paths(&mut json!({}), 1, 2), 0);
    }
}
