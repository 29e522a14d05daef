//! Which VM a container belongs to, and how that VM is configured.
//!
//! - A CRI sandbox container (`io.kubernetes.cri.container-type` = `sandbox`) creates the
//!   pod's VM; the pod's app containers (`container`, same `io.kubernetes.cri.sandbox-id`)
//!   join it. Both reach the same shim because [`grouping_id`] gives the `start` action the
//!   same key, hence the same socket address.
//! - A container without CRI annotations (`ctr run`) gets a VM of its own.
//!
//! The VM is sized from the pod's limits (CRI sandbox annotations, or a standalone
//! container's own `linux.resources`) plus the guest overhead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bulkhead_protocol::types::validate_container_id;
use bulkhead_sandbox::{naming, PodResources, SandboxConfig, VmSize};
use serde_json::Value;

use crate::config::ShimConfig;
use crate::error::{Result, ShimError};

pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// containerd's own grouping label (the runc shim honours it too).
pub const ANNOTATION_GROUP: &str = "io.containerd.runc.v2.group";

/// A container's place in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It creates and owns the VM: a CRI sandbox container (`sandbox_id` = its own id) or
    /// a standalone container.
    Owner { sandbox_id: String, cri: bool },
    /// It runs in the VM of sandbox `sandbox_id`.
    Member { sandbox_id: String },
}

impl Role {
    pub fn sandbox_id(&self) -> &str {
        match self {
            Role::Owner { sandbox_id, .. } | Role::Member { sandbox_id } => sandbox_id,
        }
    }

    pub fn owns_vm(&self) -> bool {
        matches!(self, Role::Owner { .. })
    }
}

/// Classifies container `id` by its annotations. The sandbox id an annotation names
/// becomes a path (the run directory, `shared/<id>` below it): it and `id` are checked
/// like every other id ([`validate_container_id`]); an invalid one is refused.
pub fn classify(id: &str, annotations: &HashMap<String, String>) -> Result<Role> {
    let role = role_of(id, annotations);
    for (what, value) in [("container id", id), ("sandbox id", role.sandbox_id())] {
        validate_container_id(value).map_err(|e| {
            ShimError::InvalidArgument(format!("{what} {value:?} of container {id:?}: {e}"))
        })?;
    }
    Ok(role)
}

fn role_of(id: &str, annotations: &HashMap<String, String>) -> Role {
    let sandbox_id = annotations
        .get(ANNOTATION_SANDBOX_ID)
        .filter(|s| !s.is_empty());
    match (
        annotations
            .get(ANNOTATION_CONTAINER_TYPE)
            .map(String::as_str),
        sandbox_id,
    ) {
        (Some("container"), Some(sid)) if sid != id => Role::Member {
            sandbox_id: sid.clone(),
        },
        (Some("sandbox"), _) | (Some("container"), _) => Role::Owner {
            sandbox_id: id.to_owned(),
            cri: true,
        },
        _ => match annotations.get(ANNOTATION_GROUP).filter(|g| !g.is_empty()) {
            Some(group) if group != id => Role::Member {
                sandbox_id: group.clone(),
            },
            _ => Role::Owner {
                sandbox_id: id.to_owned(),
                cri: false,
            },
        },
    }
}

/// The key the `start` action groups shims by: containers with the same key share one
/// shim (and one VM).
pub fn grouping_id(id: &str, annotations: &HashMap<String, String>) -> Result<String> {
    Ok(classify(id, annotations)?.sandbox_id().to_owned())
}

