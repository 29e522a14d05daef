//! The supervisor's side of the control socket: each connection carries one request
//! (see `control`), answered through the backend's agent API.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bulkhead_images::process::{resolve_user, UserDb};
use bulkhead_sandbox::{ExecConfig, ProcessRef, StdioConfig, StreamKind, WinSize};
use oci_spec::runtime::{Process, UserBuilder};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::control::{read_line, write_json, Request, Response, Stream};

pub struct Server {
    pub id: String,
    pub backend: Arc<Backend>,
    /// The init's process: the base of exec'd processes (capabilities, rlimits, env).
    pub process: Process,
    pub users: UserDb,
    /// The init's exit status once it exited.
    pub exit: watch::Receiver<Option<i32>>,
}

pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        // VM mode has no host agent that made the socket directory already.
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    // Only root talks to the supervisor.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(server: Arc<Server>, listener: UnixListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(e) = server.handle(conn).await {
                log::debug!("control connection: {e:#}");
            }
        });
    }
}

impl Server {
    fn process_ref(&self, exec_id: &str) -> anyhow::Result<ProcessRef> {
        ProcessRef::new(&self.id, exec_id).map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn handle(&self, conn: UnixStream) -> anyhow::Result<()> {
        let mut conn = BufReader::new(conn);
        let line = read_line(&mut conn).await?;
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                return write_json(
                    conn.get_mut(),
                    &Response::error(format!("bad request: {e}")),
                )
                .await
            }
        };
        if let Request::Attach { exec_id, stream } = req {
            return self.attach(conn, &exec_id, stream).await;
        }
        let resp = match self.answer(req).await {
            Ok(r) => r,
            Err(e) => Response::error(format!("{e:#}")),
        };
        write_json(conn.get_mut(), &resp).await
    }

    async fn answer(&self, req: Request) -> anyhow::Result<Response> {
        match req {
            Request::Kill { exec_id, signal } => {
                let sig = u32::try_from(signal).ok().filter(|s| (1..=64).contains(s));
                let sig = sig.with_context(|| format!("invalid signal {signal}"))?;
                self.backend
                    .signal(&self.process_ref(&exec_id)?, sig)
                    .await?;
                Ok(Response::ok())
            }
            Request::Stop { timeout_secs } => self.stop(timeout_secs).await,
            Request::Exec {
                exec_id,
                args,
                env,
                cwd,
                user,
                tty,
                stdin,
            } => {
                let p = self.process_ref(&exec_id)?;
                let process = self.exec_process(args, env, cwd, user, tty)?;
                self.backend
                    .exec(&ExecConfig {
                        process: p,
                        process_json: serde_json::to_vec(&process)?,
                        stdio: StdioConfig { stdin, tty },
                    })
                    .await?;
                Ok(Response::ok())
            }
            Request::Wait { exec_id } => {
                let e = self.backend.wait(&self.process_ref(&exec_id)?).await?;
                Ok(Response::exited(e.exit_status as i32))
            }
            Request::Resize {
                exec_id,
                rows,
                cols,
            } => {
                let size = WinSize {
                    rows,
                    columns: cols,
                };
                self.backend
                    .resize(&self.process_ref(&exec_id)?, size)
                    .await?;
                Ok(Response::ok())
            }
            Request::CloseStdin { exec_id } => {
                self.backend
                    .close_stdin(&self.process_ref(&exec_id)?)
                    .await?;
                Ok(Response::ok())
            }
            Request::Attach { .. } => bail!("attach is handled separately"),
        }
    }

    /// SIGTERM, SIGKILL after the grace period; answered with the exit status.
    async fn stop(&self, timeout_secs: u64) -> anyhow::Result<Response> {
        let mut exit = self.exit.clone();
        if let Some(code) = *exit.borrow() {
            return Ok(Response::exited(code));
        }
        let init = self.process_ref("")?;
        if let Err(e) = self.backend.signal(&init, libc::SIGTERM as u32).await {
            log::info!("SIGTERM: {e:#}");
        }
        let exited = |exit: &mut watch::Receiver<Option<i32>>| {
            let mut exit = exit.clone();
            async move {
                loop {
                    if let Some(c) = *exit.borrow_and_update() {
                        return c;
                    }
                    if exit.changed().await.is_err() {
                        return -1;
                    }
                }
            }
        };
        let grace = Duration::from_secs(timeout_secs);
        if let Ok(code) = tokio::time::timeout(grace, exited(&mut exit)).await {
            return Ok(Response::exited(code));
        }
        log::info!("the container did not stop within {timeout_secs} s: SIGKILL");
        if let Err(e) = self.backend.signal(&init, libc::SIGKILL as u32).await {
            log::info!("SIGKILL: {e:#}");
        }
        Ok(Response::exited(exited(&mut exit).await))
    }

    fn exec_process(
        &self,
        args: Vec<String>,
        env: Vec<String>,
        cwd: Option<String>,
        user: Option<String>,
        tty: bool,
    ) -> anyhow::Result<Process> {
        if args.is_empty() {
            bail!("no command given");
        }
        let mut p = self.process.clone();
        p.set_args(Some(args));
        let mut all = p.env().clone().unwrap_or_default();
        for kv in env {
            let key = kv.split('=').next().unwrap_or(&kv).to_owned();
            all.retain(|e| e.split('=').next() != Some(key.as_str()));
            all.push(kv);
        }
        p.set_env(Some(all));
        if let Some(cwd) = cwd {
            if !cwd.starts_with('/') {
                bail!("working directory {cwd:?} is not absolute");
            }
            p.set_cwd(cwd.into());
        }
        if let Some(u) = user {
            let (uid, gid) = resolve_user(&u, &self.users)?;
            p.set_user(UserBuilder::default().uid(uid).gid(gid).build()?);
        }
        p.set_terminal(Some(tty));
        Ok(p)
    }

    /// Turns the connection into one stdio stream of a process.
    async fn attach(
        &self,
        mut conn: BufReader<UnixStream>,
        exec_id: &str,
        stream: Stream,
    ) -> anyhow::Result<()> {
        let kind = match stream {
            Stream::Stdin => StreamKind::Stdin,
            Stream::Stdout => StreamKind::Stdout,
            Stream::Stderr => StreamKind::Stderr,
            Stream::Tty => StreamKind::Tty,
        };
        let opened = match self.process_ref(exec_id) {
            Ok(p) => self.backend.open_stdio(&p, kind).await,
            Err(e) => Err(e),
        };
        let agent = match opened {
            Ok(s) => s,
            Err(e) => return write_json(conn.get_mut(), &Response::error(format!("{e:#}"))).await,
        };
        write_json(conn.get_mut(), &Response::ok()).await?;
        let (mut ar, mut aw) = agent.into_split();
        let buffered = conn.buffer().to_vec();
        let (mut cr, mut cw) = conn.into_inner().into_split();
        match stream {
            Stream::Stdout | Stream::Stderr => {
                tokio::io::copy(&mut ar, &mut cw).await?;
                cw.shutdown().await?;
            }
            Stream::Stdin => {
                aw.write_all(&buffered).await?;
                tokio::io::copy(&mut cr, &mut aw).await?;
                aw.shutdown().await?;
            }
            Stream::Tty => {
                aw.write_all(&buffered).await?;
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut aw).await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut ar, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                // The output ends the session; input may stay open.
                tokio::select! {
                    _ = down => {}
                    _ = async { up.await; std::future::pending::<()>().await } => {}
                }
            }
        }
        Ok(())
    }
}
