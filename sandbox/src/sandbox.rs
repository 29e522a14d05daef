//! One pod's microVM from start to destroy: run directory, virtiofsd, the VMM, the agent
//! connection; container operations that turn a lost connection into "the VM is gone" with
//! the guest console; and a teardown that leaves no process, socket, mount or directory.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_protocol::resources::ResourceUpdate;
use bulkhead_protocol::stdio::StreamKind;
use bulkhead_protocol::types::{
    ContainerConfig, ContainerStats, DnsConfig, ExecConfig, ProcessRef,
    SandboxConfig as AgentSandboxConfig, WinSize,
};
use bulkhead_protocol::SHARED_FS_MOUNT_POINT;
use bulkhead_vmm_contract::args::parse_log_level;
use bulkhead_vmm_contract::limits::DEFAULT_CMDLINE;
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::agent::{AgentConn, AgentEndpoint, ExitInfo, DEFAULT_RPC_TIMEOUT};
use crate::error::{Phase, SandboxError};
use crate::jail::plan::{JAIL_INITRD, JAIL_KERNEL};
use crate::jail::{JailContents, JailSettings, SandboxJail};
use crate::leftovers;
use crate::network::{AttachedPodNetwork, PodNetwork};
use crate::run_dir::RunDir;
use crate::sizing::VmSize;
use crate::virtiofsd_process::{VirtiofsdOptions, VirtiofsdProcess};
use crate::vmm_process::{
    FsSpec, SerialOutput, VmExit, VmmCommand, VmmConfig, VmmError, VmmProcess, VsockSpec,
    FIRST_PASSED_FD,
};
use bulkhead_vmm_contract::net::{NetSpec, TapBackend};

/// Default root of the run directories.
pub const DEFAULT_RUN_ROOT: &str = "/run/bulkhead";
/// virtio-fs tag of the shared directory (the agent mounts it at
/// [`SHARED_FS_MOUNT_POINT`]).
pub const SHARED_FS_TAG: &str = "bulkhead";
/// The guest agent's log format on the kernel command line (`bulkhead.log_format=json`).
pub const GUEST_LOG_FORMAT_PARAM: &str = "bulkhead.log_format";
/// Console lines quoted in error messages.
pub const CONSOLE_TAIL_LINES: usize = 20;
/// The guest console log stops growing here (the VMM drops the rest and says so): a guest
/// flooding its console cannot fill the host's `/run`.
pub const CONSOLE_LOG_MAX_BYTES: u64 = 16 << 20;
/// How long a VM may take from launch to a version-checked agent (generous: under software
/// emulation a boot takes seconds).
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the VM may take to power off after DestroySandbox before it is killed.
pub const DEFAULT_DESTROY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent gets to answer on a new connection after a request went unanswered.
const SILENCE_PROBE: Duration = Duration::from_secs(5);

/// The data path of the guest's NIC (`vm.net_backend`): the VMM's own virtio-net device
/// (`--net ...`) or the kernel's vhost-net (`--net ...,vhost=on`). In the harness vhost-net
/// moved about twice the TCP throughput of the userspace device (`bench/net.sh`), so it is
/// the default wherever `/dev/vhost-net` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackend {
    /// vhost-net where [`VHOST_NET_DEVICE`] exists, else userspace.
    #[default]
    Auto,
    Vhost,
    Userspace,
}

/// The kernel's vhost-net device (module `vhost_net`).
pub const VHOST_NET_DEVICE: &str = "/dev/vhost-net";

impl NetBackend {
    /// Whether the VMM's NICs use vhost-net here.
    pub fn uses_vhost(self) -> bool {
        match self {
            NetBackend::Auto => Path::new(VHOST_NET_DEVICE).exists(),
            NetBackend::Vhost => true,
            NetBackend::Userspace => false,
        }
    }
}