/// The spec's annotations (missing or malformed: none).
pub fn annotations(spec: &Value) -> HashMap<String, String> {
    spec.get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A standalone container's limits from its spec's `linux.resources`.
pub fn spec_resources(spec: &Value) -> PodResources {
    let res = spec.pointer("/linux/resources");
    let get = |p: &str| res.and_then(|r| r.pointer(p)).and_then(Value::as_i64);
    let quota = get("/cpu/quota").filter(|q| *q > 0);
    let period = get("/cpu/period").filter(|p| *p > 0);
    let cpu_millis = match (quota, period) {
        (Some(q), Some(p)) => Some(((q as u64).saturating_mul(1000)).div_ceil(p as u64)),
        _ => None,
    };
    PodResources {
        cpu_millis,
        memory_bytes: get("/memory/limit").filter(|m| *m > 0).map(|m| m as u64),
    }
}

/// The resources that size the VM of an owner container.
pub fn vm_resources(role: &Role, spec: &Value) -> Result<PodResources> {
    match role {
        Role::Owner { cri: true, .. } => PodResources::from_annotations(&annotations(spec))
            .map_err(|e| ShimError::InvalidArgument(e.to_string())),
        _ => Ok(spec_resources(spec)),
    }
}

/// The VM size: the sandbox crate's sizing, with the configured `vm.vcpus` and
/// `vm.memory_mib` for a pod without a CPU or memory limit ([`Config::vm_size`], as in
/// the CLI).
///
/// [`Config::vm_size`]: bulkhead_sandbox::config::Config::vm_size
pub fn vm_size(resources: &PodResources, config: &ShimConfig, host_cpus: u32) -> VmSize {
    config.config.vm_size(resources, host_cpus)
}

/// Run directories of one containerd namespace.
pub fn run_root(config: &ShimConfig, namespace: &str) -> PathBuf {
    config.config.run_root.join(namespace)
}

/// The run directory of sandbox `sandbox_id` (what `Sandbox::start` creates).
pub fn run_dir(config: &ShimConfig, namespace: &str, sandbox_id: &str) -> PathBuf {
    run_root(config, namespace).join(vm_name(sandbox_id))
}

/// The VM's name: its run directory and the sandbox id the agent sees
/// ([`bulkhead_sandbox::naming::sandbox_name`], which keeps its sockets within `sun_path`).
pub fn vm_name(sandbox_id: &str) -> String {
    naming::sandbox_name(sandbox_id)
}

/// The sandbox configuration of a new VM ([`Config::sandbox_config`], as in the CLI): named
/// [`vm_name`], below the namespace's [`run_root`], with the pod's hostname.
///
/// [`Config::sandbox_config`]: bulkhead_sandbox::config::Config::sandbox_config
pub fn sandbox_config(
    config: &ShimConfig,
    namespace: &str,
    sandbox_id: &str,
    size: VmSize,
    hostname: Option<String>,
) -> SandboxConfig {
    let mut c = config.config.sandbox_config(
        &config.files,
        &vm_name(sandbox_id),
        &run_root(config, namespace),
        size,
    );
    c.hostname = hostname.filter(|h| !h.is_empty());
    c
}

/// Where the handler's configuration file (runtime option `ConfigPath`) is recorded in the
/// bundle (the runc shim keeps its options there the same way).
pub const CONFIG_PATH_RECORD: &str = "bulkhead-config-path";

/// Records the handler's configuration file in the bundle: `delete` after a crash reads the
/// same file (the run root may be another).
pub fn record_config_path(bundle: &Path, config: &Path) -> Result<()> {
    let record = bundle.join(CONFIG_PATH_RECORD);
    std::fs::write(&record, config.as_os_str().as_encoded_bytes()).map_err(|e| {
        ShimError::FailedPrecondition(format!("cannot write {}: {e}", record.display()))
    })
}

/// The configuration file recorded in the bundle, if any.
pub fn recorded_config_path(bundle: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(bundle.join(CONFIG_PATH_RECORD)).ok()?;
    let path = PathBuf::from(text.trim());
    path.is_absolute().then_some(path)
}

/// Reads and parses `<bundle>/config.json`.
pub fn read_spec(bundle: &Path) -> Result<Value> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| ShimError::Spec(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ShimError::Spec(format!("{} is not valid JSON: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_sandbox_and_its_containers_share_a_group() {
        let sandbox = ann(&[
            (ANNOTATION_CONTAINER_TYPE, "sandbox"),
            (ANNOTATION_SANDBOX_ID, "pod-abc"),
        ]);
        let app = ann(&[
            (ANNOTATION_CONTAINER_TYPE, "container"),
            (ANNOTATION_SANDBOX_ID, "pod-abc"),
        ]);
        let other = ann(&[
            (ANNOTATION_CONTAINER_TYPE, "container"),
            (ANNOTATION_SANDBOX_ID, "pod-xyz"),
        ]);
        assert_eq!(
            classify("pod-abc", &sandbox).unwrap(),
            Role::Owner {
                sandbox_id: "pod-abc".into(),
                cri: true
            }
        );
        assert_eq!(
            classify("web", &app).unwrap(),
            Role::Member {
                sandbox_id: "pod-abc".into()
            }
        );
        assert_eq!(grouping_id("pod-abc", &sandbox).unwrap(), "pod-abc");
        assert_eq!(grouping_id("web", &app).unwrap(), "pod-abc");
        assert_eq!(grouping_id("db", &app).unwrap(), "pod-abc");
        assert_eq!(grouping_id("web", &other).unwrap(), "pod-xyz");
    }

    #[test]
    fn plain_containers_get_their_own_vm() {
        assert_eq!(
            classify("c1", &HashMap::new()).unwrap(),
            Role::Owner {
                sandbox_id: "c1".into(),
                cri: false
            }
        );
        assert_eq!(grouping_id("c1", &HashMap::new()).unwrap(), "c1");
        assert_eq!(grouping_id("c2", &HashMap::new()).unwrap(), "c2");
        // An empty sandbox id does not group everything together.
        let app = ann(&[
            (ANNOTATION_CONTAINER_TYPE, "container"),
            (ANNOTATION_SANDBOX_ID, ""),
        ]);
        assert_eq!(grouping_id("c3", &app).unwrap(), "c3");
        assert!(classify("c3", &app).unwrap().owns_vm());
        // containerd's grouping label groups like a sandbox id.
        let grouped = ann(&[(ANNOTATION_GROUP, "g1")]);
        assert_eq!(grouping_id("c4", &grouped).unwrap(), "g1");
        assert_eq!(grouping_id("g1", &grouped).unwrap(), "g1");
        assert!(classify("g1", &grouped).unwrap().owns_vm());
    }

    #[test]
    fn sandbox_ids_from_annotations_are_validated() {
        for bad in [
            "../../etc",
            "a/b",
            ".hidden",
            "..",
            "x\0y",
            &"a".repeat(1000),
        ] {
            for annotations in [
                ann(&[
                    (ANNOTATION_CONTAINER_TYPE, "container"),
                    (ANNOTATION_SANDBOX_ID, bad),
                ]),
                ann(&[(ANNOTATION_GROUP, bad)]),
            ] {
                assert!(
                    matches!(
                        classify("web", &annotations),
                        Err(ShimError::InvalidArgument(_))
                    ),
                    "{bad:?} accepted"
                );
                assert!(grouping_id("web", &annotations).is_err());
            }
        }
        // The container's own id too (it names `shared/<id>`).
        assert!(classify("../web", &HashMap::new()).is_err());
    }

    #[test]
    fn annotations_and_resources_come_from_the_spec() {
        let spec = json!({
            "annotations": {"a": "1", "bad": 2},
            "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000},
                                    "memory": {"limit": 268435456}}}
        });
        assert_eq!(annotations(&spec), ann(&[("a", "1")]));
        assert_eq!(
            spec_resources(&spec),
            PodResources {
                cpu_millis: Some(1500),
                memory_bytes: Some(256 << 20)
            }
        );
        assert_eq!(spec_resources(&json!({})), PodResources::default());
        let unlimited = json!({"linux": {"resources": {"cpu": {"quota": -1, "period": 100000},
                                                      "memory": {"limit": 0}}}});
        assert_eq!(spec_resources(&unlimited), PodResources::default());
    }

    #[test]
    fn cri_sandboxes_are_sized_from_their_annotations() {
        let role = Role::Owner {
            sandbox_id: "p".into(),
            cri: true,
        };
        let spec = json!({"annotations": {
            "io.kubernetes.cri.sandbox-cpu-quota": "200000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-memory": "536870912"}});
        let r = vm_resources(&role, &spec).unwrap();
        assert_eq!(r.cpu_millis, Some(2000));
        let size = vm_size(&r, &ShimConfig::default(), 8);
        assert_eq!(size.vcpus, 3);
        assert_eq!(size.memory_mib, 128 + 512);

        let bad = json!({"annotations": {"io.kubernetes.cri.sandbox-memory": "lots"}});
        assert!(matches!(
            vm_resources(&role, &bad),
            Err(ShimError::InvalidArgument(_))
        ));
    }

    #[test]
    fn configured_defaults_size_unlimited_pods() {
        let mut config = ShimConfig::default();
        config.config.vm.vcpus = 2;
        config.config.vm.memory_mib = 1024;
        let size = vm_size(&PodResources::default(), &config, 8);
        assert_eq!((size.vcpus, size.memory_mib), (2, 1024));
        // Never more vCPUs than the host has.
        assert_eq!(vm_size(&PodResources::default(), &config, 1).vcpus, 1);
        // A pod limit wins over the defaults.
        let limited = PodResources {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
        };
        let size = vm_size(&limited, &config, 8);
        assert_eq!((size.vcpus, size.memory_mib), (2, 128 + 64));
    }

    #[test]
    fn long_sandbox_ids_get_short_distinct_vm_names() {
        // The naming rule itself is tested in bulkhead_sandbox::naming.
        assert_eq!(vm_name("pod1"), "pod1");
        let cri = "1b5b8bb3c5e939714b1eeb8ab27a0e0de24125ca0c04663b26e0809caea0b87a";
        assert_eq!(vm_name(cri).len(), naming::SANDBOX_NAME_MAX);
        // The default run root leaves room for the VMM's guest-initiated sockets.
        let config = ShimConfig::default();
        bulkhead_sandbox::run_dir::check_socket_paths(&run_dir(&config, "k8s.io", cri)).unwrap();
        assert_eq!(
            sandbox_config(
                &config,
                "k8s.io",
                cri,
                VmSize {
                    vcpus: 1,
                    memory_mib: 256
                },
                None
            )
            .id,
            vm_name(cri)
        );
    }

    #[test]
    fn sandbox_config_uses_the_namespace_run_root() {
        let config = ShimConfig::default();
        let c = sandbox_config(
            &config,
            "k8s.io",
            "pod1",
            VmSize {
                vcpus: 1,
                memory_mib: 256,
            },
            Some("web-0".into()),
        );
        assert_eq!(c.run_root, PathBuf::from("/run/bulkhead/k8s.io"));
        assert_eq!(
            run_dir(&config, "k8s.io", "pod1"),
            PathBuf::from("/run/bulkhead/k8s.io/pod1")
        );
        assert_eq!(c.hostname.as_deref(), Some("web-0"));
        assert_eq!(c.initrd, config.files.initrd);
        assert_eq!(c.virtiofsd, config.files.virtiofsd);
        assert_eq!(c.log_format, Some(config.config.log_format));
        assert_eq!(c.agent_timeout, config.config.boot_timeout());
    }
}
