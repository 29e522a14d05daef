//! The agent's core: the sandbox's containers and processes, operated on
//! with domain types. The ttrpc service and the stdio server are thin layers
//! over this.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bulkhead_protocol::resources::ResourceUpdate;
use bulkhead_protocol::stdio::{AttachStatus, StdioHeader};
use bulkhead_protocol::types::{
    ContainerConfig, ContainerStats, ExecConfig, ProcessExit, ProcessRef, SandboxConfig, WinSize,
};
use log::{debug, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use crate::cgroup_stats;
use crate::cgroup_update;
use crate::container::{Runtime, StdioSetup};
use crate::error::AgentError;
use crate::process_io::{Claim, ProcessIo};
use crate::reaper::{self, ExitReceiver, Reaper};

/// How often container cgroups are checked for new OOM kills.
const OOM_POLL: Duration = Duration::from_millis(200);
/// Queued OOM events beyond this are dropped (and logged).
const OOM_QUEUE: usize = 256;
/// How long RemoveContainer waits for killed processes to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a failed CreateContainer waits for its dead init to leave the new cgroup.
const FAILED_CGROUP_WAIT: Duration = Duration::from_secs(1);

pub struct Process {
    pub pid: Pid,
    io: ProcessIo,
    exit: ExitReceiver,
}

impl Process {
    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

struct ContainerEntry {
    init_exec_id: String,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    /// The OCI `cgroupsPath` and the directory it names.
    cgroup_path: PathBuf,
    cgroup_dir: PathBuf,
    started: bool,
    paused: bool,
    oom_kills_seen: u64,
}

impl ContainerEntry {
    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        if exec_id.is_empty() || exec_id == self.init_exec_id {
            return Ok(Arc::clone(&self.init));
        }
        self.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::ProcessNotFound {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
    }
}

/// Options for the parts of the agent that touch the whole system.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// libcontainer state and bundles.
    pub state_dir: PathBuf,
    /// Set hostname, mount the shared filesystem, write /etc files. Only as
    /// PID 1 of the guest; never in host tests.
    pub manage_system: bool,
}

pub struct Sandbox {
    opts: SandboxOptions,
    runtime: Runtime,
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, ContainerEntry>>,
    oom_tx: mpsc::Sender<String>,
    oom_rx: AsyncMutex<mpsc::Receiver<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sandbox {
    pub fn new(opts: SandboxOptions) -> Result<Arc<Self>, AgentError> {
        let runtime = Runtime::new(&opts.state_dir).map_err(|e| {
            AgentError::io(
                format!("cannot create state dir {}", opts.state_dir.display()),
                e,
            )
        })?;
        let (oom_tx, oom_rx) = mpsc::channel(OOM_QUEUE);
        Ok(Arc::new(Sandbox {
            opts,
            runtime,
            reaper: reaper::global(),
            containers: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: AsyncMutex::new(oom_rx),
        }))
    }

    /// Polls container cgroups for OOM kills until the sandbox is dropped.
    /// Call from inside the runtime.
    pub fn spawn_oom_watcher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(OOM_POLL);
            loop {
                tick.tick().await;
                let Some(sandbox) = weak.upgrade() else {
                    return;
                };
                sandbox.check_oom();
            }
        });
    }

    fn check_oom(&self) {
        let mut containers = lock(&self.containers);
        for (id, c) in containers.iter_mut() {
            let kills = cgroup_stats::oom_kills(&c.cgroup_dir);
            if kills > c.oom_kills_seen {
                c.oom_kills_seen = kills;
                info!("container {id}: OOM kill (count {kills})");
                if self.oom_tx.try_send(id.clone()).is_err() {
                    warn!("OOM event queue full, dropped event of {id}");
                }
            }
        }
    }

    /// Whether this agent runs the whole guest (PID 1), and so may change system-wide
    /// state such as the hostname and the network.
    pub fn manages_system(&self) -> bool {
        self.opts.manage_system
    }

    pub async fn next_oom_event(&self) -> Option<String> {
        self.oom_rx.lock().await.recv().await
    }

    pub fn create_sandbox(&self, cfg: &SandboxConfig) -> Result<(), AgentError> {
        info!("create sandbox {:?}", cfg.sandbox_id);
        let etc = if self.opts.manage_system {
            PathBuf::from(bulkhead_protocol::SANDBOX_ETC_DIR)
        } else {
            self.opts.state_dir.join("sandbox")
        };
        let write = |name: &str, text: &str| {
            fs::create_dir_all(&etc)
                .and_then(|_| fs::write(etc.join(name), text))
                .map_err(|e| AgentError::io(format!("cannot write {name}"), e))
        };
        write("resolv.conf", &cfg.dns.to_resolv_conf())?;
        write(
            "hostname",
            &format!("{}\n", cfg.hostname.as_deref().unwrap_or("")),
        )?;
        if !self.opts.manage_system {
            return Ok(());
        }
        if let Some(h) = &cfg.hostname {
            nix::unistd::sethostname(h).map_err(|source| AgentError::Sys {
                what: format!("cannot set hostname {h:?}"),
                source,
            })?;
        }
        if !cfg.dns.is_empty() {
            let _ = fs::create_dir_all("/etc");
            fs::write("/etc/resolv.conf", cfg.dns.to_resolv_conf())
                .map_err(|e| AgentError::io("cannot write /etc/resolv.conf", e))?;
        }
        if let Some(tag) = &cfg.shared_fs_tag {
            crate::init::mount_shared_fs(tag, Path::new(bulkhead_protocol::SHARED_FS_MOUNT_POINT))?;
        }
        Ok(())
    }

    pub fn create_container(&self, cfg: ContainerConfig) -> Result<Pid, AgentError> {
        let id = cfg.id.clone();
        if lock(&self.containers).contains_key(&id) {
            return Err(AgentError::ContainerExists(id));
        }
        let create_err = |source| AgentError::Create {
            id: id.clone(),
            source,
        };
        let (bundle, cgroup_path) = self
            .runtime
            .prepare_bundle(&id, &cfg.spec_json, &cfg.rootfs, cfg.stdio.tty)
            .map_err(create_err)?;
        let (pipe_io, setup) = if cfg.stdio.tty {
            (None, StdioSetup::Tty)
        } else {
            let (io, child) = ProcessIo::pipes(cfg.stdio.stdin)
                .map_err(|e| AgentError::io("cannot create stdio pipes", e))?;
            (Some(io), StdioSetup::Pipes(child))
        };

        let new_cgroup = cgroup_stats::cgroup_dir(&cgroup_path);
        let new_cgroup = (!new_cgroup.exists()).then_some(new_cgroup);
        let guard = self.reaper.spawn_guard();
        let created = match self
            .runtime
            .create(&id, &bundle, cgroup_path.clone(), setup)
        {
            Ok(c) => c,
            Err(e) => {
                drop(guard);
                if let Err(cleanup) = self.runtime.delete(&id) {
                    debug!("cleanup after failed create of {id}: {cleanup}");
                }
                if let Some(dir) = new_cgroup {
                    remove_failed_cgroup(&dir);
                }
                return Err(create_err(e));
            }
        };
        let exit = guard.register(created.pid);
        drop(guard);

        let io = match (pipe_io, created.pty_master) {
            (Some(io), _) => io,
            (None, Some(master)) => ProcessIo::tty(master),
            (None, None) => return Err(no_pty_master(&id)),
        };
        let cgroup_dir = cgroup_stats::cgroup_dir(&created.cgroup_path);
        let oom_kills_seen = cgroup_stats::oom_kills(&cgroup_dir);
        info!("created container {id}, init pid {}", created.pid);
        lock(&self.containers).insert(
            id,
            ContainerEntry {
                init_exec_id: cfg.exec_id,
                init: Arc::new(Process {
                    pid: created.pid,
                    io,
                    exit,
                }),
                execs: HashMap::new(),
                cgroup_path: created.cgroup_path,
                cgroup_dir,
                started: false,
                paused: false,
                oom_kills_seen,
            },
        );
        Ok(created.pid)
    }

    pub fn start_container(&self, id: &str) -> Result<(), AgentError> {
        {
            let containers = lock(&self.containers);
            let c = containers
                .get(id)
                .ok_or_else(|| AgentError::ContainerNotFound(id.to_owned()))?;
            if c.started {
                return Err(AgentError::AlreadyStarted(id.to_owned()));
            }
        }
        self.runtime.start(id).map_err(|source| AgentError::Start {
            id: id.to_owned(),
            source,
        })?;
        if let Some(c) = lock(&self.containers).get_mut(id) {
            c.started = true;
        }
        info!("started container {id}");
        Ok(())
    }

    pub fn exec_process(&self, cfg: ExecConfig) -> Result<Pid, AgentError> {
        let ProcessRef {
            container_id: id,
            exec_id,
        } = cfg.process.clone();
        {
            let containers = lock(&self.containers);
            let c = containers
                .get(&id)
                .ok_or_else(|| AgentError::ContainerNotFound(id.clone()))?;
            if !c.started || c.init.exited() {
                return Err(AgentError::NotRunning(id));
            }
            // A process joining a frozen cgroup would freeze inside libcontainer's build.
            if c.paused {
                return Err(AgentError::Paused(id));
            }
            if exec_id == c.init_exec_id || c.execs.contains_key(&exec_id) {
                return Err(AgentError::ExecExists {
                    container_id: id,
                    exec_id,
                });
            }
        }
        let (pipe_io, setup) = if cfg.stdio.tty {
            (None, StdioSetup::Tty)
        } else {
            let (io, child) = ProcessIo::pipes(cfg.stdio.stdin)
                .map_err(|e| AgentError::io("cannot create stdio pipes", e))?;
            (Some(io), StdioSetup::Pipes(child))
        };
        let guard = self.reaper.spawn_guard();
        let execed = self
            .runtime
            .exec(&id, &exec_id, &cfg.process_json, setup)
            .map_err(|source| AgentError::Exec {
                id: id.clone(),
                source,
            })?;
        let exit = guard.register(execed.pid);
        drop(guard);
        let io = match (pipe_io, execed.pty_master) {
            (Some(io), _) => io,
            (None, Some(master)) => ProcessIo::tty(master),
            (None, None) => return Err(no_pty_master(&id)),
        };
        info!("exec {exec_id} in container {id}, pid {}", execed.pid);
        let process = Arc::new(Process {
            pid: execed.pid,
            io,
            exit,
        });
        match lock(&self.containers).get_mut(&id) {
            Some(c) => {
                c.execs.insert(exec_id, process);
            }
            None => {
                // Removed while we were exec'ing: do not leave it running.
                let _ = kill(execed.pid, Signal::SIGKILL);
                return Err(AgentError::ContainerNotFound(id));
            }
        }
        Ok(execed.pid)
    }

    fn process(&self, p: &ProcessRef) -> Result<Arc<Process>, AgentError> {
        lock(&self.containers)
            .get(&p.container_id)
            .ok_or_else(|| AgentError::ContainerNotFound(p.container_id.clone()))?
            .process(&p.container_id, &p.exec_id)
    }

    pub fn signal_process(&self, p: &ProcessRef, signal: i32) -> Result<(), AgentError> {
        let proc_ = self.process(p)?;
        let exited = || AgentError::ProcessExited {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
        };
        // An exited process's pid may be reused: never signal it.
        if proc_.exited() {
            return Err(exited());
        }
        // Raw kill(2): nix's Signal has no real-time signals (34..=64).
        // SAFETY: kill takes plain integers.
        if unsafe { libc::kill(proc_.pid.as_raw(), signal) } == 0 {
            return Ok(());
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::ESRCH => Err(exited()),
            source => Err(AgentError::Sys {
                what: format!("cannot send signal {signal} to pid {}", proc_.pid),
                source,
            }),
        }
    }

    pub async fn wait_process(&self, p: &ProcessRef) -> Result<ProcessExit, AgentError> {
        let rx = self.process(p)?.exit.clone();
        reaper::wait_exit(rx)
            .await
            .ok_or_else(|| AgentError::ProcessNotFound {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
            })
    }

    pub fn resize_tty(&self, p: &ProcessRef, size: WinSize) -> Result<(), AgentError> {
        let has_tty = self
            .process(p)?
            .io
            .resize(size)
            .map_err(|e| AgentError::io("cannot resize tty", e))?;
        if !has_tty {
            return Err(AgentError::InvalidField(
                bulkhead_protocol::types::InvalidField {
                    field: "exec_id",
                    reason: "process has no tty".into(),
                },
            ));
        }
        Ok(())
    }

    pub fn close_stdin(&self, p: &ProcessRef) -> Result<(), AgentError> {
        self.process(p)?
            .io
            .close_stdin()
            .map_err(|e| AgentError::io("cannot close stdin", e))
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStats, AgentError> {
        let dir = lock(&self.containers)
            .get(id)
            .map(|c| c.cgroup_dir.clone())
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_owned()))?;
        Ok(cgroup_stats::read_stats(&dir))
    }

    /// Freezes every process of a running container.
    pub fn pause_container(&self, id: &str) -> Result<(), AgentError> {
        self.with_running(id, |c| {
            if c.paused {
                Err(AgentError::Paused(id.to_owned()))
            } else {
                Ok(())
            }
        })?;
        self.runtime.pause(id).map_err(|source| AgentError::Pause {
            id: id.to_owned(),
            source,
        })?;
        self.set_paused(id, true);
        info!("paused container {id}");
        Ok(())
    }

    /// Thaws a paused container.
    pub fn resume_container(&self, id: &str) -> Result<(), AgentError> {
        self.with_running(id, |c| {
            if c.paused {
                Ok(())
            } else {
                Err(AgentError::NotPaused(id.to_owned()))
            }
        })?;
        self.runtime
            .resume(id)
            .map_err(|source| AgentError::Resume {
                id: id.to_owned(),
                source,
            })?;
        self.set_paused(id, false);
        info!("resumed container {id}");
        Ok(())
    }

    /// Applies new cgroup limits to a created or running container.
    pub fn update_container(&self, id: &str, update: &ResourceUpdate) -> Result<(), AgentError> {
        let cgroup_path = lock(&self.containers)
            .get(id)
            .map(|c| c.cgroup_path.clone())
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_owned()))?;
        cgroup_update::apply(&cgroup_path, update).map_err(|e| AgentError::Update {
            id: id.to_owned(),
            source: e.into(),
        })?;
        info!("updated the resources of container {id}: {update:?}");
        Ok(())
    }

    /// Runs `check` on a started container whose init still runs.
    fn with_running(
        &self,
        id: &str,
        check: impl FnOnce(&ContainerEntry) -> Result<(), AgentError>,
    ) -> Result<(), AgentError> {
        let containers = lock(&self.containers);
        let c = containers
            .get(id)
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_owned()))?;
        if !c.started || c.init.exited() {
            return Err(AgentError::NotRunning(id.to_owned()));
        }
        check(c)
    }

    fn set_paused(&self, id: &str, paused: bool) {
        if let Some(c) = lock(&self.containers).get_mut(id) {
            c.paused = paused;
        }
    }

    /// Kills every process of the container, waits for them, deletes it.
    pub async fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        let procs: Vec<Arc<Process>> = {
            let containers = lock(&self.containers);
            let c = containers
                .get(id)
                .ok_or_else(|| AgentError::ContainerNotFound(id.to_owned()))?;
            std::iter::once(&c.init)
                .chain(c.execs.values())
                .cloned()
                .collect()
        };
        for p in &procs {
            if !p.exited() {
                let _ = kill(p.pid, Signal::SIGKILL);
            }
        }
        for p in &procs {
            if tokio::time::timeout(KILL_WAIT, reaper::wait_exit(p.exit.clone()))
                .await
                .is_err()
            {
                warn!("container {id}: pid {} not reaped after SIGKILL", p.pid);
            }
        }
        self.check_oom();
        self.runtime
            .delete(id)
            .map_err(|source| AgentError::Remove {
                id: id.to_owned(),
                source,
            })?;
        lock(&self.containers).remove(id);
        info!("removed container {id}");
        Ok(())
    }

    pub async fn remove_all(&self) {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove_container(&id).await {
                warn!("{}", e.chain());
            }
        }
    }

    /// Reserves the process stream a stdio header names.
    pub fn claim_stream(&self, header: &StdioHeader) -> Result<Claim, AttachStatus> {
        let p = ProcessRef {
            container_id: header.container_id.clone(),
            exec_id: header.exec_id.clone(),
        };
        let proc_ = self.process(&p).map_err(|_| AttachStatus::NotFound)?;
        proc_.io.claim(header.stream)
    }
}

/// Removes the cgroup that a failed CreateContainer made. libcontainer's own clean-up
/// cannot: the dead init process keeps the cgroup populated until it is reaped, and the
/// reaper waits for the spawn guard that creation holds. Once the guard is dropped the
/// reaper takes the zombie within milliseconds; only "busy" is retried.
fn remove_failed_cgroup(dir: &Path) {
    let deadline = std::time::Instant::now() + FAILED_CGROUP_WAIT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                warn!(
                    "cannot remove cgroup {} of a failed container: {e}",
                    dir.display()
                );
                return;
            }
        }
    }
}

fn no_pty_master(id: &str) -> AgentError {
    AgentError::io(
        format!("container {id}: no pty master"),
        std::io::Error::other("libcontainer returned no console"),
    )
}
