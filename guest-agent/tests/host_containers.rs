//! The real agent on the host, as root, no VM: containers from a busybox
//! rootfs driven through the ttrpc API over unix sockets, stdio through the
//! stdio port. Tests skip (and say why) without root or cgroup2.

mod support;

use std::time::Duration;

use bulkhead_protocol::proto;
use bulkhead_protocol::stdio::{AttachStatus, StreamKind};
use bulkhead_protocol::PROTOCOL_VERSION;
use support::*;
use tokio::io::AsyncWriteExt;

#[test]
fn check_and_version() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let r = client
            .check(ctx(), &proto::CheckRequest::new())
            .await
            .unwrap();
        assert!(r.serving);
        let v = bulkhead_protocol::client::handshake(&client, 5_000_000_000)
            .await
            .unwrap();
        assert_eq!(v.protocol_version, PROTOCOL_VERSION);
        assert_eq!(v.agent_version, bulkhead_version::LONG);

        let mut old = proto::VersionRequest::new();
        old.protocol_version = PROTOCOL_VERSION + 1;
        let err = client.version(ctx(), &old).await.unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else {
            panic!("{err:?}")
        };
        assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert!(s.message().contains("version mismatch"), "{}", s.message());
    });
}

#[test]
fn stdout_stderr_and_exit_status_3() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let id = unique_id("exit3");
        let spec = spec(&["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]);
        let created = create(&env, &client, &id, &spec).await;
        assert!(created > 0, "init pid");
        // Start first and attach later: early output must wait for us.
        start(&client, &id).await;
        let exit = wait_init(&client, &id).await;
        assert_eq!(exit.exit_status, 3);
        assert!(exit.exited_at_unix_nanos > 0);

        let out = env.attach(&id, "", StreamKind::Stdout).await.unwrap();
        let err = env.attach(&id, "init", StreamKind::Stderr).await.unwrap();
        assert_eq!(read_all(out).await, "to-stdout\n");
        assert_eq!(read_all(err).await, "to-stderr\n");
        // A stream attaches once; unknown processes are refused.
        assert_eq!(
            env.attach(&id, "", StreamKind::Stdout).await.unwrap_err(),
            AttachStatus::Unavailable
        );
        assert_eq!(
            env.attach("nope", "", StreamKind::Stdout)
                .await
                .unwrap_err(),
            AttachStatus::NotFound
        );
        remove(&client, &id).await;
        let err = client
            .wait_process(ctx(), &wait_req(&id, ""))
            .await
            .unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else {
            panic!("{err:?}")
        };
        assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
    });
}

#[test]
fn exec_signal_stdin_and_container_settings() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let id = unique_id("exec");
        let spec = spec(&["sleep", "60"]);
        create(&env, &client, &id, &spec).await;
        start(&client, &id).await;

        // Exec a process reading stdin and reporting what the spec set up.
        let mut req = proto::ExecProcessRequest::new();
        req.container_id = id.clone();
        req.exec_id = "e1".into();
        req.stdin = true;
        req.process_json = serde_json::to_vec(&process(&[
            "sh",
            "-c",
            "read line; echo got:$line; hostname; id -u; touch /ro 2>/dev/null || echo rootfs-ro; exit 5",
        ]))
        .unwrap();
        let r = client.exec_process(ctx(), &req).await.unwrap();
        assert!(r.pid > 0);
        let out = env.attach(&id, "e1", StreamKind::Stdout).await.unwrap();
        let mut input = env.attach(&id, "e1", StreamKind::Stdin).await.unwrap();
        input.write_all(b"hello-stdin\n").await.unwrap();
        let text = read_all(out).await;
        assert_eq!(text, "got:hello-stdin\nbulkhead-test\n0\nrootfs-ro\n");
        let exit = client.wait_process(ctx(), &wait_req(&id, "e1")).await.unwrap();
        assert_eq!(exit.exit_status, 5);

        // CloseStdin gives EOF to a reader that was never attached.
        req.exec_id = "cat".into();
        req.process_json = serde_json::to_vec(&process(&["cat"])).unwrap();
        client.exec_process(ctx(), &req).await.unwrap();
        let mut close = proto::CloseStdinRequest::new();
        close.container_id = id.clone();
        close.exec_id = "cat".into();
        client.close_stdin(ctx(), &close).await.unwrap();
        let exit = client.wait_process(ctx(), &wait_req(&id, "cat")).await.unwrap();
        assert_eq!(exit.exit_status, 0);

        // SIGTERM to a sleep: 128 + 15.
        req.exec_id = "sleeper".into();
        req.stdin = false;
        req.process_json = serde_json::to_vec(&process(&["sleep", "60"])).unwrap();
        client.exec_process(ctx(), &req).await.unwrap();
        let mut sig = proto::SignalProcessRequest::new();
        sig.container_id = id.clone();
        sig.exec_id = "sleeper".into();
        sig.signal = 15;
        client.signal_process(ctx(), &sig).await.unwrap();
        let exit = client.wait_process(ctx(), &wait_req(&id, "sleeper")).await.unwrap();
        assert_eq!(exit.exit_status, 143);
        // Signalling it again: it is gone.
        let err = client.signal_process(ctx(), &sig).await.unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else { panic!("{err:?}") };
        assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);

        // SIGKILL to the init: 128 + 9.
        sig.exec_id = String::new();
        sig.signal = 9;
        client.signal_process(ctx(), &sig).await.unwrap();
        let exit = wait_init(&client, &id).await;
        assert_eq!(exit.exit_status, 137);

        let mut stats = proto::StatsContainerRequest::new();
        stats.container_id = id.clone();
        client.stats_container(ctx(), &stats).await.unwrap();
        remove(&client, &id).await;
        stats.container_id = "gone".into();
        assert!(client.stats_container(ctx(), &stats).await.is_err());
    });
}

