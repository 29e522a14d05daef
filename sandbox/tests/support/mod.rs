//! Test doubles for the sandbox's integration tests: an in-process fake agent (the real
//! ttrpc service and stdio header, with a scripted container model) listening on
//! `<dir>/port_1024.sock` and `<dir>/port_1025.sock`, and the path of `fake-vmm.py`, a
//! stand-in for `bulkhead-vmm` that relays hybrid vsock `CONNECT <port>` to those sockets.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bulkhead_protocol::proto;
use bulkhead_protocol::stdio::{AttachStatus, Decoded, StdioHeader, StreamKind, FIXED_LEN};
use bulkhead_protocol::ttrpc_api::{create_agent, Agent};
use bulkhead_protocol::PROTOCOL_VERSION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;

pub fn fake_vmm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-vmm.py")
}

#[derive(Debug, Default)]
pub struct Process {
    pub exit: Option<u32>,
    pub stdin: Vec<u8>,
    pub stdin_closed: bool,
    pub winsize: Option<(u32, u32)>,
}

#[derive(Debug, Default)]
pub struct State {
    pub sandbox: Option<proto::CreateSandboxRequest>,
    pub containers: HashMap<String, proto::CreateContainerRequest>,
    pub started: Vec<String>,
    /// Keyed by (container, exec); the init process has exec id "".
    pub processes: HashMap<(String, String), Process>,
    pub destroyed: bool,
}

pub struct FakeAgent {
    pub state: Mutex<State>,
    pub changed: Notify,
    /// Created by DestroySandbox: fake-vmm.py powers off when it appears.
    poweroff: PathBuf,
}

fn status(code: ttrpc::Code, msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

impl FakeAgent {
    fn key(&self, cid: &str, eid: &str) -> (String, String) {
        let st = self.state.lock().unwrap();
        // The init process answers to "" and to its CreateContainer exec id.
        match st.containers.get(cid) {
            Some(c) if c.exec_id == eid => (cid.to_owned(), String::new()),
            _ => (cid.to_owned(), eid.to_owned()),
        }
    }

    fn with_process<T>(
        &self,
        cid: &str,
        eid: &str,
        f: impl FnOnce(&mut Process) -> T,
    ) -> ttrpc::Result<T> {
        let key = self.key(cid, eid);
        let mut st = self.state.lock().unwrap();
        match st.processes.get_mut(&key) {
            Some(p) => Ok(f(p)),
            None => Err(status(
                ttrpc::Code::NOT_FOUND,
                &format!("no process {cid}/{eid}"),
            )),
        }
    }
}

#[async_trait]
impl Agent for FakeAgent {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: proto::CheckRequest,
    ) -> ttrpc::Result<proto::CheckResponse> {
        let mut r = proto::CheckResponse::new();
        r.serving = true;
        Ok(r)
    }

    async fn version(
        &self,
        _: &TtrpcContext,
        req: proto::VersionRequest,
    ) -> ttrpc::Result<proto::VersionResponse> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(status(ttrpc::Code::FAILED_PRECONDITION, "version"));
        }
        let mut r = proto::VersionResponse::new();
        r.agent_version = "fake-agent 0.0".into();
        r.protocol_version = PROTOCOL_VERSION;
        Ok(r)
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: proto::CreateSandboxRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.state.lock().unwrap().sandbox = Some(req);
        Ok(proto::Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: proto::DestroySandboxRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.state.lock().unwrap().destroyed = true;
        let _ = std::fs::write(&self.poweroff, b"");
        Ok(proto::Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: proto::CreateContainerRequest,
    ) -> ttrpc::Result<proto::CreateContainerResponse> {
        let mut st = self.state.lock().unwrap();
        if st.containers.contains_key(&req.container_id) {
            return Err(status(ttrpc::Code::ALREADY_EXISTS, "container exists"));
        }
        st.processes.insert(
            (req.container_id.clone(), String::new()),
            Process::default(),
        );
        st.containers.insert(req.container_id.clone(), req);
        let mut r = proto::CreateContainerResponse::new();
        r.pid = 42;
        Ok(r)
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: proto::StartContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let mut st = self.state.lock().unwrap();
        if !st.containers.contains_key(&req.container_id) {
            return Err(status(
                ttrpc::Code::NOT_FOUND,
                &format!("no container {}", req.container_id),
            ));
        }
        st.started.push(req.container_id);
        Ok(proto::Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: proto::RemoveContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let mut st = self.state.lock().unwrap();
        if st.containers.remove(&req.container_id).is_none() {
            return Err(status(ttrpc::Code::NOT_FOUND, "no container"));
        }
        st.processes.retain(|(c, _), _| *c != req.container_id);
        Ok(proto::Empty::new())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: proto::ExecProcessRequest,
    ) -> ttrpc::Result<proto::ExecProcessResponse> {
        let mut st = self.state.lock().unwrap();
        if !st.containers.contains_key(&req.container_id) {
            return Err(status(ttrpc::Code::NOT_FOUND, "no container"));
        }
        st.processes
            .insert((req.container_id, req.exec_id), Process::default());
        let mut r = proto::ExecProcessResponse::new();
        r.pid = 43;
        Ok(r)
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: proto::SignalProcessRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.with_process(&req.container_id, &req.exec_id, |p| {
            p.exit = Some(128 + req.signal)
        })?;
        self.changed.notify_waiters();
        Ok(proto::Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: proto::WaitProcessRequest,
    ) -> ttrpc::Result<proto::WaitProcessResponse> {
        loop {
            let notified = self.changed.notified();
            if let Some(code) = self.with_process(&req.container_id, &req.exec_id, |p| p.exit)? {
                let mut r = proto::WaitProcessResponse::new();
                r.exit_status = code;
                r.exited_at_unix_nanos = 1_700_000_000_000_000_000;
                return Ok(r);
            }
            notified.await;
        }
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: proto::TtyWinResizeRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.with_process(&req.container_id, &req.exec_id, |p| {
            p.winsize = Some((req.rows, req.columns))
        })?;
        Ok(proto::Empty::new())
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: proto::CloseStdinRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.with_process(&req.container_id, &req.exec_id, |p| p.stdin_closed = true)?;
        Ok(proto::Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: proto::StatsContainerRequest,
    ) -> ttrpc::Result<proto::StatsContainerResponse> {
        self.with_process(&req.container_id, "", |_| ())?;
        let mut mem = proto::MemoryStats::new();
        mem.usage_bytes = 4096;
        mem.limit_bytes = 0;
        let mut r = proto::StatsContainerResponse::new();
        r.memory = Some(mem).into();
        Ok(r)
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: proto::GetOOMEventRequest,
    ) -> ttrpc::Result<proto::GetOOMEventResponse> {
        // Reports the first started container as OOM-killed once it has one.
        loop {
            let notified = self.changed.notified();
            if let Some(cid) = self.state.lock().unwrap().started.first().cloned() {
                let mut r = proto::GetOOMEventResponse::new();
                r.container_id = cid;
                return Ok(r);
            }
            notified.await;
        }
    }
}

/// A running fake agent; its servers stop when dropped.
pub struct FakeAgentHandle {
    pub agent: Arc<FakeAgent>,
    pub ttrpc_socket: PathBuf,
    pub stdio_socket: PathBuf,
    _server: ttrpc::r#async::Server,
    stdio_task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgentHandle {
    fn drop(&mut self) {
        self.stdio_task.abort();
    }
}

/// Starts a fake agent serving in `dir` (the fake VMM's "guest").
pub async fn start_fake_agent(dir: &Path) -> FakeAgentHandle {
    let agent = Arc::new(FakeAgent {
        state: Mutex::new(State::default()),
        changed: Notify::new(),
        poweroff: dir.join("poweroff"),
    });
    let ttrpc_socket = dir.join(format!("port_{}.sock", bulkhead_protocol::AGENT_PORT));
    let stdio_socket = dir.join(format!("port_{}.sock", bulkhead_protocol::STDIO_PORT));
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", ttrpc_socket.display()))
        .unwrap()
        .register_service(create_agent(agent.clone()));
    server.start().await.unwrap();
    let listener = UnixListener::bind(&stdio_socket).unwrap();
    let stdio_agent = agent.clone();
    let stdio_task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_stdio(stdio_agent.clone(), conn));
        }
    });
    FakeAgentHandle {
        agent,
        ttrpc_socket,
        stdio_socket,
        _server: server,
        stdio_task,
    }
}