/// Everything needed to start a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Sandbox (pod) id; container-id rules apply (it names the run directory).
    pub id: String,
    /// Root of the run directories (default [`DEFAULT_RUN_ROOT`]).
    pub run_root: PathBuf,
    pub vmm_binary: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `None` keeps the VMM's default.
    pub cmdline: Option<String>,
    pub size: VmSize,
    pub vsock_cid: u32,
    /// virtiofsd for the shared directory; `None` boots without a shared filesystem.
    pub virtiofsd: Option<VirtiofsdOptions>,
    /// Launch to version-checked agent.
    pub agent_timeout: Duration,
    /// Time limit of one ordinary request.
    pub rpc_timeout: Duration,
    /// DestroySandbox to VMM exit, before SIGKILL.
    pub destroy_timeout: Duration,
    pub hostname: Option<String>,
    pub dns: DnsConfig,
    /// The pod's network namespace on the host (CNI's, or the CLI's bridge network): the
    /// VM gets a NIC whose tap is mirrored to that namespace's interface, and the agent
    /// gives it the same addresses and routes. `None`: the guest has loopback only.
    pub netns: Option<PathBuf>,
    /// The data path of the guest's NIC.
    pub net_backend: NetBackend,
    /// `--log-level` for the VMM.
    pub vmm_log_level: Option<String>,
    /// The log format of the VMM (`--log-format`) and of the guest agent
    /// ([`GUEST_LOG_FORMAT_PARAM`] on the kernel command line); `None` keeps their
    /// defaults (the VMM's `BULKHEAD_LOG_FORMAT`, the agent's text).
    pub log_format: Option<bulkhead_log::Format>,
    /// The VMM's jail ([`crate::jail`]); `None` runs it as the caller, unconfined but for
    /// its own seccomp filters.
    pub jail: Option<JailSettings>,
    /// Where the guest console log stops growing (the VMM's `--serial-max-bytes`).
    pub console_max_bytes: u64,
}

impl SandboxConfig {
    /// A configuration with the defaults: run root `/run/bulkhead`, the VMM's default
    /// command line, the size of a pod without limits, no shared filesystem.
    pub fn new(id: &str, vmm_binary: &Path, kernel: &Path) -> Self {
        SandboxConfig {
            id: id.to_owned(),
            run_root: PathBuf::from(DEFAULT_RUN_ROOT),
            vmm_binary: vmm_binary.to_path_buf(),
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: None,
            size: VmSize::for_pod_on_this_host(&Default::default()),
            vsock_cid: 3,
            virtiofsd: None,
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            destroy_timeout: DEFAULT_DESTROY_TIMEOUT,
            hostname: None,
            dns: DnsConfig::default(),
            netns: None,
            net_backend: NetBackend::Auto,
            vmm_log_level: None,
            log_format: None,
            jail: None,
            console_max_bytes: CONSOLE_LOG_MAX_BYTES,
        }
    }

    /// Appends `params` to the guest kernel's command line (to the VMM's default one when
    /// none is configured).
    pub fn append_kernel_params(&mut self, params: &str) {
        let base = self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
        self.cmdline = Some(format!("{base} {params}"));
    }

    /// The guest kernel's command line: [`SandboxConfig::cmdline`] (else the VMM's
    /// default), plus `bulkhead.log_format=json` when JSON is configured and the command
    /// line does not set the agent's format itself. `None` keeps the VMM's default.
    pub fn guest_cmdline(&self) -> Option<String> {
        let json = self.log_format == Some(bulkhead_log::Format::Json);
        let base = self.cmdline.as_deref();
        let key = format!("{GUEST_LOG_FORMAT_PARAM}=");
        let has_format = base.is_some_and(|c| c.split_whitespace().any(|w| w.starts_with(&key)));
        if !json || has_format {
            return self.cmdline.clone();
        }
        let base = base.unwrap_or(DEFAULT_CMDLINE);
        Some(format!(
            "{base} {GUEST_LOG_FORMAT_PARAM}={}",
            bulkhead_log::Format::Json
        ))
    }
}

/// A running sandbox. Dropping it kills the VMM and virtiofsd and removes the run
/// directory; [`Sandbox::destroy`] does the same in order and reports errors.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    // Drop order matters: processes first, then the directory they used. Dropping `vmm`
    // kills the VMM and returns once it has exited (`VmmProcess`'s `Drop`); dropping
    // `virtiofsd` kills its process group; `run_dir` goes last.
    vmm: VmmProcess,
    virtiofsd: tokio::sync::Mutex<Option<VirtiofsdProcess>>,
    // Detached after the VM has ended (its drop does the same, best effort).
    network: tokio::sync::Mutex<Option<AttachedPodNetwork>>,
    // The uid and cgroup of the jailed VMM: released once the VMM and virtiofsd are gone.
    jail: tokio::sync::Mutex<Option<SandboxJail>>,
    agent: AgentConn,
    destroy_timeout: Duration,
    destroyed: tokio::sync::Mutex<Option<VmExit>>,
    shared_dir: PathBuf,
    run_path: PathBuf,
    run_dir: Mutex<Option<RunDir>>,
}