#[test]
fn malformed_spec_is_a_clear_error() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let id = unique_id("bad");
        let mut req = create_req(
            &id,
            &env.rootfs,
            &serde_json::json!({"hello": 1}),
            false,
            false,
        );
        let err = client.create_container(ctx(), &req).await.unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else {
            panic!("{err:?}")
        };
        assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            s.message().contains("spec has no process"),
            "{}",
            s.message()
        );

        req.oci_spec_json = br#"{"ociVersion": "1.0.2", "process": "oops"}"#.to_vec();
        let err = client.create_container(ctx(), &req).await.unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else {
            panic!("{err:?}")
        };
        assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            s.message().contains("invalid OCI runtime spec"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("invalid type"), "{}", s.message());

        req.oci_spec_json = b"{not json".to_vec();
        let err = client.create_container(ctx(), &req).await.unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else {
            panic!("{err:?}")
        };
        assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);

        req = create_req("../escape", &env.rootfs, &spec(&["true"]), false, false);
        let err = client.create_container(ctx(), &req).await.unwrap_err();
        let ttrpc::Error::RpcStatus(s) = err else {
            panic!("{err:?}")
        };
        assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(s.message().contains("container_id"), "{}", s.message());

        // A spec libcontainer refuses: the error comes back, the agent lives.
        let mut bad = spec(&["true"]);
        bad["process"]["cwd"] = serde_json::json!("relative/cwd");
        req = create_req(&id, &env.rootfs, &bad, false, false);
        assert!(client.create_container(ctx(), &req).await.is_err());
        // And the id can be used for a good container afterwards.
        req = create_req(&id, &env.rootfs, &spec(&["true"]), false, false);
        client.create_container(ctx(), &req).await.unwrap();
        start(&client, &id).await;
        let exit = wait_init(&client, &id).await;
        assert_eq!(exit.exit_status, 0);
        remove(&client, &id).await;
    });
}

#[test]
fn client_disconnecting_mid_stream_does_not_hurt_the_agent() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let id = unique_id("disc");
        let spec = spec(&["sh", "-c", "while true; do echo tick; sleep 0.05; done"]);
        {
            let client = env.client().await;
            create(&env, &client, &id, &spec).await;
            start(&client, &id).await;
            // A pending WaitProcess whose client goes away.
            let wait = wait_req(&id, "");
            let pending = client.wait_process(ctx(), &wait);
            let _ = tokio::time::timeout(Duration::from_millis(200), pending).await;
            let mut out = env.attach(&id, "", StreamKind::Stdout).await.unwrap();
            read_until(&mut out, "tick").await;
            drop(out); // the stream's host end goes away mid-output
                       // A half-written stdio header, then gone.
            let mut s = tokio::net::UnixStream::connect(&env.stdio).await.unwrap();
            s.write_all(b"BHIO\x01").await.unwrap();
        }
        let client = env.client().await;
        let r = client
            .check(ctx(), &proto::CheckRequest::new())
            .await
            .unwrap();
        assert!(r.serving);
        let mut sig = proto::SignalProcessRequest::new();
        sig.container_id = id.clone();
        sig.signal = 9;
        client.signal_process(ctx(), &sig).await.unwrap();
        let exit = wait_init(&client, &id).await;
        // Killed, or ended by SIGPIPE when its stdout reader left.
        assert!(
            [137, 141].contains(&exit.exit_status),
            "{}",
            exit.exit_status
        );
        remove(&client, &id).await;
    });
}

#[test]
fn tty_echoes_and_resize_applies() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let id = unique_id("tty");
        let mut spec = spec(&["sh"]);
        spec["process"]["terminal"] = serde_json::json!(true);
        client
            .create_container(ctx(), &create_req(&id, &env.rootfs, &spec, true, true))
            .await
            .unwrap();
        let mut resize = proto::TtyWinResizeRequest::new();
        resize.container_id = id.clone();
        resize.rows = 33;
        resize.columns = 77;
        client.tty_win_resize(ctx(), &resize).await.unwrap();
        start(&client, &id).await;
        // Pipes are refused for a tty process.
        assert_eq!(
            env.attach(&id, "", StreamKind::Stdout).await.unwrap_err(),
            AttachStatus::Unavailable
        );
        let mut tty = env.attach(&id, "", StreamKind::Tty).await.unwrap();
        tty.write_all(b"echo ab''cd; stty size\n").await.unwrap();
        // The terminal echoes the input line, then the command's output.
        let text = read_until(&mut tty, "33 77").await;
        assert!(text.contains("echo ab''cd; stty size"), "{text:?}");
        assert!(text.contains("abcd"), "{text:?}");

        resize.rows = 50;
        resize.columns = 132;
        client.tty_win_resize(ctx(), &resize).await.unwrap();
        tty.write_all(b"stty size; exit 7\n").await.unwrap();
        read_until(&mut tty, "50 132").await;
        let exit = wait_init(&client, &id).await;
        assert_eq!(exit.exit_status, 7);
        remove(&client, &id).await;
    });
}