/// stdout/stderr: writes `<stream>:<container>/<exec>\n` and closes; stdin: records what
/// arrives until end-of-file; tty: echoes.
async fn serve_stdio(agent: Arc<FakeAgent>, mut conn: tokio::net::UnixStream) {
    let mut buf = vec![0u8; FIXED_LEN];
    if conn.read_exact(&mut buf).await.is_err() {
        return;
    }
    let header = loop {
        match StdioHeader::decode(&buf) {
            Ok(Decoded::Complete(h, _)) => break h,
            Ok(Decoded::NeedMore(n)) => {
                let have = buf.len();
                buf.resize(n, 0);
                if conn.read_exact(&mut buf[have..]).await.is_err() {
                    return;
                }
            }
            Err(_) => {
                let _ = conn.write_all(&[AttachStatus::BadHeader.to_byte()]).await;
                return;
            }
        }
    };
    let key = agent.key(&header.container_id, &header.exec_id);
    if !agent.state.lock().unwrap().processes.contains_key(&key) {
        let _ = conn.write_all(&[AttachStatus::NotFound.to_byte()]).await;
        return;
    }
    if conn.write_all(&[AttachStatus::Ok.to_byte()]).await.is_err() {
        return;
    }
    match header.stream {
        StreamKind::Stdout | StreamKind::Stderr => {
            let line = format!(
                "{:?}:{}/{}\n",
                header.stream, header.container_id, header.exec_id
            );
            let _ = conn.write_all(line.as_bytes()).await;
        }
        StreamKind::Stdin => {
            let mut data = Vec::new();
            let _ = conn.read_to_end(&mut data).await;
            if let Some(p) = agent.state.lock().unwrap().processes.get_mut(&key) {
                p.stdin.extend_from_slice(&data);
            }
            agent.changed.notify_waiters();
        }
        StreamKind::Tty => {
            let (mut r, mut w) = conn.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    }
}
