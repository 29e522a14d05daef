//! Where a container runs: in a microVM (`bulkhead-sandbox`: VMM, virtiofsd, agent over
//! hybrid vsock) or on the host (the same agent binary, `bulkhead-agent`, run as a child
//! process of the supervisor by `bulkhead_sandbox::host_agent`, reached over unix
//! sockets). Both are driven through the agent API, so the container code and the spec are
//! the same in both modes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bulkhead_sandbox::host_agent::{self, HostAgent, HostAgentConfig};
use bulkhead_sandbox::{
    naming, propagation, sizing, ContainerConfig, ExecConfig, ExitInfo, PodResources, ProcessRef,
    Sandbox, StreamKind, VmSize, WinSize,
};
use tokio::net::UnixStream;

use crate::config::{Config, RunLayout};
use crate::state::ContainerDir;

pub enum Backend {
    Vm(Box<Sandbox>),
    Host(Box<HostAgent>),
}

/// Sizing and naming of a VM.
pub struct VmRequest<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// The network namespace the VM's NIC is wired into (`--network bridge`); `None`: no
    /// NIC.
    pub netns: Option<PathBuf>,
}

/// The VM size: the configured default without limits, the sandbox sizing rule with them.
pub fn vm_size(cfg: &Config, cpu_millis: Option<u64>, memory_bytes: Option<u64>) -> VmSize {
    let host_cpus = sizing::host_cpus();
    let resources = PodResources {
        cpu_millis,
        memory_bytes,
    };
    cfg.vm_size(&resources, host_cpus)
}

impl Backend {
    /// Boots the microVM and connects to its agent.
    pub async fn start_vm(cfg: &Config, req: &VmRequest<'_>) -> anyhow::Result<Backend> {
        let files = cfg
            .vm_files()
            .context("the microVM's files (see `bulkhead check`)")?;
        if !files.kernel.exists() {
            bail!(
                "guest kernel {} not found (see `bulkhead check`)",
                files.kernel.display()
            );
        }
        if let Some(initrd) = files.initrd.as_ref().filter(|i| !i.exists()) {
            bail!(
                "agent initramfs {} not found (build it with guest-agent/build-initramfs.sh; see `bulkhead check`)",
                initrd.display()
            );
        }
        if files.virtiofsd.is_none() {
            bail!("virtiofsd.binary is \"\": a container's root filesystem needs virtiofsd");
        }
        let run_root = cfg.sandboxes_dir();
        {
            let run_root = run_root.clone();
            tokio::task::spawn_blocking(move || propagation::ensure_shared(&run_root))
                .await
                .context("making the run root a shared mount")?
                .context("making the run root a shared mount")?;
        }
        // The sandbox's unix sockets live below <run_root>/sandboxes/<name>/.
        let sandbox_id = &naming::sandbox_name(req.id);
        let size = vm_size(cfg, req.cpu_millis, req.memory_bytes);
        let mut sc = cfg.sandbox_config(&files, sandbox_id, &run_root, size);
        sc.hostname = Some(req.hostname.to_owned());
        sc.netns = req.netns.clone();
        let started = std::time::Instant::now();
        let sandbox = Sandbox::start(sc).await.context("starting the microVM")?;
        if crate::timings::enabled() {
            record_boot(&sandbox, started.elapsed());
        }
        Ok(Backend::Vm(Box::new(sandbox)))
    }

    /// Starts the agent binary on the host for one container and connects to it.
    pub async fn start_host(dir: &ContainerDir, log_level: &str) -> anyhow::Result<Backend> {
        let binary = host_agent::find_agent_binary()?;
        // Short: libcontainer puts console sockets below the state dir.
        let mut config = HostAgentConfig::new(
            &binary,
            &dir.socket_dir().join("agent.sock"),
            &dir.socket_dir().join("stdio.sock"),
            &dir.socket_dir().join("a"),
        );
        config.log_level = log_level.to_owned();
        config.log_file = dir.path.join("agent.log");
        let agent = HostAgent::start(&config)
            .await
            .with_context(|| format!("starting the host agent {}", binary.display()))?;
        Ok(Backend::Host(Box::new(agent)))
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
            Backend::Host(h) => h.agent().create_container(c).await?,
        })
    }

    pub async fn start(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.start_container(id).await?,
            Backend::Host(h) => h.agent().start_container(id).await?,
        }
        Ok(())
    }

    pub async fn exec(&self, c: &ExecConfig) -> anyhow::Result<u32> {
        Ok(match self {
            Backend::Vm(s) => s.exec(c).await?,
            Backend::Host(h) => h.agent().exec(c).await?,
        })
    }

    pub async fn signal(&self, p: &ProcessRef, sig: u32) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.signal(p, sig).await?,
            Backend::Host(h) => h.agent().signal(p, sig).await?,
        }
        Ok(())
    }

    pub async fn wait(&self, p: &ProcessRef) -> anyhow::Result<ExitInfo> {
        Ok(match self {
            Backend::Vm(s) => s.wait(p).await?,
            Backend::Host(h) => h.agent().wait(p).await?,
        })
    }

    pub async fn resize(&self, p: &ProcessRef, size: WinSize) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.resize(p, size).await?,
            Backend::Host(h) => h.agent().resize(p, size).await?,
        }
        Ok(())
    }

    pub async fn close_stdin(&self, p: &ProcessRef) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.close_stdin(p).await?,
            Backend::Host(h) => h.agent().close_stdin(p).await?,
        }
        Ok(())
    }

    pub async fn open_stdio(&self, p: &ProcessRef, k: StreamKind) -> anyhow::Result<UnixStream> {
        Ok(match self {
            Backend::Vm(s) => s.open_stdio(p, k).await?,
            Backend::Host(h) => h.agent().open_stdio(p, k).await?,
        })
    }

    pub async fn remove(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => s.remove_container(id).await?,
            Backend::Host(h) => h.agent().remove_container(id).await?,
        }
        Ok(())
    }

    /// Powers the VM off (or ends the host agent) and waits for it.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        match self {
            Backend::Vm(s) => {
                s.destroy().await.context("destroying the microVM")?;
            }
            Backend::Host(h) => h.stop(host_agent::DEFAULT_STOP_TIMEOUT).await,
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
