//! The per-container supervisor: owns the backend (microVM or host agent) for the
//! container's whole life. It prepares the container, starts it, records its state, serves
//! the control socket, copies its output to the log (and to the terminal in the
//! foreground), forwards signals, waits for the exit and tears everything down.
//!
//! `bulkhead run` is the supervisor itself in the foreground; `run -d` starts
//! `bulkhead supervise ID` as a daemon (new session, stdio detached) that reports its
//! progress and readiness over a pipe.

mod prepare;
mod server;

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bulkhead_images::Store;
use bulkhead_sandbox::{ContainerConfig, ProcessRef, StdioConfig, StreamKind, WinSize};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;
use crate::state::{now, process_start_time, ContainerDir, Status};
use crate::term;
use crate::timings;

/// Where progress and readiness go.
pub enum Reporter {
    /// Foreground: progress lines on stderr.
    Stderr { quiet: bool },
    /// Detached: lines on the pipe to the waiting `run -d` (`progress: `, `ready`,
    /// `error: `).
    Pipe(std::sync::Mutex<Option<std::fs::File>>),
}

impl Reporter {
    pub fn progress(&self, msg: &str) {
        log::info!("{msg}");
        match self {
            Reporter::Stderr { quiet } => {
                if !quiet {
                    eprintln!("{msg}");
                }
            }
            Reporter::Pipe(p) => {
                if let Ok(mut g) = p.lock() {
                    if let Some(f) = g.as_mut() {
                        let _ = writeln!(f, "progress: {msg}");
                    }
                }
            }
        }
    }

    /// Ends the pipe with `ready` or `error: ...`.
    fn finish(&self, result: Result<(), &anyhow::Error>) {
        if let Reporter::Pipe(p) = self {
            if let Ok(mut g) = p.lock() {
                if let Some(mut f) = g.take() {
                    let _ = match result {
                        Ok(()) => writeln!(f, "ready"),
                        Err(e) => writeln!(f, "error: {}", format!("{e:#}").replace('\n', " ")),
                    };
                }
            }
        }
    }
}

/// Foreground attachment of the user's terminal.
pub struct Foreground {
    pub tty: bool,
    pub interactive: bool,
}

/// The container's id in the agent: the first 12 digits of its id.
pub fn agent_id(id: &str) -> String {
    id.get(..12).unwrap_or(id).to_owned()
}