#[test]
fn memory_limit_gives_an_oom_event() {
    let Some(env) = TestEnv::new() else { return };
    if !cgroup_controller_available("memory") {
        skip("the cgroup2 memory controller is not available here (host cgroups are a v1/v2 hybrid); runs in the guest e2e");
        return;
    }
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let id = unique_id("oom");
        let mut spec = spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
        spec["linux"]["resources"] =
            serde_json::json!({"memory": {"limit": 16 << 20, "swap": 16 << 20}});
        create(&env, &client, &id, &spec).await;
        let events = client.clone();
        let oom = tokio::spawn(async move {
            events
                .get_oom_event(ctx(), &proto::GetOOMEventRequest::new())
                .await
        });
        start(&client, &id).await;
        let exit = wait_init(&client, &id).await;
        assert_eq!(exit.exit_status, 137);
        let ev = tokio::time::timeout(Duration::from_secs(10), oom)
            .await
            .expect("OOM event")
            .unwrap()
            .unwrap();
        assert_eq!(ev.container_id, id);
        let mut stats = proto::StatsContainerRequest::new();
        stats.container_id = id.clone();
        let s = client.stats_container(ctx(), &stats).await.unwrap();
        assert_eq!(s.memory.limit_bytes, 16 << 20);
        assert!(s.memory.oom_kill_events >= 1);
        remove(&client, &id).await;
    });
}

#[test]
fn create_and_destroy_sandbox_end_the_agent_run() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let opts = env.options();
        let run = tokio::spawn(async move { bulkhead_agent::run(&opts, false).await });
        // Wait for the socket to appear.
        let client = loop {
            match ttrpc::r#async::Client::connect(&format!("unix://{}", env.api.display())).await {
                Ok(c) => break bulkhead_protocol::ttrpc_api::AgentClient::new(c),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut sb = proto::CreateSandboxRequest::new();
        sb.sandbox_id = "pod-1".into();
        sb.hostname = "pod-host".into();
        let mut dns = proto::Dns::new();
        dns.servers = vec!["198.18.0.53".into()];
        sb.dns = Some(dns).into();
        client.create_sandbox(ctx(), &sb).await.unwrap();
        let resolv =
            std::fs::read_to_string(env.dir.path().join("state/sandbox/resolv.conf")).unwrap();
        assert_eq!(resolv, "nameserver 198.18.0.53\n");

        let id = unique_id("destroy");
        client
            .create_container(
                ctx(),
                &create_req(&id, &env.rootfs, &spec(&["sleep", "60"]), false, false),
            )
            .await
            .unwrap();
        start(&client, &id).await;
        client
            .destroy_sandbox(ctx(), &proto::DestroySandboxRequest::new())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("run() returns after DestroySandbox")
            .unwrap()
            .unwrap();
        assert!(!env.dir.path().join("state/containers").join(&id).exists());
    });
}

/// On the host the agent shares the host's network namespace: the network RPCs check the
/// request, then refuse to touch anything.
#[test]
fn network_rpcs_are_refused_outside_a_guest() {
    let Some(env) = TestEnv::new() else { return };
    env.rt.block_on(async {
        let (_sb, _server) = env.start_agent().await;
        let client = env.client().await;
        let status = |err: ttrpc::Error| match err {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
            other => panic!("{other:?}"),
        };

        let mut iface = proto::Interface::new();
        iface.name = "eth0".into();
        iface.mac = "01:00:5e:00:00:01".into();
        iface.mtu = 1500;
        let mut req = proto::UpdateInterfaceRequest::new();
        req.interface = Some(iface).into();
        let (code, msg) = status(client.update_interface(ctx(), &req).await.unwrap_err());
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
        assert!(msg.contains("interface.mac"), "{msg}");

        req.interface.as_mut().unwrap().mac = "02:42:c6:12:00:05".into();
        let (code, msg) = status(client.update_interface(ctx(), &req).await.unwrap_err());
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
        assert!(msg.contains("only as PID 1"), "{msg}");

        let (code, _) = status(
            client
                .update_routes(ctx(), &proto::UpdateRoutesRequest::new())
                .await
                .unwrap_err(),
        );
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
        let (code, _) = status(
            client
                .update_neighbours(ctx(), &proto::UpdateNeighboursRequest::new())
                .await
                .unwrap_err(),
        );
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    });
}