/// What `start` has built so far, torn down in order when a later step fails.
struct Partial {
    run_dir: RunDir,
    network: Option<AttachedPodNetwork>,
    virtiofsd: Option<VirtiofsdProcess>,
    vmm: Option<VmmProcess>,
    jail: Option<SandboxJail>,
}

impl Partial {
    async fn teardown(mut self) {
        if let Some(vmm) = self.vmm.take() {
            vmm.kill_and_wait().await;
        }
        if let Some(mut fsd) = self.virtiofsd.take() {
            fsd.stop().await;
        }
        if let Some(mut jail) = self.jail.take() {
            if let Err(e) = jail.release() {
                log::warn!("after a failed start: {}", bulkhead_log::error_chain(&e));
            }
        }
        if let Some(network) = self.network.take() {
            if let Err(e) = network.detach_async().await {
                log::warn!("after a failed start: {}", bulkhead_log::error_chain(&e));
            }
        }
        if let Err(e) = self.run_dir.remove() {
            log::warn!("after a failed start: {e}");
        }
    }
}

impl Sandbox {
    /// Creates the run directory, starts virtiofsd (when configured) and the VMM, connects
    /// to the agent, checks its version and sends CreateSandbox. On failure everything
    /// started so far is stopped and removed again.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        if config.kernel.as_os_str().is_empty() || config.vmm_binary.as_os_str().is_empty() {
            return Err(SandboxError::Config(
                "the kernel and the VMM binary must be set".into(),
            ));
        }
        let run_dir = RunDir::create(&config.run_root, &config.id).map_err(SandboxError::RunDir)?;
        let mut partial = Partial {
            run_dir,
            network: None,
            virtiofsd: None,
            vmm: None,
            jail: None,
        };
        match Self::boot(&config, &mut partial).await {
            Ok(agent) => {
                let Partial {
                    run_dir,
                    network,
                    virtiofsd,
                    vmm: Some(vmm),
                    jail,
                } = partial
                else {
                    unreachable!("boot returns Ok only with a running VMM");
                };
                Ok(Sandbox {
                    id: config.id,
                    vmm,
                    virtiofsd: tokio::sync::Mutex::new(virtiofsd),
                    network: tokio::sync::Mutex::new(network),
                    jail: tokio::sync::Mutex::new(jail),
                    agent,
                    destroy_timeout: config.destroy_timeout,
                    destroyed: tokio::sync::Mutex::new(None),
                    shared_dir: run_dir.share_dir(),
                    run_path: run_dir.path().to_path_buf(),
                    run_dir: Mutex::new(Some(run_dir)),
                })
            }
            Err(e) => {
                partial.teardown().await;
                Err(e)
            }
        }
    }

    async fn boot(
        config: &SandboxConfig,
        partial: &mut Partial,
    ) -> Result<AgentConn, SandboxError> {
        let log_level = match config.vmm_log_level.as_deref() {
            Some(level) => Some(
                parse_log_level(level)
                    .map_err(|e| SandboxError::VmmStart(VmmError::LogLevel(e)))?,
            ),
            None => None,
        };
        // The pod network: a tap beside each NIC of the namespace, mirrored to it; the VMM
        // inherits the taps (fd FIRST_PASSED_FD + i) and the guest NICs take their MACs.
        let mut pass_fds = Vec::new();
        let mut net = Vec::new();
        if let Some(netns) = &config.netns {
            let network = PodNetwork::attach_async(netns.clone())
                .await
                .map_err(SandboxError::Network)?;
            let network = partial.network.insert(network);
            pass_fds = network
                .vmm_fds()
                .map_err(|e| SandboxError::VmmStart(VmmError::PassFd(e)))?;
            let vhost = config.net_backend.uses_vhost();
            for (i, nic) in network.nics().iter().enumerate() {
                net.push(NetSpec {
                    backend: TapBackend::Fd(FIRST_PASSED_FD + i as i32),
                    mac: Some(nic.mac),
                    mtu: u16::try_from(nic.mtu).ok(),
                    vhost,
                });
            }
        }
        let dir = &partial.run_dir;
        // The jail: a uid and a cgroup of the sandbox's own; virtiofsd joins the cgroup too.
        if let Some(settings) = &config.jail {
            let jail = SandboxJail::prepare(
                settings,
                &config.id,
                config.size.vcpus,
                config.size.memory_mib,
            )
            .map_err(SandboxError::Jail)?;
            partial.jail = Some(jail);
        }
        let cgroup_procs = match &partial.jail {
            Some(jail) => jail.cgroup_procs().map_err(SandboxError::Jail)?,
            None => Vec::new(),
        };
        let mut fs = Vec::new();
        if let Some(options) = &config.virtiofsd {
            let fsd = VirtiofsdProcess::start(
                options,
                &dir.fs_socket(),
                &dir.shared_dir(),
                &dir.virtiofsd_log(),
                &cgroup_procs,
            )
            .await
            .map_err(SandboxError::Virtiofsd)?;
            // The VMM gets the connection, not the path: its jail has no socket to reach.
            let fsd = partial.virtiofsd.insert(fsd);
            let stream = fsd.connect().await.map_err(SandboxError::Virtiofsd)?;
            fs.push(fs_on_fd(SHARED_FS_TAG, passed_fd(&pass_fds)));
            pass_fds.push(OwnedFd::from(stream));
        }
        drop(cgroup_procs);
        // The hybrid vsock listener is ours too; the VMM accepts on it.
        let listener = std::os::unix::net::UnixListener::bind(dir.vsock_socket())
            .map_err(|e| SandboxError::VmmStart(VmmError::PassFd(e)))?;
        let vsock = vsock_on_fd(passed_fd(&pass_fds), config.vsock_cid);
        pass_fds.push(OwnedFd::from(listener));
        let jailed = partial.jail.is_some();
        // Sizes beyond the VMM's types saturate; the VMM then refuses them with its limits.
        let command = VmmCommand {
            kernel: if jailed {
                PathBuf::from(JAIL_KERNEL)
            } else {
                config.kernel.clone()
            },
            initrd: match &config.initrd {
                Some(_) if jailed => Some(PathBuf::from(JAIL_INITRD)),
                other => other.clone(),
            },
            cmdline: config.guest_cmdline(),
            vcpus: u8::try_from(config.size.vcpus).unwrap_or(u8::MAX),
            memory_mib: u32::try_from(config.size.memory_mib).unwrap_or(u32::MAX),
            serial: SerialOutput::Stdout,
            serial_max_bytes: config.console_max_bytes,
            rng: true,
            vsock: Some(vsock),
            fs,
            net,
            seccomp: None,
            uid: None,
            gid: None,
            log_level,
            log_format: config.log_format,
        };
        let jail = match &partial.jail {
            Some(jail) => Some(
                jail.plan(&JailContents {
                    root: &dir.jail_root(),
                    vmm: &config.vmm_binary,
                    kernel: &config.kernel,
                    initrd: config.initrd.as_deref(),
                    vhost_net: command.net.iter().any(|n| n.vhost),
                    netns: config.netns.as_deref(),
                })
                .map_err(SandboxError::Jail)?,
            ),
            None => None,
        };
        let vmm_config = VmmConfig {
            binary: config.vmm_binary.clone(),
            command,
            console_log: dir.console_log(),
            vmm_log: dir.vmm_log(),
            pass_fds,
            jail,
        };
        let vmm = VmmProcess::spawn(vmm_config).map_err(SandboxError::VmmStart)?;
        if let Err(e) = leftovers::record_vmm_pid(dir.path(), vmm.pid()) {
            // Only the clean-up after a crashed front end needs it: not worth failing for.
            log::warn!(
                "cannot record the VMM's pid in {}: {e}",
                dir.path().display()
            );
        }
        let endpoint = AgentEndpoint::HybridVsock(dir.vsock_socket());
        let deadline = Instant::now() + config.agent_timeout;
        let vmm = partial.vmm.insert(vmm);
        let agent = tokio::select! {
            conn = AgentConn::connect(endpoint, deadline, config.rpc_timeout) => match conn {
                Ok(conn) => conn,
                Err(SandboxError::AgentConnect { source, .. }) => {
                    // The VMM may have died just now: prefer that explanation.
                    if let Some(exit) = vmm.try_wait() {
                        return Err(exit_error(vmm, exit));
                    }
                    return Err(SandboxError::AgentConnect {
                        source,
                        console_tail: vmm.console_tail(CONSOLE_TAIL_LINES),
                    });
                }
                Err(e) => return Err(e),
            },
            exit = vmm.wait() => return Err(exit_error(vmm, exit)),
        };
        let agent_config = AgentSandboxConfig {
            sandbox_id: config.id.clone(),
            hostname: config.hostname.clone(),
            dns: config.dns.clone(),
            shared_fs_tag: config.virtiofsd.as_ref().map(|_| SHARED_FS_TAG.to_owned()),
        };
        let created = agent.create_sandbox(&agent_config).await;
        created.map_err(|e| explain(vmm, e))?;
        if let Some(network) = &partial.network {
            let configured = agent.configure_network(network.guest_network()).await;
            configured.map_err(|e| explain(vmm, e))?;
        }
        Ok(agent)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sandbox's run directory on the host.
    pub fn run_dir(&self) -> &Path {
        &self.run_path
    }

    /// Where the host puts what the guest sees (container root filesystems, volumes): a
    /// directory private to the host, exported read-only (mounts below it keep their own
    /// flags) at [`SHARED_FS_MOUNT_POINT`] in the guest. Nothing in it is guest-writable
    /// except inside the mounts placed there.
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    /// The guest path of a host path inside [`Sandbox::shared_dir`] (`None` outside it).
    pub fn guest_path(&self, host_path: &Path) -> Option<PathBuf> {
        guest_path(&self.shared_dir, host_path)
    }

    pub fn vmm_pid(&self) -> u32 {
        self.vmm.pid()
    }

    pub fn agent(&self) -> &AgentConn {
        &self.agent
    }

    /// The last lines of the guest console.
    pub fn console_tail(&self, lines: usize) -> String {
        self.vmm.console_tail(lines)
    }

    /// How the VM ended, if it has.
    pub fn vm_exit(&self) -> Option<VmExit> {
        self.vmm.try_wait()
    }

    /// Waits until the VM ends (a guest crash, or after `destroy`).
    pub async fn wait_vm(&self) -> VmExit {
        self.vmm.wait().await
    }

    /// Turns a failed request into "the VM is gone" when it is.
    async fn check<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, SandboxError>>,
    ) -> Result<T, SandboxError> {
        match request.await {
            Err(SandboxError::Transport { phase, source }) => {
                // The connection usually drops a moment before the VMM is reaped.
                let exit = tokio::time::timeout(Duration::from_secs(2), self.vmm.wait())
                    .await
                    .ok();
                match exit {
                    Some(exit) => Err(SandboxError::VmGone {
                        phase,
                        exit,
                        console_tail: self.vmm.console_tail(CONSOLE_TAIL_LINES),
                    }),
                    None => Err(SandboxError::Unanswered {
                        phase,
                        cause: source.to_string(),
                        diagnosis: self.diagnose_silence().await,
                    }),
                }
            }
            other => other,
        }
    }

    /// After a request went unanswered while the VM runs: has the VMM log its device counters
    /// (how many packets crossed the vsock device) and asks the agent for its version on a new
    /// connection. An agent that answers there is alive and this one answer went missing; one
    /// that does not is stuck, and its stall report in the guest console says where.
    async fn diagnose_silence(&self) -> String {
        self.vmm.request_metrics();
        let deadline = Instant::now() + SILENCE_PROBE;
        match AgentConn::connect(self.agent.endpoint().clone(), deadline, SILENCE_PROBE).await {
            Ok(_) => "the agent answers on a new connection, so this answer went missing \
                      (the VMM log has the vsock device's counters)"
                .to_owned(),
            Err(e) => format!(
                "it does not answer on a new connection either ({e}): it is stuck \
                 (see its stall report in the guest console)"
            ),
        }
    }

    /// Creates a container; `config.rootfs` is the guest path (see [`Sandbox::guest_path`]).
    /// Returns the guest pid of its init process.
    pub async fn create_container(&self, config: &ContainerConfig) -> Result<u32, SandboxError> {
        self.check(self.agent.create_container(config)).await
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), SandboxError> {
        self.check(self.agent.start_container(container_id)).await
    }

    pub async fn exec(&self, config: &ExecConfig) -> Result<u32, SandboxError> {
        self.check(self.agent.exec(config)).await
    }

    pub async fn signal(&self, process: &ProcessRef, signal: u32) -> Result<(), SandboxError> {
        self.check(self.agent.signal(process, signal)).await
    }

    pub async fn wait(&self, process: &ProcessRef) -> Result<ExitInfo, SandboxError> {
        self.check(self.agent.wait(process)).await
    }

    pub async fn resize(&self, process: &ProcessRef, size: WinSize) -> Result<(), SandboxError> {
        self.check(self.agent.resize(process, size)).await
    }

    pub async fn close_stdin(&self, process: &ProcessRef) -> Result<(), SandboxError> {
        self.check(self.agent.close_stdin(process)).await
    }

    pub async fn stats(&self, container_id: &str) -> Result<ContainerStats, SandboxError> {
        self.check(self.agent.stats(container_id)).await
    }

    pub async fn next_oom_event(&self) -> Result<String, SandboxError> {
        self.check(self.agent.next_oom_event()).await
    }

    pub async fn pause_container(&self, container_id: &str) -> Result<(), SandboxError> {
        self.check(self.agent.pause_container(container_id)).await
    }

    pub async fn resume_container(&self, container_id: &str) -> Result<(), SandboxError> {
        self.check(self.agent.resume_container(container_id)).await
    }

    pub async fn update_container(
        &self,
        container_id: &str,
        resources: &ResourceUpdate,
    ) -> Result<(), SandboxError> {
        self.check(self.agent.update_container(container_id, resources))
            .await
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), SandboxError> {
        self.check(self.agent.remove_container(container_id)).await
    }

    /// Opens one stdio stream of a process (see [`AgentConn::open_stdio`]).
    pub async fn open_stdio(
        &self,
        process: &ProcessRef,
        stream: StreamKind,
    ) -> Result<UnixStream, SandboxError> {
        if let Some(exit) = self.vmm.try_wait() {
            return Err(SandboxError::VmGone {
                phase: Phase::Stdio,
                exit,
                console_tail: self.vmm.console_tail(CONSOLE_TAIL_LINES),
            });
        }
        self.agent.open_stdio(process, stream).await
    }

    /// Stops the sandbox: DestroySandbox, waits for the VM to power off (killing it after
    /// the destroy timeout), stops virtiofsd, unmounts and removes the run directory.
    /// Returns how the VM ended. A second call returns the same exit.
    pub async fn destroy(&self) -> Result<VmExit, SandboxError> {
        let mut destroyed = self.destroyed.lock().await;
        if let Some(exit) = *destroyed {
            return Ok(exit);
        }
        if self.vmm.try_wait().is_none() {
            // The reply is often lost when the guest powers off first; the VMM exit is
            // the acknowledgement.
            let asked = self.agent.destroy_sandbox(self.destroy_timeout).await;
            if let Err(e @ SandboxError::Agent { .. }) = &asked {
                log::warn!("sandbox {}: {e}", self.id);
            }
        }
        let exit = match tokio::time::timeout(self.destroy_timeout, self.vmm.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                log::warn!(
                    "sandbox {}: the VM did not power off within {:?}; killing it",
                    self.id,
                    self.destroy_timeout
                );
                self.vmm.kill_and_wait().await
            }
        };
        if let Some(mut fsd) = self.virtiofsd.lock().await.take() {
            fsd.stop().await;
        }
        if let Some(mut jail) = self.jail.lock().await.take() {
            // Blocking for at most a few seconds, while the killed processes leave the cgroup.
            let released = tokio::task::spawn_blocking(move || jail.release()).await;
            if let Ok(Err(e)) = released {
                log::warn!("sandbox {}: {}", self.id, bulkhead_log::error_chain(&e));
            }
        }
        if let Some(network) = self.network.lock().await.take() {
            if let Err(e) = network.detach_async().await {
                log::warn!("sandbox {}: {}", self.id, bulkhead_log::error_chain(&e));
            }
        }
        *destroyed = Some(exit);
        let run_dir = self.run_dir.lock().ok().and_then(|mut d| d.take());
        if let Some(mut run_dir) = run_dir {
            run_dir.remove().map_err(SandboxError::Cleanup)?;
        }
        Ok(exit)
    }
}

