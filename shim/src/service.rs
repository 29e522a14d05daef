//! containerd's Task service (task API v2, ttrpc): each call is translated into domain
//! values (`translate`), handled by the [`PodCore`], and its error mapped once
//! (`error::ShimError` -> ttrpc status). Failures are logged here, where they are handled.

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_sandbox::ResourceUpdate;
use containerd_shim::api;
use containerd_shim::TtrpcContext;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc;

use crate::error::{Result, ShimError};
use crate::pod_core::PodCore;
use crate::resources;
use crate::translate;

pub struct TaskService {
    core: Arc<PodCore>,
}

impl TaskService {
    pub fn new(core: Arc<PodCore>) -> Self {
        TaskService { core }
    }

    pub fn core(&self) -> &Arc<PodCore> {
        &self.core
    }
}

/// Logs a failed call once and turns it into containerd's status.
fn answer<T>(call: &str, id: &str, r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        match e {
            // Expected answers, not failures.
            ShimError::NotFound(_) | ShimError::Unimplemented(_) => {
                log::debug!("{call} {id}: {}", e.message())
            }
            _ => log::error!("{call} {id}: {}", e.message()),
        }
        e.into()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let r = async {
            let t = translate::create_task(&req)?;
            self.core.create(t).await
        }
        .await;
        let pid = answer("create", &req.id, r)?;
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let r = async {
            let p = translate::process_ref(&req.id, &req.exec_id)?;
            self.core.start(&p).await
        }
        .await;
        let pid = answer("start", &req.id, r)?;
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let r = async {
            let p = translate::process_ref(&req.id, &req.exec_id)?;
            self.core.delete(&p).await
        }
        .await;
        let (pid, exit) = answer("delete", &req.id, r)?;
        Ok(translate::delete_response(pid, exit))
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = async {
            let t = translate::exec_task(&req)?;
            self.core.exec(t).await
        }
        .await;
        answer("exec", &req.id, r)?;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = async {
            let p = translate::process_ref(&req.id, &req.exec_id)?;
            let size = translate::win_size(&req)?;
            self.core.resize(&p, size).await
        }
        .await;
        answer("resize_pty", &req.id, r)?;
        Ok(api::Empty::new())
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let r = translate::process_ref(&req.id, &req.exec_id).and_then(|p| self.core.state_of(&p));
        let s = answer("state", &req.id, r)?;
        Ok(translate::state_response(&s))
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let pids = answer("pids", &req.id, self.core.pids(&req.id))?;
        Ok(translate::pids_response(&pids))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let r = async {
            let k = translate::kill_task(&req)?;
            self.core.kill(k).await
        }
        .await;
        answer("kill", &req.id, r)?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let r = async {
            let p = translate::process_ref(&req.id, &req.exec_id)?;
            self.core.wait(&p).await
        }
        .await;
        let exit = answer("wait", &req.id, r)?;
        Ok(translate::wait_response(exit))
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let r = async {
            let s = self.core.stats(&req.id).await?;
            translate::stats_response(&s)
        }
        .await;
        answer("stats", &req.id, r)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let (shim_pid, task_pid) = self.core.connect();
        Ok(translate::connect_response(shim_pid, task_pid))
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.core.shutdown(req.now).await;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        if !req.stdin {
            return Ok(api::Empty::new());
        }
        let r = async {
            let p = translate::process_ref(&req.id, &req.exec_id)?;
            self.core.close_stdin(&p).await
        }
        .await;
        answer("close_io", &req.id, r)?;
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = async {
            let resources = match req.resources.as_ref() {
                Some(any) => resources::from_any(any)?,
                None => ResourceUpdate::default(),
            };
            self.core.update(&req.id, &resources).await
        }
        .await;
        answer("update", &req.id, r)?;
        Ok(api::Empty::new())
    }

    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        req: api::PauseRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = self.core.pause(&req.id).await;
        answer("pause", &req.id, r)?;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = self.core.resume(&req.id).await;
        answer("resume", &req.id, r)?;
        Ok(api::Empty::new())
    }
}
