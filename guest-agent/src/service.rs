//! The ttrpc `Agent` service: decodes requests into domain types, calls the
//! sandbox, encodes replies, and maps errors to ttrpc statuses.

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_protocol::network::{GuestInterface, GuestNeighbour, GuestRoute};
use bulkhead_protocol::proto;
use bulkhead_protocol::resources::UpdateRequest;
use bulkhead_protocol::ttrpc_api;
use bulkhead_protocol::types::{
    validate_container_id, validate_signal, ContainerConfig, ExecConfig, ProcessRef, SandboxConfig,
    WinSize,
};
use bulkhead_protocol::{check_protocol_version, PROTOCOL_VERSION};
use log::{debug, warn};
use tokio::sync::watch;
use ttrpc::r#async::TtrpcContext;

use crate::error::AgentError;
use crate::network::{self, Netlink};
use crate::sandbox::Sandbox;
use crate::stall_watch;

pub const AGENT_VERSION: &str = bulkhead_version::LONG;

pub struct AgentService {
    sandbox: Arc<Sandbox>,
    /// Set to true by DestroySandbox once containers are gone.
    shutdown: watch::Sender<bool>,
    /// One network change at a time: UpdateRoutes reads, removes and adds.
    network: tokio::sync::Mutex<()>,
}

impl AgentService {
    pub fn new(sandbox: Arc<Sandbox>, shutdown: watch::Sender<bool>) -> Self {
        AgentService {
            sandbox,
            shutdown,
            network: tokio::sync::Mutex::new(()),
        }
    }

    /// A netlink connection, when this agent owns the guest's network.
    fn netlink(&self) -> Result<Netlink, AgentError> {
        if !self.sandbox.manages_system() {
            return Err(AgentError::NetworkNotManaged);
        }
        Ok(Netlink::open()?)
    }

    /// The service table to register with a ttrpc server.
    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        ttrpc_api::create_agent(Arc::new(self))
    }
}

/// Logs a failed request once, here, and converts it for the peer.
fn fail(rpc: &str, e: AgentError) -> ttrpc::Error {
    warn!("{rpc}: {}", e.chain());
    e.to_ttrpc()
}

fn process_ref(container_id: &str, exec_id: &str) -> Result<ProcessRef, AgentError> {
    Ok(ProcessRef::new(container_id, exec_id)?)
}

