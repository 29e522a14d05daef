//! `AgentConn::configure_network` against a recording ttrpc agent: the order of the
//! requests, what they carry, and the checks made before anything is sent.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bulkhead_protocol::network::{GuestInterface, GuestNeighbour, GuestRoute, RouteScope};
use bulkhead_protocol::ttrpc_api::{create_agent, Agent};
use bulkhead_protocol::PROTOCOL_VERSION;
use ttrpc::r#async::TtrpcContext;

use super::*;

/// Every network request, in arrival order, as `rpc: detail`.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

struct RecordingAgent(Arc<Recorder>);

impl RecordingAgent {
    fn record(&self, what: String) {
        self.0 .0.lock().unwrap().push(what);
    }
}

#[async_trait]
impl Agent for RecordingAgent {
    async fn version(
        &self,
        _: &TtrpcContext,
        _: proto::VersionRequest,
    ) -> ttrpc::Result<proto::VersionResponse> {
        let mut r = proto::VersionResponse::new();
        r.protocol_version = PROTOCOL_VERSION;
        Ok(r)
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: proto::UpdateInterfaceRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let i = GuestInterface::try_from(&req).unwrap();
        self.record(format!("interface {} {} {}", i.name, i.mac, i.mtu));
        Ok(proto::Empty::new())
    }

    async fn update_routes(
        &self,
        _: &TtrpcContext,
        req: proto::UpdateRoutesRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let routes = Vec::<GuestRoute>::try_from(&req).unwrap();
        self.record(format!("routes {}", routes.len()));
        Ok(proto::Empty::new())
    }

    async fn update_neighbours(
        &self,
        _: &TtrpcContext,
        req: proto::UpdateNeighboursRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let list = Vec::<GuestNeighbour>::try_from(&req).unwrap();
        self.record(format!("neighbours {}", list.len()));
        Ok(proto::Empty::new())
    }
}

fn pod_network() -> GuestNetwork {
    GuestNetwork {
        interfaces: vec![GuestInterface {
            name: "eth0".into(),
            mac: "02:42:c6:12:00:05".parse().unwrap(),
            mtu: 1450,
            addresses: vec!["198.18.0.5/24".parse().unwrap()],
        }],
        routes: vec![GuestRoute {
            destination: None,
            gateway: Some("198.18.0.1".parse().unwrap()),
            device: "eth0".into(),
            source: None,
            scope: RouteScope::Universe,
        }],
        neighbours: vec![GuestNeighbour {
            ip: "198.18.0.1".parse().unwrap(),
            mac: "02:42:c6:12:00:01".parse().unwrap(),
            device: "eth0".into(),
        }],
    }
}

#[test]
fn configure_network_sends_interfaces_then_routes_then_neighbours() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let recorder = Arc::new(Recorder::default());
        let service = create_agent(Arc::new(RecordingAgent(Arc::clone(&recorder))));
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", socket.display()))
            .unwrap()
            .register_service(service);
        server.start().await.unwrap();

        let endpoint = AgentEndpoint::Unix {
            ttrpc: socket,
            stdio: dir.path().join("stdio.sock"),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let conn = AgentConn::connect(endpoint, deadline, Duration::from_secs(5))
            .await
            .unwrap();
        let calls = || recorder.0.lock().unwrap().clone();

        conn.configure_network(&GuestNetwork::default())
            .await
            .unwrap();
        assert!(calls().is_empty(), "no pod network, no request");

        conn.configure_network(&pod_network()).await.unwrap();
        assert_eq!(
            calls(),
            [
                "interface eth0 02:42:c6:12:00:05 1450",
                "routes 1",
                "neighbours 1"
            ]
        );

        // A bad plan is refused before the first request.
        let mut bad = pod_network();
        bad.routes[0].device.clear();
        let err = conn.configure_network(&bad).await.unwrap_err();
        assert!(
            matches!(err, SandboxError::InvalidArgument(ref f) if f.field == "routes"),
            "{err:?}"
        );
        assert_eq!(calls().len(), 3);
        let _ = server.shutdown().await;
    });
}