/// The number the next descriptor pushed onto `pass_fds` has in the VMM.
fn passed_fd(pass_fds: &[OwnedFd]) -> i32 {
    FIRST_PASSED_FD + i32::try_from(pass_fds.len()).unwrap_or(i32::MAX - FIRST_PASSED_FD)
}

/// `--fs TAG=fd=N`: virtiofsd's vhost-user connection, inherited.
fn fs_on_fd(tag: &str, fd: i32) -> FsSpec {
    FsSpec::on_fd(tag, fd)
}

/// `--vsock fd=N`: the hybrid vsock listener, inherited.
fn vsock_on_fd(fd: i32, cid: u32) -> VsockSpec {
    VsockSpec::on_fd(fd, u64::from(cid))
}

/// The error for a VM that ended before its agent answered.
fn exit_error(vmm: &VmmProcess, exit: VmExit) -> SandboxError {
    if exit.is_vmm_failure() {
        SandboxError::VmmFailed {
            exit,
            vmm_log_tail: vmm.log_tail(5),
        }
    } else {
        SandboxError::KernelBoot {
            exit,
            console_tail: vmm.console_tail(CONSOLE_TAIL_LINES),
        }
    }
}

/// During start: a lost connection with a dead VMM is explained by the VMM's exit.
fn explain(vmm: &VmmProcess, e: SandboxError) -> SandboxError {
    match (&e, vmm.try_wait()) {
        (SandboxError::Transport { phase, .. }, Some(exit)) => SandboxError::VmGone {
            phase: *phase,
            exit,
            console_tail: vmm.console_tail(CONSOLE_TAIL_LINES),
        },
        _ => e,
    }
}

