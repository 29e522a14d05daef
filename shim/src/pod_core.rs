//! The shim's core, in domain terms: the pod's VM, its containers and their processes, and
//! what each task operation does to them. `service.rs` puts containerd's API in front.
//!
//! One shim serves one VM: a standalone container's, or a CRI pod's (sandbox container plus
//! app containers). Background tasks per VM: one waits on each started process (exit ->
//! TaskExit after its output is copied), one on the VM itself (a VM that ends on its own
//! ends every live process within the output drain limit), one forwards OOM events (those
//! of its own containers, rate limited: [`crate::oom`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_sandbox::{
    ContainerConfig, ContainerStats, ExecConfig, ProcessRef, ResourceUpdate, Sandbox, StdioConfig,
    WinSize,
};
use containerd_shim::asynchronous::ExitSignal;
use tokio::task::JoinHandle;

use crate::config::ShimConfig;
use crate::error::{Result, ShimError};
use crate::events::{EventSink, TaskEvent};
use crate::mounts::{self, ContainerFs};
use crate::pod::{self, Role};
use crate::process::{self, Exit, Process, Status, OUTPUT_DRAIN_LIMIT};
use crate::stdio::{self, SandboxStreams, StdioPaths};
use crate::translate::{CreateTask, ExecTask, KillTask, ProcessState};
use crate::vm_annotations::VmOverrides;
use crate::{guest_spec, oom, pod_network};

/// How long Delete waits for a removed container's init to be reported gone.
const REMOVE_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long CloseIO waits for stdin to be forwarded before closing it in the guest.
const STDIN_DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// A running VM and its watchers.
pub struct Vm {
    pub sandbox_id: String,
    pub sandbox: Sandbox,
    destroying: AtomicBool,
    watchers: Mutex<Vec<JoinHandle<()>>>,
}

impl Vm {
    fn destroying(&self) -> bool {
        self.destroying.load(Ordering::SeqCst)
    }

    /// Powers the VM off and removes its run directory; the watchers stop.
    async fn destroy(&self) {
        self.destroying.store(true, Ordering::SeqCst);
        if let Err(e) = self.sandbox.destroy().await {
            log::error!("sandbox {}: {e}", self.sandbox_id);
        }
        for w in self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            w.abort();
        }
    }
}

struct Container {
    bundle: PathBuf,
    role: Role,
    fs: ContainerFs,
    vm: Arc<Vm>,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    /// Frozen in the guest (Pause); cleared by Resume.
    paused: bool,
}

#[derive(Default)]
struct State {
    vm: Option<Arc<Vm>>,
    containers: HashMap<String, Container>,
}

