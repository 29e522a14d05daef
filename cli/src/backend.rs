//! Where a container runs: in a microVM (`bulkhead-sandbox`: VMM, virtiofsd, agent over
//! hybrid vsock) or on the host (the same agent library, run as a child process of the
//! supervisor: `bulkhead __agent`, reached over unix sockets). Both are driven through the
//! agent API, so the container code and the spec are the same in both modes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use bulkhead_sandbox::{
    AgentConn, AgentEndpoint, ContainerConfig, ExecConfig, ExitInfo, FsCache, FsSandbox,
    PodResources, ProcessRef, Sandbox, SandboxConfig, StreamKind, VirtiofsdOptions, VmSize,
    WinSize,
};
use tokio::net::UnixStream;
use tokio::process::Child;

use crate::config::Config;
use crate::state::ContainerDir;

pub enum Backend {
    Vm(Box<Sandbox>),
    Host(Box<HostAgent>),
}

/// The agent library running on the host as `bulkhead __agent`.
pub struct HostAgent {
    agent: AgentConn,
    child: tokio::sync::Mutex<Child>,
}

/// Sizing and naming of a VM.
pub struct VmRequest<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// The VM size: the configured default without limits, the sandbox sizing rule with them.
pub fn vm_size(cfg: &Config, cpu_millis: Option<u64>, memory_bytes: Option<u64>) -> VmSize {
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let rule = VmSize::for_pod(
        &PodResources {
            cpu_millis,
            memory_bytes,
        },
        host_cpus,
    );
    VmSize {
        vcpus: if cpu_millis.is_some() {
            rule.vcpus
        } else {
            cfg.vm.vcpus.min(host_cpus.max(1))
        },
        memory_mib: if memory_bytes.is_some() {
            rule.memory_mib
        } else {
            cfg.vm.memory_mib
        },
    }
}

impl Backend {
    /// Boots the microVM and connects to its agent.
    pub async fn start_vm(cfg: &Config, req: &VmRequest<'_>) -> anyhow::Result<Backend> {
        let kernel = cfg.kernel_path().context(
            "no guest kernel: set vm.kernel (or BULKHEAD_KERNEL), or build one with kernel-config/build-kernel.sh",
        )?;
        if !kernel.exists() {
            bail!(
                "guest kernel {} not found (see `bulkhead check`)",
                kernel.display()
            );
        }
        let initrd = cfg.initrd_path();
        if !initrd.exists() {
            bail!(
                "agent initramfs {} not found (build it with guest-agent/build-initramfs.sh; see `bulkhead check`)",
                initrd.display()
            );
        }
        let vmm = cfg.vmm_path().with_context(|| {
            format!(
                "VMM binary {} not found (see `bulkhead check`)",
                cfg.vm.vmm.display()
            )
        })?;
        let virtiofsd = cfg.virtiofsd_path().with_context(|| {
            format!(
                "virtiofsd {} not found (scripts/install-virtiofsd.sh; see `bulkhead check`)",
                cfg.virtiofsd.binary.display()
            )
        })?;
        let run_root = cfg.sandboxes_dir();
        crate::rootfs::ensure_shared(&run_root)?;
        // Short: the sandbox's unix sockets live below <run_root>/sandboxes/<id>/.
        let sandbox_id = req.id.get(..16).unwrap_or(req.id);
        let mut sc = SandboxConfig::new(sandbox_id, &vmm, &kernel);
        sc.run_root = run_root;
        sc.initrd = Some(initrd);
        sc.cmdline = (!cfg.vm.cmdline.is_empty()).then(|| cfg.vm.cmdline.clone());
        sc.size = vm_size(cfg, req.cpu_millis, req.memory_bytes);
        sc.agent_timeout = Duration::from_secs(cfg.vm.boot_timeout_secs);
        sc.hostname = Some(req.hostname.to_owned());
        sc.vmm_log_level = (!cfg.vm.vmm_log_level.is_empty()).then(|| cfg.vm.vmm_log_level.clone());
        sc.virtiofsd = Some(VirtiofsdOptions {
            binary: virtiofsd,
            sandbox: match cfg.virtiofsd.sandbox.as_str() {
                "none" => FsSandbox::None,
                _ => FsSandbox::Namespace,
            },
            cache: match cfg.virtiofsd.cache.as_str() {
                "never" => FsCache::Never,
                "always" => FsCache::Always,
                _ => FsCache::Auto,
            },
            thread_pool_size: cfg.virtiofsd.thread_pool_size,
            ..Default::default()
        });
        let started = std::time::Instant::now();
        let sandbox = Sandbox::start(sc).await.context("starting the microVM")?;
        if crate::timings::enabled() {
            record_boot(&sandbox, started.elapsed());
        }
        Ok(Backend::Vm(Box::new(sandbox)))
    }