#[async_trait]
impl ttrpc_api::Agent for AgentService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: proto::CheckRequest,
    ) -> ttrpc::Result<proto::CheckResponse> {
        let mut r = proto::CheckResponse::new();
        r.serving = true;
        Ok(r)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        req: proto::VersionRequest,
    ) -> ttrpc::Result<proto::VersionResponse> {
        check_protocol_version(req.protocol_version).map_err(|e| fail("Version", e.into()))?;
        let mut r = proto::VersionResponse::new();
        r.agent_version = AGENT_VERSION.to_owned();
        r.protocol_version = PROTOCOL_VERSION;
        Ok(r)
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: proto::CreateSandboxRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let cfg = SandboxConfig::try_from(req).map_err(|e| fail("CreateSandbox", e.into()))?;
        self.sandbox
            .create_sandbox(&cfg)
            .map_err(|e| fail("CreateSandbox", e))?;
        Ok(proto::Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: proto::DestroySandboxRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.sandbox.remove_all().await;
        // The owner of the watch (main) syncs and powers off, after this
        // reply had a moment to leave.
        self.shutdown.send_replace(true);
        Ok(proto::Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::CreateContainerRequest,
    ) -> ttrpc::Result<proto::CreateContainerResponse> {
        let _doing = stall_watch::doing(format!("CreateContainer {}", req.container_id));
        let cfg = ContainerConfig::try_from(req).map_err(|e| fail("CreateContainer", e.into()))?;
        let pid = self
            .sandbox
            .create_container(cfg)
            .map_err(|e| fail("CreateContainer", e))?;
        let mut r = proto::CreateContainerResponse::new();
        r.pid = pid.as_raw() as u32;
        Ok(r)
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::StartContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let _doing = stall_watch::doing(format!("StartContainer {}", req.container_id));
        validate_container_id(&req.container_id).map_err(|e| fail("StartContainer", e.into()))?;
        self.sandbox
            .start_container(&req.container_id)
            .map_err(|e| fail("StartContainer", e))?;
        Ok(proto::Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::RemoveContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        validate_container_id(&req.container_id).map_err(|e| fail("RemoveContainer", e.into()))?;
        self.sandbox
            .remove_container(&req.container_id)
            .await
            .map_err(|e| fail("RemoveContainer", e))?;
        Ok(proto::Empty::new())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: proto::ExecProcessRequest,
    ) -> ttrpc::Result<proto::ExecProcessResponse> {
        let _doing =
            stall_watch::doing(format!("ExecProcess {}/{}", req.container_id, req.exec_id));
        let cfg = ExecConfig::try_from(req).map_err(|e| fail("ExecProcess", e.into()))?;
        let pid = self
            .sandbox
            .exec_process(cfg)
            .map_err(|e| fail("ExecProcess", e))?;
        let mut r = proto::ExecProcessResponse::new();
        r.pid = pid.as_raw() as u32;
        Ok(r)
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: proto::SignalProcessRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let p =
            process_ref(&req.container_id, &req.exec_id).map_err(|e| fail("SignalProcess", e))?;
        let sig = validate_signal(req.signal).map_err(|e| fail("SignalProcess", e.into()))?;
        self.sandbox
            .signal_process(&p, sig)
            .map_err(|e| fail("SignalProcess", e))?;
        Ok(proto::Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: proto::WaitProcessRequest,
    ) -> ttrpc::Result<proto::WaitProcessResponse> {
        let p = process_ref(&req.container_id, &req.exec_id).map_err(|e| fail("WaitProcess", e))?;
        let exit = self
            .sandbox
            .wait_process(&p)
            .await
            .map_err(|e| fail("WaitProcess", e))?;
        debug!(
            "WaitProcess {}/{}: {}",
            p.container_id,
            p.exec_id,
            exit.status.as_status()
        );
        Ok(exit.into())
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: proto::TtyWinResizeRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let p =
            process_ref(&req.container_id, &req.exec_id).map_err(|e| fail("TtyWinResize", e))?;
        let size = WinSize::try_from(&req).map_err(|e| fail("TtyWinResize", e.into()))?;
        self.sandbox
            .resize_tty(&p, size)
            .map_err(|e| fail("TtyWinResize", e))?;
        Ok(proto::Empty::new())
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: proto::CloseStdinRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let p = process_ref(&req.container_id, &req.exec_id).map_err(|e| fail("CloseStdin", e))?;
        self.sandbox
            .close_stdin(&p)
            .map_err(|e| fail("CloseStdin", e))?;
        Ok(proto::Empty::new())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::StatsContainerRequest,
    ) -> ttrpc::Result<proto::StatsContainerResponse> {
        validate_container_id(&req.container_id).map_err(|e| fail("StatsContainer", e.into()))?;
        let stats = self
            .sandbox
            .stats(&req.container_id)
            .map_err(|e| fail("StatsContainer", e))?;
        Ok((&stats).into())
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::PauseContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let _doing = stall_watch::doing(format!("PauseContainer {}", req.container_id));
        validate_container_id(&req.container_id).map_err(|e| fail("PauseContainer", e.into()))?;
        self.sandbox
            .pause_container(&req.container_id)
            .map_err(|e| fail("PauseContainer", e))?;
        Ok(proto::Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::ResumeContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let _doing = stall_watch::doing(format!("ResumeContainer {}", req.container_id));
        validate_container_id(&req.container_id).map_err(|e| fail("ResumeContainer", e.into()))?;
        self.sandbox
            .resume_container(&req.container_id)
            .map_err(|e| fail("ResumeContainer", e))?;
        Ok(proto::Empty::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::UpdateContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let _doing = stall_watch::doing(format!("UpdateContainer {}", req.container_id));
        let update =
            UpdateRequest::try_from(&req).map_err(|e| fail("UpdateContainer", e.into()))?;
        self.sandbox
            .update_container(&update.container_id, &update.resources)
            .map_err(|e| fail("UpdateContainer", e))?;
        Ok(proto::Empty::new())
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: proto::GetOOMEventRequest,
    ) -> ttrpc::Result<proto::GetOOMEventResponse> {
        let id = self.sandbox.next_oom_event().await.ok_or_else(|| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::UNAVAILABLE,
                "agent is shutting down",
            ))
        })?;
        let mut r = proto::GetOOMEventResponse::new();
        r.container_id = id;
        Ok(r)
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: proto::UpdateInterfaceRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let failed = |e| fail("UpdateInterface", e);
        let iface = GuestInterface::try_from(&req).map_err(|e| failed(e.into()))?;
        let _one = self.network.lock().await;
        let nl = self.netlink().map_err(failed)?;
        network::update_interface(&nl, &iface)
            .await
            .map_err(|e| failed(e.into()))?;
        Ok(proto::Empty::new())
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: proto::UpdateRoutesRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let failed = |e| fail("UpdateRoutes", e);
        let routes = Vec::<GuestRoute>::try_from(&req).map_err(|e| failed(e.into()))?;
        let _one = self.network.lock().await;
        let nl = self.netlink().map_err(failed)?;
        network::update_routes(&nl, &routes)
            .await
            .map_err(|e| failed(e.into()))?;
        Ok(proto::Empty::new())
    }

    async fn update_neighbours(
        &self,
        _ctx: &TtrpcContext,
        req: proto::UpdateNeighboursRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let failed = |e| fail("UpdateNeighbours", e);
        let list = Vec::<GuestNeighbour>::try_from(&req).map_err(|e| failed(e.into()))?;
        let _one = self.network.lock().await;
        let nl = self.netlink().map_err(failed)?;
        network::update_neighbours(&nl, &list)
            .await
            .map_err(|e| failed(e.into()))?;
        Ok(proto::Empty::new())
    }
}
