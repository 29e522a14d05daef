//! The connection to one guest agent: typed async calls over the protocol crate's domain
//! types, and stdio streams opened with the stdio header.
//!
//! The agent is reached through an [`AgentEndpoint`]: the VMM's hybrid vsock socket in a
//! real sandbox, or plain unix sockets when the agent runs on the host (tests).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_protocol::client::{client_from_socket, handshake, AgentVersion};
use bulkhead_protocol::network::GuestNetwork;
use bulkhead_protocol::network_proto::{validate_interface, validate_neighbours, validate_routes};
use bulkhead_protocol::proto;
use bulkhead_protocol::resources::{ResourceUpdate, UpdateRequest};
use bulkhead_protocol::stdio::{AttachStatus, StdioHeader, StreamKind};
use bulkhead_protocol::ttrpc_api::AgentClient;
use bulkhead_protocol::types::{
    validate_container_id, validate_signal, ContainerConfig, ContainerStats, ExecConfig,
    ProcessRef, SandboxConfig as AgentSandboxConfig, WinSize,
};
use bulkhead_protocol::{AGENT_PORT, STDIO_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::error::{Phase, SandboxError, StdioError};
use crate::hybrid_vsock::{self, ConnectError};

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// The VMM's hybrid vsock socket: ttrpc on [`AGENT_PORT`], stdio on [`STDIO_PORT`].
    HybridVsock(PathBuf),
    /// Plain unix sockets, for an agent running on the host.
    Unix { ttrpc: PathBuf, stdio: PathBuf },
}

impl AgentEndpoint {
    /// Opens one stream to the agent's ttrpc (`stdio == false`) or stdio service, retrying
    /// until `deadline` while it is not listening yet.
    pub async fn connect(
        &self,
        stdio: bool,
        deadline: Instant,
    ) -> Result<UnixStream, ConnectError> {
        match self {
            AgentEndpoint::HybridVsock(uds) => {
                let port = if stdio { STDIO_PORT } else { AGENT_PORT };
                hybrid_vsock::connect(uds, port, deadline).await
            }
            AgentEndpoint::Unix {
                ttrpc,
                stdio: stdio_path,
            } => connect_unix(if stdio { stdio_path } else { ttrpc }, deadline).await,
        }
    }
}

async fn connect_unix(path: &Path, deadline: Instant) -> Result<UnixStream, ConnectError> {
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let err = match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(source)
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                ConnectError::NoSocket {
                    path: path.to_path_buf(),
                    source,
                }
            }
            Err(source) => {
                return Err(ConnectError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let pause = Duration::from_millis(20);
        if Instant::now() + pause >= deadline {
            return Err(ConnectError::TimedOut {
                port: 0,
                tries,
                elapsed: start.elapsed(),
                last: Box::new(err),
            });
        }
        tokio::time::sleep(pause).await;
    }
}

/// How a process ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, or 128 + the signal number (the shell convention containerd uses).
    pub exit_status: u32,
    /// Guest wall clock at the exit, nanoseconds since the Unix epoch.
    pub exited_at_unix_nanos: i64,
}

/// Default time limit of one request (not for the blocking ones: wait, OOM events).
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected, version-checked agent.
#[derive(Clone)]
pub struct AgentConn {
    client: AgentClient,
    endpoint: AgentEndpoint,
    rpc_timeout: Duration,
    version: AgentVersion,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("endpoint", &self.endpoint)
            .field("version", &self.version)
            .finish()
    }
}

impl AgentConn {
    /// Connects to the agent (retrying until `deadline`) and checks its protocol version.
    pub async fn connect(
        endpoint: AgentEndpoint,
        deadline: Instant,
        rpc_timeout: Duration,
    ) -> Result<Self, SandboxError> {
        let stream = endpoint.connect(false, deadline).await.map_err(|source| {
            SandboxError::AgentConnect {
                source,
                console_tail: String::new(),
            }
        })?;
        let client = client_from_socket(ttrpc::r#async::transport::Socket::new(stream));
        let version = handshake(&client, nanos(rpc_timeout))
            .await
            .map_err(SandboxError::Handshake)?;
        log::info!(
            "agent {} speaks protocol {}",
            version.agent_version,
            version.protocol_version
        );
        Ok(AgentConn {
            client,
            endpoint,
            rpc_timeout,
            version,
        })
    }

    pub fn version(&self) -> &AgentVersion {
        &self.version
    }

    pub fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(nanos(self.rpc_timeout))
    }