    /// Starts the host agent (`bulkhead __agent`) for one container and connects to it.
    pub async fn start_host(dir: &ContainerDir, log_level: &str) -> anyhow::Result<Backend> {
        // Short: libcontainer puts console sockets below the state dir.
        let agent_dir = dir.socket_dir().join("a");
        std::fs::create_dir_all(&agent_dir)?;
        let api = dir.socket_dir().join("agent.sock");
        let stdio = dir.socket_dir().join("stdio.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path.join("agent.log"))?;
        let exe = std::env::current_exe().context("finding the bulkhead binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("__agent")
            .arg("--listen")
            .arg(format!("unix:{}", api.display()))
            .arg("--stdio-listen")
            .arg(format!("unix:{}", stdio.display()))
            .arg("--state-dir")
            .arg(&agent_dir)
            .arg("--log")
            .arg(log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the host agent")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let endpoint = AgentEndpoint::Unix { ttrpc: api, stdio };
        let agent = tokio::select! {
            a = AgentConn::connect(endpoint, deadline, Duration::from_secs(30)) => a,
            status = child.wait() => bail!(
                "the host agent exited ({}) before answering; see {}",
                status.map(|s| s.to_string()).unwrap_or_default(),
                dir.path.join("agent.log").display()
            ),
        };
        let agent = match agent {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e).context("connecting to the host agent");
            }
        };
        Ok(Backend::Host(Box::new(HostAgent {
            agent,
            child: tokio::sync::Mutex::new(child),
        })))
    }

    pub fn sandbox(&self) -> Option<&Sandbox> {
        match self {
            Backend::Vm(s) => Some(s),
            Backend::Host(_) => None,
        }
    }

    /// The host directory exported to the guest (VM mode).
    pub fn shared_dir(&self) -> Option<PathBuf> {
        self.sandbox().map(|s| s.shared_dir().to_path_buf())
    }

    pub fn guest_path(&self, host: &Path) -> Option<PathBuf> {
        self.sandbox().and_then(|s| s.guest_path(host))
    }

    pub fn vmm_pid(&self) -> Option<u32> {
        self.sandbox().map(|s| s.vmm_pid())
    }

    pub async fn create(&self, c: &ContainerConfig) -> anyhow::Result<u32> {
        Ok(match self {
            Backend::Vm(s) => s.create_container(c).await?,
            Backend::Host(h) => h.agent.create_container(c).await?,
        })
    }

    pub async fn start(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.start_container(id).await?,
            Backend::Host(h) => h.agent.start_container(id).await?,
        }
        Ok(())
    }

    pub async fn exec(&self, c: &ExecConfig) -> anyhow::Result<u32> {
        Ok(match self {
            Backend::Vm(s) => s.exec(c).await?,
            Backend::Host(h) => h.agent.exec(c).await?,
        })
    }

    pub async fn signal(&self, p: &ProcessRef, sig: u32) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.signal(p, sig).await?,
            Backend::Host(h) => h.agent.signal(p, sig).await?,
        }
        Ok(())
    }

    pub async fn wait(&self, p: &ProcessRef) -> anyhow::Result<ExitInfo> {
        Ok(match self {
            Backend::Vm(s) => s.wait(p).await?,
            Backend::Host(h) => h.agent.wait(p).await?,
        })
    }

    pub async fn resize(&self, p: &ProcessRef, size: WinSize) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.resize(p, size).await?,
            Backend::Host(h) => h.agent.resize(p, size).await?,
        }
        Ok(())
    }

    pub async fn close_stdin(&self, p: &ProcessRef) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.close_stdin(p).await?,
            Backend::Host(h) => h.agent.close_stdin(p).await?,
        }
        Ok(())
    }

    pub async fn open_stdio(&self, p: &ProcessRef, k: StreamKind) -> anyhow::Result<UnixStream> {
        Ok(match self {
            Backend::Vm(s) => s.open_stdio(p, k).await?,
            Backend::Host(h) => h.agent.open_stdio(p, k).await?,
        })
    }

    pub async fn remove(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.remove_container(id).await?,
            Backend::Host(h) => h.agent.remove_container(id).await?,
        }
        Ok(())
    }

    /// Powers the VM off (or ends the host agent) and waits for it.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => {
                s.destroy().await.context("destroying the microVM")?;
            }
            Backend::Host(h) => {
                let (agent, child) = (&h.agent, &h.child);
                let _ = agent.destroy_sandbox(Duration::from_secs(5)).await;
                let mut child = child.lock().await;
                match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        log::warn!("the host agent did not exit; killing it");
                        let _ = child.kill().await;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Splits the sandbox start into launch (virtiofsd), VMM start, kernel boot and agent
/// start for the timing log, from the VMM's log and the guest console.
fn record_boot(sandbox: &Sandbox, total: Duration) {
    use crate::timings;
    let dir = sandbox.run_dir();
    // The VMM's age now, taken from the whole start: when it was launched.
    let launch = timings::process_age(sandbox.vmm_pid()).and_then(|age| total.checked_sub(age));
    let split = timings::split_boot(
        total,
        launch,
        &timings::read_log(&dir.join("vmm.log")),
        &timings::read_log(&dir.join("console.log")),
    );
    timings::mark_parts(&[
        ("vm-launch", split.launch),
        ("vmm-start", split.vmm_start),
        ("kernel-boot", split.kernel_boot),
        ("agent-ready", split.agent_ready),
    ]);
}