/// Maps `host_path` below `shared_dir` to the same path below the guest's mount point.
pub fn guest_path(shared_dir: &Path, host_path: &Path) -> Option<PathBuf> {
    let rel = host_path.strip_prefix(shared_dir).ok()?;
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some(Path::new(SHARED_FS_MOUNT_POINT).join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_of_shared_files() {
        let shared = Path::new("/run/bulkhead/pod/shared");
        assert_eq!(
            guest_path(shared, Path::new("/run/bulkhead/pod/shared/c1/rootfs")),
            Some(PathBuf::from("/run/bulkhead/shared/c1/rootfs"))
        );
        assert_eq!(
            guest_path(shared, shared),
            Some(PathBuf::from(SHARED_FS_MOUNT_POINT))
        );
        assert_eq!(guest_path(shared, Path::new("/etc/passwd")), None);
        assert_eq!(
            guest_path(shared, Path::new("/run/bulkhead/pod/shared/../../x")),
            None
        );
    }

    #[test]
    fn json_logging_reaches_the_guest_command_line() {
        use bulkhead_log::Format;
        let mut c = SandboxConfig::new("p", Path::new("/vmm"), Path::new("/k"));
        // Nothing configured, or text: the command line as given (None: the VMM's default).
        assert_eq!(c.guest_cmdline(), None);
        c.log_format = Some(Format::Text);
        assert_eq!(c.guest_cmdline(), None);
        c.cmdline = Some("console=ttyS0 quiet".into());
        assert_eq!(c.guest_cmdline().as_deref(), Some("console=ttyS0 quiet"));
        // JSON: the agent is told, after the configured command line or the VMM's default.
        c.log_format = Some(Format::Json);
        assert_eq!(
            c.guest_cmdline().as_deref(),
            Some("console=ttyS0 quiet bulkhead.log_format=json")
        );
        c.cmdline = None;
        let line = c.guest_cmdline().unwrap();
        assert_eq!(line, format!("{DEFAULT_CMDLINE} bulkhead.log_format=json"));
        // What the agent reads (guest-agent/src/config.rs): the last word of its key.
        let format = line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("bulkhead.log_format="))
            .next_back();
        assert_eq!(format.map(str::parse::<Format>), Some(Ok(Format::Json)));
        // A command line that sets the agent's format itself is left alone.
        c.cmdline = Some("console=ttyS0 bulkhead.log_format=text".into());
        assert_eq!(
            c.guest_cmdline().as_deref(),
            Some("console=ttyS0 bulkhead.log_format=text")
        );
    }
}