fn init_ref(id: &str) -> anyhow::Result<ProcessRef> {
    ProcessRef::new(id, "").map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the container of `dir` to its end. Returns its exit status (the code, or
/// 128 + signal). Errors before the container started leave nothing behind (the
/// container directory is removed).
pub async fn supervise(
    cfg: &Config,
    store: &Store,
    dir: ContainerDir,
    fg: Option<Foreground>,
    report: Reporter,
) -> anyhow::Result<i32> {
    // Signals that arrive during set-up are delivered to the container once it runs (a
    // Ctrl-C while the VM boots ends the container right after it starts, and the
    // teardown runs), instead of killing the supervisor half way.
    let sigs = Signals::register()?;
    let me = std::process::id();
    let state = dir.update(|s| {
        s.supervisor_pid = Some(me);
        s.supervisor_start = process_start_time(me);
    })?;
    // The agent's name for the container: short, because libcontainer builds unix socket
    // paths from it (one container per agent, so no clash).
    let id = agent_id(&state.id);
    let mut mounts = prepare::Mounts::default();
    let prepared = match prepare::prepare(cfg, store, &dir, &state, &report, &mut mounts).await {
        Ok(p) => p,
        Err(e) => {
            mounts.unmount_all();
            release_network(cfg, &dir).await;
            report.finish(Err(&e));
            if let Err(r) = dir.remove() {
                log::warn!("{r:#}");
            }
            return Err(e);
        }
    };
    let backend = Arc::new(prepared.backend);

    let mut mounts = prepare::Mounts(prepared.mounts);
    let rc = state.config.clone();
    let init = init_ref(&id)?;

    // Create, attach the streams, start.
    let started = async {
        let spec_json = serde_json::to_vec(&prepared.spec)?;
        backend
            .create(&ContainerConfig {
                id: id.clone(),
                exec_id: String::new(),
                spec_json,
                rootfs: prepared.runtime_rootfs.clone(),
                stdio: StdioConfig {
                    stdin: rc.interactive,
                    tty: rc.tty,
                },
            })
            .await
            .context("creating the container")?;
        let mut streams = Vec::new();
        if rc.tty {
            streams.push((
                StreamKind::Tty,
                backend.open_stdio(&init, StreamKind::Tty).await?,
            ));
            if let Some((rows, columns)) = fg.as_ref().and_then(|_| term::local_window_size()) {
                let _ = backend.resize(&init, WinSize { rows, columns }).await;
            }
        } else {
            for k in [StreamKind::Stdout, StreamKind::Stderr] {
                streams.push((k, backend.open_stdio(&init, k).await?));
            }
            if rc.interactive {
                let k = StreamKind::Stdin;
                streams.push((k, backend.open_stdio(&init, k).await?));
            }
        }
        timings::mark("container-create");
        backend.start(&id).await.context("starting the container")?;
        timings::mark("container-start");
        anyhow::Ok(streams)
    }
    .await;
    let streams = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = backend.remove(&id).await;
            mounts.unmount_all();
            if let Err(s) = backend.shutdown().await {
                log::warn!("{s:#}");
            }
            release_network(cfg, &dir).await;
            report.finish(Err(&e));
            if let Err(r) = dir.remove() {
                log::warn!("{r:#}");
            }
            return Err(e);
        }
    };
    let command = prepared
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    dir.update(|s| {
        s.status = Status::Running;
        s.started_at = Some(now());
        s.command = command;
        s.vmm_pid = backend.vmm_pid();
        s.sandbox_dir = backend.sandbox().map(|sb| sb.run_dir().to_path_buf());
    })?;

    // Control socket.
    let (exit_tx, exit_rx) = watch::channel::<Option<i32>>(None);
    let server = server::Server {
        id: id.clone(),
        backend: Arc::clone(&backend),
        process: prepared.spec.process().clone().unwrap_or_default(),
        users: prepared.users.clone(),
        exit: exit_rx,
    };
    let listener = server::bind(&dir.control_socket())?;
    let server_task = tokio::spawn(server::serve(Arc::new(server), listener));
    report.finish(Ok(()));

    // Output, input, signals.
    let log = term::open_log(&dir.log_file()).context("opening the container log")?;
    let _raw = match &fg {
        Some(f) if f.tty && f.interactive => term::RawMode::enter(),
        _ => None,
    };
    let mut outputs = Vec::new();
    let mut keep_open = Vec::new();
    for (kind, stream) in streams {
        let (r, w) = stream.into_split();
        match (kind, &fg) {
            (StreamKind::Stdout | StreamKind::Tty, Some(_)) => {
                outputs.push(tokio::spawn(term::pump_out(
                    r,
                    Some(tokio::io::stdout()),
                    Some(log.clone()),
                )));
            }
            (StreamKind::Stderr, Some(_)) => {
                outputs.push(tokio::spawn(term::pump_out(
                    r,
                    Some(tokio::io::stderr()),
                    Some(log.clone()),
                )));
            }
            (StreamKind::Stdout | StreamKind::Stderr | StreamKind::Tty, None) => {
                outputs.push(tokio::spawn(term::pump_out(
                    r,
                    None::<tokio::io::Stdout>,
                    Some(log.clone()),
                )));
            }
            _ => {}
        }
        match (kind, &fg) {
            (StreamKind::Tty, Some(f)) if f.interactive => {
                tokio::spawn(term::pump_in(w));
            }
            (StreamKind::Stdin, Some(_)) => {
                let backend = Arc::clone(&backend);
                let init = init.clone();
                tokio::spawn(async move {
                    term::pump_in(w).await;
                    let _ = backend.close_stdin(&init).await;
                });
            }
            // Detached with -i or -t: hold the input open, as Docker does.
            (StreamKind::Tty | StreamKind::Stdin, _) => keep_open.push(w),
            _ => {}
        }
    }
    let signals = tokio::spawn(forward_signals(
        Arc::clone(&backend),
        init.clone(),
        rc.tty && fg.is_some(),
        sigs,
    ));

    let status = match backend.wait(&init).await {
        Ok(e) => e.exit_status as i32,
        Err(e) => {
            log::error!("waiting for the container: {e:#}");
            let _ = dir.update(|s| s.error = Some(format!("{e:#}")));
            255
        }
    };
    timings::mark("run");
    let _ = exit_tx.send(Some(status));
    // The init's end closes the streams (its pid namespace is gone); give them a moment.
    for o in outputs {
        let _ = tokio::time::timeout(Duration::from_secs(2), o).await;
    }
    drop(keep_open);
    signals.abort();
    drop(_raw);
    dir.update(|s| {
        s.status = Status::Exited;
        s.exit_code = Some(status);
        s.finished_at = Some(now());
    })?;

    // Teardown: the container, the VM or host agent, mounts, sockets.
    server_task.abort();
    let _ = std::fs::remove_file(dir.control_socket());
    if let Err(e) = backend.remove(&id).await {
        log::warn!("removing the container: {e:#}");
    }
    mounts.unmount_all();
    if let Err(e) = backend.shutdown().await {
        log::warn!("{e:#}");
    }
    // After the VM is gone: its NIC lives in the namespace.
    release_network(cfg, &dir).await;
    let _ = std::fs::remove_dir_all(dir.socket_dir());
    // libcontainer removes the cgroup it made; a killed agent may leave it (empty).
    if let Some(cg) = bulkhead_sandbox::cgroup::Cgroup2::find() {
        if let Err(e) = cg.remove_container_cgroup(&state.id) {
            log::warn!("{:#}", anyhow::Error::new(e));
        }
    }
    if rc.auto_remove {
        dir.remove()?;
    } else {
        let _ = bulkhead_sandbox::mount::unmount(&dir.rootfs());
    }
    timings::mark("exit");
    Ok(status)
}