pub struct PodCore {
    config: std::result::Result<ShimConfig, String>,
    namespace: String,
    events: Arc<dyn EventSink>,
    exit: Arc<ExitSignal>,
    create_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

impl PodCore {
    /// `config` is the loaded configuration, or why it could not be loaded (reported to
    /// containerd on the first Create).
    pub fn new(
        config: std::result::Result<ShimConfig, String>,
        namespace: &str,
        events: Arc<dyn EventSink>,
        exit: Arc<ExitSignal>,
    ) -> Arc<Self> {
        Arc::new(PodCore {
            config,
            namespace: namespace.to_owned(),
            events,
            exit,
            create_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn process(&self, p: &ProcessRef) -> Result<(Arc<Process>, Arc<Vm>)> {
        let state = self.state();
        let c = state
            .containers
            .get(&p.container_id)
            .ok_or_else(|| ShimError::NotFound(format!("container {}", p.container_id)))?;
        let proc_ = if p.exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs.get(&p.exec_id).cloned().ok_or_else(|| {
                ShimError::NotFound(format!(
                    "exec {} of container {}",
                    p.exec_id, p.container_id
                ))
            })?
        };
        Ok((proc_, c.vm.clone()))
    }

    /// Create: the VM (for an owner), the container's filesystems, the container in the
    /// guest, its stdio. Returns the pid containerd sees for it (the VMM's).
    pub async fn create(self: &Arc<Self>, t: CreateTask) -> Result<u32> {
        let _serial = self.create_lock.lock().await;
        let config = self
            .config
            .as_ref()
            .map_err(|e| ShimError::FailedPrecondition(format!("invalid configuration: {e}")))?;
        if self.state().containers.contains_key(&t.id) {
            return Err(ShimError::AlreadyExists(format!("container {}", t.id)));
        }
        let mut spec = pod::read_spec(&t.bundle)?;
        let removed = guest_spec::strip_host_labels(&mut spec);
        if !removed.is_empty() {
            log::debug!(
                "create {}: host-only fields not passed to the guest: {}",
                t.id,
                removed.join(", ")
            );
        }
        let pod_netns = pod_network::host_netns(&spec);
        let joined = pod_network::join_guest_network(&mut spec);
        if !joined.is_empty() {
            log::debug!(
                "create {}: joins the guest's pod network instead of {}",
                t.id,
                joined.join(", ")
            );
        }
        let role = pod::classify(&t.id, &pod::annotations(&spec))?;
        let existing = self.state().vm.clone();
        let (vm, new_vm) = match &role {
            Role::Owner { sandbox_id, .. } => {
                if let Some(vm) = existing {
                    return Err(ShimError::FailedPrecondition(format!(
                        "this shim already runs the VM of {}; container {} needs its own",
                        vm.sandbox_id, t.id
                    )));
                }
                // The handler's own configuration file (runtime option ConfigPath), recorded
                // in the bundle for a `delete` after a crash.
                let handler_config;
                let config = match &t.config_path {
                    None => config,
                    Some(path) => {
                        let p = path.clone();
                        handler_config = blocking(move || ShimConfig::load_file(&p))
                            .await?
                            .map_err(ShimError::Config)?;
                        pod::record_config_path(&t.bundle, path)?;
                        log::info!("create {}: configuration {}", t.id, path.display());
                        &handler_config
                    }
                };
                let overrides = VmOverrides::from_annotations(
                    &pod::annotations(&spec),
                    &config.config.shim.enable_annotations,
                )?;
                let resources = pod::vm_resources(&role, &spec)?;
                let size = overrides.size(pod::vm_size(
                    &resources,
                    config,
                    bulkhead_sandbox::sizing::host_cpus(),
                ));
                let hostname = spec
                    .get("hostname")
                    .and_then(|h| h.as_str())
                    .map(str::to_owned);
                let mut sc =
                    pod::sandbox_config(config, &self.namespace, sandbox_id, size, hostname);
                sc.netns = pod_netns;
                if let Some(params) = &overrides.kernel_params {
                    sc.append_kernel_params(params);
                }
                log::info!(
                    "starting the VM of {sandbox_id}: {} vCPUs, {} MiB",
                    size.vcpus,
                    size.memory_mib
                );
                let run_root = config.config.run_root.clone();
                blocking(move || bulkhead_sandbox::propagation::ensure_shared(&run_root))
                    .await?
                    .map_err(ShimError::RunRoot)?;
                let sandbox = Sandbox::start(sc)
                    .await
                    .map_err(ShimError::sandbox(format!("starting the VM for {}", t.id)))?;
                let vm = Arc::new(Vm {
                    sandbox_id: sandbox_id.clone(),
                    sandbox,
                    destroying: AtomicBool::new(false),
                    watchers: Mutex::new(Vec::new()),
                });
                (vm, true)
            }
            Role::Member { sandbox_id } => match existing {
                Some(vm) if &vm.sandbox_id == sandbox_id => (vm, false),
                _ => {
                    return Err(ShimError::FailedPrecondition(format!(
                    "container {} belongs to sandbox {sandbox_id}, which has no VM in this shim",
                    t.id
                )))
                }
            },
        };
        if let Role::Member { .. } = &role {
            // The pod's shared namespaces are named after the sandbox task's pid, the VMM's
            // host pid; in the guest they are the sandbox container's init's.
            let owner = self
                .state()
                .containers
                .values()
                .find(|c| matches!(c.role, Role::Owner { .. }) && Arc::ptr_eq(&c.vm, &vm))
                .map(|c| c.init.guest_pid());
            if let Some(guest_pid) = owner {
                let host_pid = vm.sandbox.vmm_pid();
                let n = guest_spec::guest_namespace_paths(&mut spec, host_pid, guest_pid);
                if n > 0 {
                    log::debug!(
                        "create {}: {n} shared namespace paths name the sandbox's init, guest pid {guest_pid}",
                        t.id
                    );
                }
            }
        }
        let created = self.create_in(&vm, &t, &mut spec).await;
        let (fs, init) = match created {
            Ok(v) => v,
            Err(e) => {
                if new_vm {
                    vm.destroy().await;
                }
                return Err(e);
            }
        };
        let pid = init.pid();
        {
            let mut state = self.state();
            if new_vm {
                state.vm = Some(vm.clone());
            }
            state.containers.insert(
                t.id.clone(),
                Container {
                    bundle: t.bundle.clone(),
                    role,
                    fs,
                    vm: vm.clone(),
                    init: init.clone(),
                    execs: HashMap::new(),
                    paused: false,
                },
            );
        }
        if new_vm {
            self.watch_vm(&vm);
        }
        self.monitor(&vm, init);
        self.events
            .publish(TaskEvent::Create {
                container_id: t.id.clone(),
                bundle: t.bundle.clone(),
                rootfs: t.rootfs.clone(),
                stdio: t.stdio.clone(),
                pid,
            })
            .await;
        Ok(pid)
    }

    async fn create_in(
        &self,
        vm: &Vm,
        t: &CreateTask,
        spec: &mut serde_json::Value,
    ) -> Result<(ContainerFs, Arc<Process>)> {
        let fs = mounts::plan(
            &t.id,
            &t.bundle,
            &t.rootfs,
            spec,
            vm.sandbox.shared_dir(),
            mounts::stat_host,
        )
        .map_err(ShimError::Mount)?;
        let to_mount = fs.clone();
        blocking(move || mounts::apply(&to_mount))
            .await?
            .map_err(ShimError::Mount)?;
        let result = self.create_container(vm, t, spec, &fs).await;
        if result.is_err() {
            let dir = fs.dir.clone();
            if let Ok(Err(e)) = blocking(move || mounts::remove(&dir)).await {
                log::warn!("after a failed create: {e}");
            }
        }
        result.map(|p| (fs, p))
    }

    async fn create_container(
        &self,
        vm: &Vm,
        t: &CreateTask,
        spec: &serde_json::Value,
        fs: &ContainerFs,
    ) -> Result<Arc<Process>> {
        let spec_json = serde_json::to_vec(spec).map_err(|e| ShimError::Spec(e.to_string()))?;
        log::debug!(
            "create {}: the spec for the agent: {}",
            t.id,
            String::from_utf8_lossy(&spec_json)
        );
        let config = ContainerConfig {
            id: t.id.clone(),
            exec_id: String::new(),
            spec_json,
            rootfs: fs.guest_rootfs.clone(),
            stdio: stdio_config(&t.stdio),
        };
        let guest_pid = vm
            .sandbox
            .create_container(&config)
            .await
            .map_err(ShimError::sandbox(format!("creating container {}", t.id)))?;
        log::debug!("create {}: init is pid {guest_pid} in the guest", t.id);
        let process =
            ProcessRef::new(&t.id, "").map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let init = Arc::new(Process::new(
            process.clone(),
            t.stdio.clone(),
            None,
            vm.sandbox.vmm_pid(),
        ));
        init.set_guest_pid(guest_pid);
        let streams = SandboxStreams {
            sandbox: &vm.sandbox,
            process,
        };
        match stdio::connect(&t.stdio, &streams).await {
            Ok(io) => {
                // Nobody can have asked to close it yet: the process is not known.
                init.set_io(io).await;
            }
            Err(e) => {
                if let Err(e) = vm.sandbox.remove_container(&t.id).await {
                    log::warn!("after failing to attach stdio: {e}");
                }
                return Err(ShimError::Stdio(e));
            }
        }
        Ok(init)
    }

    /// Start: the container's init, or a created exec. Returns its pid as containerd sees
    /// it (the VMM's).
    pub async fn start(self: &Arc<Self>, p: &ProcessRef) -> Result<u32> {
        let (proc_, vm) = self.process(p)?;
        if proc_.status() != Status::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} is {:?}, not created",
                describe(p),
                proc_.status()
            )));
        }
        if p.exec_id.is_empty() {
            vm.sandbox
                .start_container(&p.container_id)
                .await
                .map_err(ShimError::sandbox(format!("starting {}", p.container_id)))?;
            proc_.set_running();
            self.events
                .publish(TaskEvent::Start {
                    container_id: p.container_id.clone(),
                    pid: proc_.pid(),
                })
                .await;
            return Ok(proc_.pid());
        }
        let config = ExecConfig {
            process: p.clone(),
            process_json: proc_.exec_spec.clone().unwrap_or_default(),
            stdio: stdio_config(&proc_.stdio),
        };
        let guest_pid = vm
            .sandbox
            .exec(&config)
            .await
            .map_err(ShimError::sandbox(format!("starting exec {}", describe(p))))?;
        log::debug!("exec {}: pid {guest_pid} in the guest", describe(p));
        proc_.set_guest_pid(guest_pid);
        let streams = SandboxStreams {
            sandbox: &vm.sandbox,
            process: p.clone(),
        };
        let close_stdin = match stdio::connect(&proc_.stdio, &streams).await {
            Ok(io) => proc_.set_io(io).await,
            Err(e) => {
                let _ = vm.sandbox.signal(p, libc::SIGKILL as u32).await;
                proc_.record_exit(Exit::vm_gone());
                return Err(ShimError::Stdio(e));
            }
        };
        proc_.set_running();
        if close_stdin {
            self.close_stdin_now(&proc_, &vm).await?;
        }
        self.monitor(&vm, proc_.clone());
        self.events
            .publish(TaskEvent::ExecStarted {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
                pid: proc_.pid(),
            })
            .await;
        Ok(proc_.pid())
    }

    /// Exec: registers the process; Start runs it.
    pub async fn exec(&self, t: ExecTask) -> Result<()> {
        {
            let mut state = self.state();
            let c = state
                .containers
                .get_mut(&t.process.container_id)
                .ok_or_else(|| {
                    ShimError::NotFound(format!("container {}", t.process.container_id))
                })?;
            if c.init.status() == Status::Stopped {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} has stopped",
                    t.process.container_id
                )));
            }
            if c.execs.contains_key(&t.process.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {}",
                    describe(&t.process)
                )));
            }
            let proc_ = Process::new(
                t.process.clone(),
                t.stdio,
                Some(t.spec_json),
                c.vm.sandbox.vmm_pid(),
            );
            c.execs.insert(t.process.exec_id.clone(), Arc::new(proc_));
        }
        self.events
            .publish(TaskEvent::ExecAdded {
                container_id: t.process.container_id,
                exec_id: t.process.exec_id,
            })
            .await;
        Ok(())
    }

    /// Delete: an exec's record, or the whole container (guest side, filesystems; the VM
    /// too when the container owns it). Returns its pid and exit.
    pub async fn delete(self: &Arc<Self>, p: &ProcessRef) -> Result<(u32, Exit)> {
        let (proc_, vm) = self.process(p)?;
        if proc_.status() == Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} is running; kill it first",
                describe(p)
            )));
        }
        if !p.exec_id.is_empty() {
            if let Some(c) = self.state().containers.get_mut(&p.container_id) {
                c.execs.remove(&p.exec_id);
            }
            proc_.stop_io().await;
            let exit = proc_.exit().unwrap_or_else(Exit::vm_gone);
            self.publish_delete(p, proc_.pid(), exit).await;
            return Ok((proc_.pid(), exit));
        }

        let execs: Vec<Arc<Process>> = self
            .state()
            .containers
            .get(&p.container_id)
            .map(|c| c.execs.values().cloned().collect())
            .unwrap_or_default();
        for e in &execs {
            e.stop_io().await;
        }
        if vm.sandbox.vm_exit().is_none() {
            if let Err(e) = vm.sandbox.remove_container(&p.container_id).await {
                log::warn!("removing {} in the guest: {e}", p.container_id);
            }
        }
        if proc_.exit().is_none() {
            // A created container never started: removing it ended its init.
            let _ = tokio::time::timeout(REMOVE_EXIT_WAIT, proc_.wait()).await;
            self.report_exit(&proc_, Exit::vm_gone()).await;
        }
        proc_.stop_io().await;
        let dir = self
            .state()
            .containers
            .get(&p.container_id)
            .map(|c| c.fs.dir.clone());
        if let Some(dir) = dir {
            blocking(move || mounts::remove(&dir))
                .await?
                .map_err(ShimError::Mount)?;
        }
        let removed = self.state().containers.remove(&p.container_id);
        let exit = proc_.exit().unwrap_or_else(Exit::vm_gone);
        self.publish_delete(p, proc_.pid(), exit).await;
        if let Some(c) = removed {
            if c.role.owns_vm() {
                self.destroy_vm(&c.vm).await;
            }
        }
        Ok((proc_.pid(), exit))
    }

    async fn publish_delete(&self, p: &ProcessRef, pid: u32, exit: Exit) {
        self.events
            .publish(TaskEvent::Delete {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: exit.at,
            })
            .await;
    }

    /// Ends the VM; containers still in it (a pod deleted out of order) end with it.
    async fn destroy_vm(self: &Arc<Self>, vm: &Arc<Vm>) {
        vm.destroy().await;
        let left: Vec<Arc<Process>> = {
            let mut state = self.state();
            if state.vm.as_ref().is_some_and(|v| Arc::ptr_eq(v, vm)) {
                state.vm = None;
            }
            state
                .containers
                .values()
                .filter(|c| Arc::ptr_eq(&c.vm, vm))
                .flat_map(|c| std::iter::once(c.init.clone()).chain(c.execs.values().cloned()))
                .collect()
        };
        for p in left {
            self.report_exit(&p, Exit::vm_gone()).await;
        }
    }

    pub async fn kill(&self, k: KillTask) -> Result<()> {
        let (proc_, vm) = self.process(&k.process)?;
        if k.all && k.process.exec_id.is_empty() {
            let execs: Vec<Arc<Process>> = self
                .state()
                .containers
                .get(&k.process.container_id)
                .map(|c| c.execs.values().cloned().collect())
                .unwrap_or_default();
            for e in execs.iter().filter(|e| e.status() == Status::Running) {
                if let Err(err) = vm.sandbox.signal(&e.process, k.signal).await {
                    log::debug!("kill --all {}: {err}", describe(&e.process));
                }
            }
        }
        match proc_.status() {
            Status::Stopped => {
                return Err(ShimError::NotFound(format!(
                    "process {} (already finished)",
                    describe(&k.process)
                )))
            }
            Status::Created if !k.process.exec_id.is_empty() => {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {} has not been started",
                    describe(&k.process)
                )))
            }
            _ => {}
        }
        vm.sandbox
            .signal(&k.process, k.signal)
            .await
            .map_err(ShimError::sandbox(format!(
                "sending signal {} to {}",
                k.signal,
                describe(&k.process)
            )))
    }

    pub async fn wait(&self, p: &ProcessRef) -> Result<Exit> {
        let (proc_, _) = self.process(p)?;
        Ok(proc_.wait().await)
    }

    pub fn state_of(&self, p: &ProcessRef) -> Result<ProcessState> {
        let (proc_, _) = self.process(p)?;
        let (bundle, paused) = self
            .state()
            .containers
            .get(&p.container_id)
            .map(|c| (c.bundle.clone(), c.paused))
            .unwrap_or_default();
        let status = match proc_.status() {
            Status::Running if paused && p.exec_id.is_empty() => Status::Paused,
            s => s,
        };
        Ok(ProcessState {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            bundle,
            pid: proc_.pid(),
            status,
            stdio: proc_.stdio.clone(),
            exit: proc_.exit(),
        })
    }

    /// Pause: freezes the container in the guest; TaskPaused.
    pub async fn pause(&self, container_id: &str) -> Result<()> {
        let vm = self.running_container(container_id, true)?;
        vm.sandbox
            .pause_container(container_id)
            .await
            .map_err(ShimError::sandbox(format!("pausing {container_id}")))?;
        self.set_paused(container_id, true);
        self.events
            .publish(TaskEvent::Paused {
                container_id: container_id.to_owned(),
            })
            .await;
        Ok(())
    }

    /// Resume: thaws a paused container; TaskResumed.
    pub async fn resume(&self, container_id: &str) -> Result<()> {
        let vm = self.running_container(container_id, false)?;
        vm.sandbox
            .resume_container(container_id)
            .await
            .map_err(ShimError::sandbox(format!("resuming {container_id}")))?;
        self.set_paused(container_id, false);
        self.events
            .publish(TaskEvent::Resumed {
                container_id: container_id.to_owned(),
            })
            .await;
        Ok(())
    }

    /// Update: new cgroup limits for the container in the guest.
    pub async fn update(&self, container_id: &str, resources: &ResourceUpdate) -> Result<()> {
        let p = ProcessRef::new(container_id, "")
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let (init, vm) = self.process(&p)?;
        if init.status() == Status::Stopped {
            return Err(ShimError::FailedPrecondition(format!(
                "container {container_id} has stopped"
            )));
        }
        if resources.is_empty() {
            return Ok(());
        }
        vm.sandbox
            .update_container(container_id, resources)
            .await
            .map_err(ShimError::sandbox(format!(
                "updating the resources of {container_id}"
            )))
    }

    /// The VM of a running container that is (`paused`) or is not (`!paused`) to be
    /// paused: refused otherwise.
    fn running_container(&self, container_id: &str, to_pause: bool) -> Result<Arc<Vm>> {
        let state = self.state();
        let c = state
            .containers
            .get(container_id)
            .ok_or_else(|| ShimError::NotFound(format!("container {container_id}")))?;
        if c.init.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {container_id} is {:?}, not running",
                c.init.status()
            )));
        }
        if c.paused == to_pause {
            return Err(ShimError::FailedPrecondition(format!(
                "container {container_id} is {}",
                if c.paused {
                    "already paused"
                } else {
                    "not paused"
                }
            )));
        }
        Ok(c.vm.clone())
    }

    fn set_paused(&self, container_id: &str, paused: bool) {
        if let Some(c) = self.state().containers.get_mut(container_id) {
            c.paused = paused;
        }
    }

    /// Pids: the VMM's once while a process of the container runs (as Kata: the guest's
    /// pids mean nothing on the host).
    pub fn pids(&self, container_id: &str) -> Result<Vec<u32>> {
        let state = self.state();
        let c = state
            .containers
            .get(container_id)
            .ok_or_else(|| ShimError::NotFound(format!("container {container_id}")))?;
        Ok(process::task_pids(
            std::iter::once(&c.init).chain(c.execs.values()),
        ))
    }

    pub async fn resize(&self, p: &ProcessRef, size: WinSize) -> Result<()> {
        let (_, vm) = self.process(p)?;
        vm.sandbox
            .resize(p, size)
            .await
            .map_err(ShimError::sandbox(format!(
                "resizing the terminal of {}",
                describe(p)
            )))
    }

    pub async fn close_stdin(&self, p: &ProcessRef) -> Result<()> {
        let (proc_, vm) = self.process(p)?;
        if proc_.status() == Status::Stopped {
            return Ok(());
        }
        if !proc_.request_stdin_close() {
            // An exec not started yet: Start closes it once the streams are attached.
            return Ok(());
        }
        self.close_stdin_now(&proc_, &vm).await
    }

    async fn close_stdin_now(&self, proc_: &Process, vm: &Vm) -> Result<()> {
        proc_.drain_stdin(STDIN_DRAIN_LIMIT).await;
        vm.sandbox
            .close_stdin(&proc_.process)
            .await
            .map_err(ShimError::sandbox(format!(
                "closing stdin of {}",
                describe(&proc_.process)
            )))
    }

    pub async fn stats(&self, container_id: &str) -> Result<ContainerStats> {
        let p = ProcessRef::new(container_id, "")
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let (_, vm) = self.process(&p)?;
        vm.sandbox
            .stats(container_id)
            .await
            .map_err(ShimError::sandbox(format!(
                "reading stats of {container_id}"
            )))
    }

    /// The shim's pid and the "task" pid containerd shows: the VMM's.
    pub fn connect(&self) -> (u32, u32) {
        let vmm = self
            .state()
            .vm
            .as_ref()
            .map(|vm| vm.sandbox.vmm_pid())
            .unwrap_or(0);
        (std::process::id(), vmm)
    }

    /// Shutdown: the shim exits once it serves no container (or at once with `now`).
    pub async fn shutdown(self: &Arc<Self>, now: bool) {
        let (empty, vm) = {
            let state = self.state();
            (state.containers.is_empty(), state.vm.clone())
        };
        if !empty && !now {
            return;
        }
        if let Some(vm) = vm {
            self.destroy_vm(&vm).await;
        }
        self.exit.signal();
    }

    /// Records an exit (after the output is copied) and publishes it once.
    async fn report_exit(&self, p: &Process, exit: Exit) {
        p.finish_io(OUTPUT_DRAIN_LIMIT).await;
        if p.record_exit(exit) {
            let exit = p.exit().unwrap_or(exit);
            self.events
                .publish(TaskEvent::Exit {
                    container_id: p.process.container_id.clone(),
                    exec_id: p.process.exec_id.clone(),
                    pid: p.pid(),
                    exit_status: exit.status,
                    exited_at: exit.at,
                })
                .await;
        }
    }

    /// Waits for the process in the guest and reports its exit.
    fn monitor(self: &Arc<Self>, vm: &Arc<Vm>, p: Arc<Process>) {
        let rt = self.clone();
        let vm = vm.clone();
        tokio::spawn(async move {
            let exit = match vm.sandbox.wait(&p.process).await {
                Ok(info) => Exit::from_guest(info.exit_status, info.exited_at_unix_nanos),
                Err(e) => {
                    if !vm.destroying() {
                        log::warn!("waiting for {}: {e}", describe(&p.process));
                    }
                    Exit::vm_gone()
                }
            };
            rt.report_exit(&p, exit).await;
        });
    }

    /// Whether container `id` is one of this shim's, in `vm`.
    fn owns(&self, id: &str, vm: &Arc<Vm>) -> bool {
        self.state()
            .containers
            .get(id)
            .is_some_and(|c| Arc::ptr_eq(&c.vm, vm))
    }

    /// Watches the VM: if it ends on its own, every live process exits with it; forwards
    /// OOM events.
    fn watch_vm(self: &Arc<Self>, vm: &Arc<Vm>) {
        let rt = self.clone();
        let watched = vm.clone();
        let death = tokio::spawn(async move {
            let exit = watched.sandbox.wait_vm().await;
            if watched.destroying() {
                return;
            }
            log::error!(
                "the VM of {} ended unexpectedly ({exit}); the guest console ends with:\n{}",
                watched.sandbox_id,
                watched
                    .sandbox
                    .console_tail(bulkhead_sandbox::sandbox::CONSOLE_TAIL_LINES)
            );
            let live: Vec<Arc<Process>> = rt
                .state()
                .containers
                .values()
                .filter(|c| Arc::ptr_eq(&c.vm, &watched))
                .flat_map(|c| std::iter::once(c.init.clone()).chain(c.execs.values().cloned()))
                .filter(|p| p.status() != Status::Stopped)
                .collect();
            let reports: Vec<_> = live
                .into_iter()
                .map(|p| {
                    let rt = rt.clone();
                    tokio::spawn(async move { rt.report_exit(&p, Exit::vm_gone()).await })
                })
                .collect();
            for r in reports {
                let _ = r.await;
            }
        });
        let rt = self.clone();
        let watched = vm.clone();
        let oom = tokio::spawn(async move {
            let e = oom::forward(
                &watched.sandbox_id,
                || watched.sandbox.next_oom_event(),
                |id| rt.owns(id, &watched),
                &*rt.events,
            )
            .await;
            if !watched.destroying() {
                log::info!("OOM events of {} end: {e}", watched.sandbox_id);
            }
        });
        let mut w = vm.watchers.lock().unwrap_or_else(|e| e.into_inner());
        w.push(death);
        w.push(oom);
    }
}

fn stdio_config(s: &StdioPaths) -> StdioConfig {
    StdioConfig {
        stdin: s.stdin.is_some(),
        tty: s.terminal,
    }
}

fn describe(p: &ProcessRef) -> String {
    if p.exec_id.is_empty() {
        p.container_id.clone()
    } else {
        format!("{}/{}", p.container_id, p.exec_id)
    }
}

/// Runs blocking work (mount(2), tree removal) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ShimError::FailedPrecondition(format!("a blocking task failed: {e}")))
}
