//! The shim under containerd's CRI plugin, driven as kubelet would with the `k8s-cri`
//! crate's gRPC client: a host-network pod with runtime handler `bulkhead`, two containers,
//! ExecSync, UpdateContainerResources (the new limits read back in the guest), container
//! logs, stop and remove; exactly one VM for the pod.
//!
//! - `a_cri_pod_in_a_vm`: the real VM (KVM harness, as `ctr_run_in_a_vm`);
//! - `a_cri_pod_with_the_host_agent`: with `BULKHEAD_AGENT_BIN`, the agent on the host
//!   behind the fake VMM.
//!
//! The pause image is a busybox image whose command is `sleep`, imported into `k8s.io`.

mod support;

use std::time::{Duration, Instant};

use k8s_cri::v1::{
    CreateContainerRequest, ExecSyncRequest, LinuxContainerResources, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, UpdateContainerResourcesRequest, VersionRequest,
};
use support::cri::{busybox_container, connect, host_network_pod, prepare, wait_for_log, PAUSE};
use support::scenarios::real_vm_prerequisites;
use support::*;

fn cri_pod(c: &Containerd, vmm: &str) {
    let log_dir = c.dir().join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cri = connect(c.socket()).await;
        let version = cri
            .version(VersionRequest::default())
            .await
            .unwrap_or_else(|e| panic!("CRI Version: {e}\ncontainerd log:\n{}", c.log()))
            .into_inner();
        eprintln!("CRI: {} {}", version.runtime_name, version.runtime_version);

        let pod = host_network_pod("web", &log_dir);
        let started = Instant::now();
        let sandbox = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: "bulkhead".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\ncontainerd log:\n{}", c.log()))
            .into_inner()
            .pod_sandbox_id;
        eprintln!("RunPodSandbox {sandbox} took {:?}", started.elapsed());

        let mut ids = Vec::new();
        for (name, script) in [
            (
                "c1",
                "echo hello from c1; echo err from c1 >&2; exec sleep 100000",
            ),
            ("c2", "echo hello from c2; exec sleep 100000"),
        ] {
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox.clone(),
                    config: Some(busybox_container(name, script)),
                    sandbox_config: Some(pod.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", c.log()))
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", c.log()));
            ids.push(id);
        }

        // One shim and one VM for the whole pod.
        let run_root = c.run_root.to_string_lossy().into_owned();
        let vmms = pids_with(&[vmm, &run_root]);
        assert_eq!(vmms.len(), 1, "one VM for the pod: {vmms:?}");
        assert_eq!(
            pids_with(&["containerd-shim-bulkhead-v2", "-namespace k8s.io"]).len(),
            1
        );

        // ExecSync: output and exit code.
        let exec = cri
            .exec_sync(ExecSyncRequest {
                container_id: ids[0].clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo exec out; echo exec err >&2; exit 3".into(),
                ],
                timeout: 60,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", c.log()))
            .into_inner();
        assert_eq!(exec.exit_code, 3);
        assert_eq!(String::from_utf8_lossy(&exec.stdout), "exec out\n");
        assert_eq!(String::from_utf8_lossy(&exec.stderr), "exec err\n");
        // UpdateContainerResources reaches the container's cgroup in the guest.
        cri.update_container_resources(UpdateContainerResourcesRequest {
            container_id: ids[0].clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", c.log()));
        let limits = cri
            .exec_sync(ExecSyncRequest {
                container_id: ids[0].clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "read l < /proc/self/cgroup; d=/sys/fs/cgroup${l#0::}; \
                     cat $d/memory.max $d/cpu.max"
                        .into(),
                ],
                timeout: 60,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync: {e}"))
            .into_inner();
        assert_eq!(
            String::from_utf8_lossy(&limits.stdout),
            format!("{}\n50000 100000\n", 96 << 20),
            "stderr: {}",
            String::from_utf8_lossy(&limits.stderr)
        );
        // Both containers run on the same guest kernel.
        let boot_id = |out: Vec<u8>| String::from_utf8_lossy(&out).into_owned();
        let mut boot_ids = Vec::new();
        for id in &ids {
            let out = cri
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["cat".into(), "/proc/sys/kernel/random/boot_id".into()],
                    timeout: 60,
                })
                .await
                .unwrap_or_else(|e| panic!("ExecSync: {e}"))
                .into_inner();
            assert_eq!(out.exit_code, 0);
            boot_ids.push(boot_id(out.stdout));
        }
        assert_eq!(boot_ids[0], boot_ids[1]);

        // Container logs in CRI's format.
        let log = wait_for_log(
            &log_dir.join("c1.log"),
            "err from c1",
            Duration::from_secs(10),
        );
        eprintln!("c1.log:\n{log}");
        assert!(log.contains(" stdout F hello from c1"), "{log}");
        assert!(log.contains(" stderr F err from c1"), "{log}");
        let log = wait_for_log(
            &log_dir.join("c2.log"),
            "hello from c2",
            Duration::from_secs(10),
        );
        assert!(log.contains(" stdout F hello from c2"), "{log}");

        for id in &ids {
            cri.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 5,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", c.log()));
            cri.remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", c.log()));
        }
        assert_eq!(
            pids_with(&[vmm, &run_root]).len(),
            1,
            "the VM outlives its containers"
        );
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log()));
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log()));
    });
    c.assert_clean();
}

/// The controllers of the host's cgroup v2 hierarchy.
fn cgroup2_controllers() -> Vec<String> {
    cgroup2_root()
        .and_then(|r| std::fs::read_to_string(r.join("cgroup.controllers")).ok())
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn a_cri_pod_in_a_vm() {
    let env = match real_vm_prerequisites() {
        Ok(env) => env,
        Err(reason) => return skip(&reason),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut c = Containerd::start_with(&env, support::HARNESS_TIMEOUTS, Some(PAUSE));
    let _logs = LogCollector::start(&c.run_root);
    prepare(&mut c);
    cri_pod(&c, "bulkhead-vmm");
}

#[test]
fn a_cri_pod_with_the_host_agent() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    // CRI gives every container (the pause one too) CPU shares; the host "guest" needs the
    // cpu controller in its cgroup v2 hierarchy for that (a real guest has it).
    if !cgroup2_controllers().iter().any(|c| c == "cpu") {
        return skip("the host's cgroup v2 hierarchy has no cpu controller (CRI sets CPU shares)");
    }
    let mut c = host_agent_containerd_with(&agent, Some(PAUSE));
    let _logs = LogCollector::start(&c.run_root);
    prepare(&mut c);
    cri_pod(&c, "fake-vmm.py");
}