/// Releases the container's network (CNI DEL, the namespace); a failure is logged and
/// the attachment stays in the state for `rm` to retry.
async fn release_network(cfg: &Config, dir: &ContainerDir) {
    let (cfg, dir) = (cfg.clone(), dir.clone());
    let released = tokio::task::spawn_blocking(move || crate::network::release(&cfg, &dir)).await;
    match released {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("{e:#}"),
        Err(e) => log::warn!("releasing the network: {e}"),
    }
}

/// The signals a container runtime passes on, registered before the container starts so
/// that none arriving early kills the supervisor.
struct Signals {
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
    winch: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        let kinds = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
        ];
        let mut streams = Vec::new();
        for k in kinds {
            streams.push((k.as_raw_value(), signal(k)?));
        }
        let winch = signal(SignalKind::window_change())?;
        Ok(Signals { streams, winch })
    }
}

/// Forwards the signals a container runtime passes on (Ctrl-C, SIGTERM, ...) to the
/// container's init, and terminal resizes when a local tty is attached.
async fn forward_signals(
    backend: Arc<crate::backend::Backend>,
    init: ProcessRef,
    resize: bool,
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals { streams, mut winch } = signals;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(16);
    for (num, mut s) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(num).await.is_err() {
                    break;
                }
            }
        });
    }
    loop {
        tokio::select! {
            Some(num) = rx.recv() => {
                log::info!("forwarding signal {num} to the container");
                if let Err(e) = backend.signal(&init, num as u32).await {
                    log::warn!("forwarding signal {num}: {e:#}");
                }
            }
            Some(()) = winch.recv(), if resize => {
                if let Some((rows, columns)) = term::window_size(std::io::stdin().as_fd()) {
                    let _ = backend.resize(&init, WinSize { rows, columns }).await;
                }
            }
        }
    }
}