    /// Whether the agent serves requests.
    pub async fn check(&self) -> Result<bool, SandboxError> {
        let resp = self
            .client
            .check(self.ctx(), &proto::CheckRequest::new())
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::AgentConnect, e))?;
        Ok(resp.serving)
    }

    pub async fn create_sandbox(&self, config: &AgentSandboxConfig) -> Result<(), SandboxError> {
        let req = proto::CreateSandboxRequest::from(config);
        self.client
            .create_sandbox(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::SandboxCreate, e))?;
        Ok(())
    }

    /// Asks the agent to stop everything and power the VM off. The answer may be lost when
    /// the VM goes first: the caller watches the VMM exit instead.
    pub async fn destroy_sandbox(&self, timeout: Duration) -> Result<(), SandboxError> {
        self.client
            .destroy_sandbox(
                ttrpc::context::with_timeout(nanos(timeout)),
                &proto::DestroySandboxRequest::new(),
            )
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Destroy, e))?;
        Ok(())
    }

    /// Creates a container; returns the guest pid of its init process.
    pub async fn create_container(&self, config: &ContainerConfig) -> Result<u32, SandboxError> {
        validate_container_id(&config.id).map_err(SandboxError::InvalidArgument)?;
        let req = proto::CreateContainerRequest::from(config);
        let resp = self
            .client
            .create_container(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::ContainerCreate, e))?;
        Ok(resp.pid)
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), SandboxError> {
        validate_container_id(container_id).map_err(SandboxError::InvalidArgument)?;
        let mut req = proto::StartContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.client
            .start_container(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::ContainerStart, e))?;
        Ok(())
    }

    /// Starts an exec process; returns its guest pid.
    pub async fn exec(&self, config: &ExecConfig) -> Result<u32, SandboxError> {
        let req = proto::ExecProcessRequest::from(config);
        let resp = self
            .client
            .exec_process(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Exec, e))?;
        Ok(resp.pid)
    }

    /// Sends `signal` (1..=64) to a process.
    pub async fn signal(&self, process: &ProcessRef, signal: u32) -> Result<(), SandboxError> {
        validate_signal(signal).map_err(SandboxError::InvalidArgument)?;
        let mut req = proto::SignalProcessRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        req.signal = signal;
        self.client
            .signal_process(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Signal, e))?;
        Ok(())
    }

    /// Waits (without a time limit) until the process exits.
    pub async fn wait(&self, process: &ProcessRef) -> Result<ExitInfo, SandboxError> {
        let mut req = proto::WaitProcessRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        let resp = self
            .client
            .wait_process(ttrpc::context::with_timeout(0), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Wait, e))?;
        Ok(ExitInfo {
            exit_status: resp.exit_status,
            exited_at_unix_nanos: resp.exited_at_unix_nanos,
        })
    }

    pub async fn resize(&self, process: &ProcessRef, size: WinSize) -> Result<(), SandboxError> {
        let mut req = proto::TtyWinResizeRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        req.rows = u32::from(size.rows);
        req.columns = u32::from(size.columns);
        self.client
            .tty_win_resize(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Resize, e))?;
        Ok(())
    }

    pub async fn close_stdin(&self, process: &ProcessRef) -> Result<(), SandboxError> {
        let mut req = proto::CloseStdinRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        self.client
            .close_stdin(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::CloseStdin, e))?;
        Ok(())
    }

    pub async fn stats(&self, container_id: &str) -> Result<ContainerStats, SandboxError> {
        let mut req = proto::StatsContainerRequest::new();
        req.container_id = container_id.to_owned();
        let resp = self
            .client
            .stats_container(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Stats, e))?;
        Ok(ContainerStats::from(&resp))
    }

    /// Waits (without a time limit) for the next OOM kill in any container; returns the
    /// container id.
    pub async fn next_oom_event(&self) -> Result<String, SandboxError> {
        let resp = self
            .client
            .get_oom_event(
                ttrpc::context::with_timeout(0),
                &proto::GetOOMEventRequest::new(),
            )
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::OomEvent, e))?;
        Ok(resp.container_id)
    }

    /// Freezes every process of a running container.
    pub async fn pause_container(&self, container_id: &str) -> Result<(), SandboxError> {
        validate_container_id(container_id).map_err(SandboxError::InvalidArgument)?;
        let mut req = proto::PauseContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.client
            .pause_container(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Pause, e))?;
        Ok(())
    }

    /// Thaws a paused container.
    pub async fn resume_container(&self, container_id: &str) -> Result<(), SandboxError> {
        validate_container_id(container_id).map_err(SandboxError::InvalidArgument)?;
        let mut req = proto::ResumeContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.client
            .resume_container(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Resume, e))?;
        Ok(())
    }

    /// Applies new cgroup limits to a container (unset fields keep their value).
    pub async fn update_container(
        &self,
        container_id: &str,
        resources: &ResourceUpdate,
    ) -> Result<(), SandboxError> {
        let update = UpdateRequest {
            container_id: container_id.to_owned(),
            resources: resources.clone(),
        };
        validate_container_id(container_id).map_err(SandboxError::InvalidArgument)?;
        resources
            .validate()
            .map_err(SandboxError::InvalidArgument)?;
        self.client
            .update_container(self.ctx(), &proto::UpdateContainerRequest::from(&update))
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::Update, e))?;
        Ok(())
    }

    /// Makes the guest's network look like the pod's: each interface (found by MAC,
    /// renamed, MTU, addresses, up), then the routes (replacing the guest's non-kernel
    /// routes), then the permanent neighbours. The whole plan is checked before the first
    /// request; an empty plan (no pod network) sends nothing. Call after CreateSandbox, once
    /// the VMM gave the guest its NICs. Errors carry the agent's message, which names the
    /// interface, route or neighbour.
    pub async fn configure_network(&self, network: &GuestNetwork) -> Result<(), SandboxError> {
        if *network == GuestNetwork::default() {
            return Ok(());
        }
        for iface in &network.interfaces {
            validate_interface(iface).map_err(SandboxError::InvalidArgument)?;
        }
        validate_routes(&network.routes).map_err(SandboxError::InvalidArgument)?;
        validate_neighbours(&network.neighbours).map_err(SandboxError::InvalidArgument)?;
        let failed = |e| SandboxError::from_rpc(Phase::SandboxCreate, e);
        for iface in &network.interfaces {
            self.client
                .update_interface(self.ctx(), &proto::UpdateInterfaceRequest::from(iface))
                .await
                .map_err(failed)?;
        }
        let req = proto::UpdateRoutesRequest::from(network.routes.as_slice());
        self.client
            .update_routes(self.ctx(), &req)
            .await
            .map_err(failed)?;
        let req = proto::UpdateNeighboursRequest::from(network.neighbours.as_slice());
        self.client
            .update_neighbours(self.ctx(), &req)
            .await
            .map_err(failed)?;
        Ok(())
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), SandboxError> {
        validate_container_id(container_id).map_err(SandboxError::InvalidArgument)?;
        let mut req = proto::RemoveContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.client
            .remove_container(self.ctx(), &req)
            .await
            .map_err(|e| SandboxError::from_rpc(Phase::ContainerRemove, e))?;
        Ok(())
    }

    /// Opens one stdio stream of a process: a new connection to the agent's stdio service,
    /// the header, the agent's one-byte answer. After `Ok` the stream carries the raw bytes
    /// (host to guest for stdin, guest to host for stdout/stderr, both for tty).
    pub async fn open_stdio(
        &self,
        process: &ProcessRef,
        stream: StreamKind,
    ) -> Result<UnixStream, SandboxError> {
        let deadline = Instant::now() + self.rpc_timeout;
        open_stdio(&self.endpoint, process, stream, deadline)
            .await
            .map_err(SandboxError::Stdio)
    }
}

async fn open_stdio(
    endpoint: &AgentEndpoint,
    process: &ProcessRef,
    stream: StreamKind,
    deadline: Instant,
) -> Result<UnixStream, StdioError> {
    let header = StdioHeader::new(&process.container_id, &process.exec_id, stream)
        .encode()
        .map_err(StdioError::Header)?;
    let mut conn = endpoint
        .connect(true, deadline)
        .await
        .map_err(StdioError::Connect)?;
    conn.write_all(&header).await.map_err(StdioError::Io)?;
    let mut status = [0u8; 1];
    let answer = tokio::time::timeout_at(deadline, conn.read(&mut status)).await;
    match answer {
        Err(_) => Err(StdioError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer to the stdio header",
        ))),
        Ok(Err(e)) => Err(StdioError::Io(e)),
        Ok(Ok(0)) => Err(StdioError::NoAnswer),
        Ok(Ok(_)) => match AttachStatus::from_byte(status[0]) {
            AttachStatus::Ok => Ok(conn),
            refused => Err(StdioError::Refused(refused)),
        },
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[path = "agent_network_tests.rs"]
mod network_tests;
