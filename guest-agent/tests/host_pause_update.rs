//! PauseContainer, ResumeContainer and UpdateContainer against the real agent on the host
//! (as root, in a private mount namespace with cgroup2 at /sys/fs/cgroup): the container's
//! cgroup is frozen and thawed, state conflicts are FAILED_PRECONDITION, limits land in
//! the cgroup files where the controller is available.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_protocol::proto;
use support::*;

fn pause_req(id: &str) -> proto::PauseContainerRequest {
    let mut r = proto::PauseContainerRequest::new();
    r.container_id = id.to_owned();
    r
}

fn resume_req(id: &str) -> proto::ResumeContainerRequest {
    let mut r = proto::ResumeContainerRequest::new();
    r.container_id = id.to_owned();
    r
}

fn code(r: ttrpc::Result<proto::Empty>) -> ttrpc::Code {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        Err(e) => panic!("{e:?}"),
    }
}

/// The `frozen` value of the cgroup's `cgroup.events`.
fn frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .unwrap()
        .lines()
        .any(|l| l == "frozen 1")
}

/// The agent's default cgroup of container `id` (`/bulkhead/<id>`).
fn cgroup_of(id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/bulkhead").join(id)
}

#[test]
fn pause_and_resume_freeze_and_thaw_the_cgroup() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let id = unique_id("pause");
        let spec = spec(&["sleep", "1000"]);
        create(&env, &client, &id, &spec).await;
        // Not started yet: nothing to pause.
        let r = client.pause_container(ctx(), &pause_req(&id)).await;
        assert_eq!(code(r), ttrpc::Code::FAILED_PRECONDITION);
        start(&client, &id).await;
        let dir = cgroup_of(&id);
        assert!(!frozen(&dir));

        client
            .pause_container(ctx(), &pause_req(&id))
            .await
            .unwrap();
        assert!(frozen(&dir), "paused but not frozen");
        let r = client.pause_container(ctx(), &pause_req(&id)).await;
        assert_eq!(code(r), ttrpc::Code::FAILED_PRECONDITION);
        // An exec would freeze inside libcontainer's build: refused.
        let mut exec = proto::ExecProcessRequest::new();
        exec.container_id = id.clone();
        exec.exec_id = "e1".into();
        exec.process_json = serde_json::to_vec(&process(&["true"])).unwrap();
        let err = client.exec_process(ctx(), &exec).await.unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else {
            panic!("{err:?}")
        };
        assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert!(s.message().contains("paused"), "{}", s.message());

        client
            .resume_container(ctx(), &resume_req(&id))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while frozen(&dir) {
            assert!(Instant::now() < deadline, "resumed but still frozen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = client.resume_container(ctx(), &resume_req(&id)).await;
        assert_eq!(code(r), ttrpc::Code::FAILED_PRECONDITION);

        // A paused container is still removed (SIGKILL reaches frozen tasks).
        client
            .pause_container(ctx(), &pause_req(&id))
            .await
            .unwrap();
        remove(&client, &id).await;
        assert!(!dir.exists(), "cgroup left after remove");
        let r = client.resume_container(ctx(), &resume_req(&id)).await;
        assert_eq!(code(r), ttrpc::Code::NOT_FOUND);
    });
}

#[test]
fn update_sets_limits_and_refuses_bad_values() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let id = unique_id("update");
        let spec = spec(&["sleep", "1000"]);
        create(&env, &client, &id, &spec).await;
        start(&client, &id).await;
        let update = |resources: proto::Resources| {
            let mut r = proto::UpdateContainerRequest::new();
            r.container_id = id.clone();
            r.resources = Some(resources).into();
            r
        };

        let mut bad = proto::Resources::new();
        bad.cpu_period = Some(10);
        let r = client.update_container(ctx(), &update(bad)).await;
        assert_eq!(code(r), ttrpc::Code::INVALID_ARGUMENT);
        let mut missing = update(proto::Resources::new());
        missing.container_id = "nope".into();
        let r = client.update_container(ctx(), &missing).await;
        assert_eq!(code(r), ttrpc::Code::NOT_FOUND);
        // Nothing set: nothing changes, nothing fails.
        client
            .update_container(ctx(), &update(proto::Resources::new()))
            .await
            .unwrap();

        let dir = cgroup_of(&id);
        if cgroup_controller_available("pids") && cgroup_controller_available("memory") {
            let mut limits = proto::Resources::new();
            limits.pids_limit = Some(64);
            limits.memory_limit = Some(48 << 20);
            client
                .update_container(ctx(), &update(limits))
                .await
                .unwrap();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
            assert_eq!(read("pids.max").trim(), "64");
            assert_eq!(read("memory.max").trim(), (48u64 << 20).to_string());
            let mut unlimited = proto::Resources::new();
            unlimited.pids_limit = Some(-1);
            client
                .update_container(ctx(), &update(unlimited))
                .await
                .unwrap();
            assert_eq!(read("pids.max").trim(), "max");
            assert_eq!(read("memory.max").trim(), (48u64 << 20).to_string());
        } else {
            skip("no pids/memory controller in this cgroup2 hierarchy: limits checked in the guest e2e (cri_e2e)");
        }
        remove(&client, &id).await;
    });
}
