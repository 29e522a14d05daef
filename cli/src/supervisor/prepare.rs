//! Set-up of one container before it starts: the backend (microVM or host agent), the
//! image overlay where that backend can see it, volumes, and the OCI spec.

use std::path::PathBuf;

use anyhow::Context;
use bulkhead_images::process::{ProcessOverrides, UserDb};
use bulkhead_images::Store;
use bulkhead_sandbox::cgroup::{self, Cgroup2};
use bulkhead_sandbox::mount;
use oci_spec::runtime::Spec;

use crate::backend::{Backend, VmRequest};
use crate::config::Config;
use crate::network::{self, NetworkMode};
use crate::spec::{self, SpecInput, SpecNetwork, Volume};
use crate::state::{ContainerDir, Isolation, State};
use crate::supervisor::Reporter;
use crate::timings;

/// What was set up, for the run and the teardown.
pub struct Prepared {
    pub backend: Backend,
    pub spec: Spec,
    /// The root path as the runtime sees it (guest path in VM mode).
    pub runtime_rootfs: PathBuf,
    pub users: UserDb,
    /// Host mount points to detach at the end, deepest first.
    pub mounts: Vec<PathBuf>,
}

/// Mounts made so far, undone when set-up fails half way.
#[derive(Default)]
pub struct Mounts(pub Vec<PathBuf>);

impl Mounts {
    pub fn unmount_all(&mut self) {
        for m in self.0.drain(..).rev() {
            if let Err(e) = mount::unmount(&m) {
                log::warn!("{:#}", anyhow::Error::new(e));
            }
        }
    }
}

/// A cgroup v2 controller usable by containers on this host (the host agent binds the
/// cgroup2 hierarchy on /sys/fs/cgroup in its own mount namespace).
fn host_controller(name: &str) -> bool {
    Cgroup2::find().is_some_and(|cg| cg.has_controller(name))
}

pub async fn prepare(
    cfg: &Config,
    store: &Store,
    dir: &ContainerDir,
    state: &State,
    report: &Reporter,
    mounts: &mut Mounts,
) -> anyhow::Result<Prepared> {
    let rc = &state.config;
    // The image `run` leased for this container, even if its name was pulled again since.
    let rec = match store.leased_image(&state.id)? {
        Some(rec) => rec,
        None => store
            .get_image(&rc.image)
            .with_context(|| format!("image {} (pull or import it first)", rc.image))?,
    };
    let image = store.image_config(&rec)?;
    report.progress("preparing the root filesystem...");
    let lowers = {
        let store = store.clone();
        let rec = rec.clone();
        let limits = crate::config::image_limits(cfg);
        tokio::task::spawn_blocking(move || bulkhead_images::rootfs_layers(&store, &rec, &limits))
            .await
            .context("unpacking layers")??
    };
    timings::mark("image");
    if rc.network != NetworkMode::Host {
        report.progress(&format!("setting up the {} network...", rc.network));
    }
    // Before the backend starts: the host agent's mount namespace and the VMM's jail must
    // see the namespace's bind mount.
    let net = network::setup(cfg, dir, state).await?;
    timings::mark("network");
    let etc_files = |at: &std::path::Path| -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
        match (&net.attachment, rc.network) {
            (Some(att), NetworkMode::Bridge) => network::write_etc_files(at, &rc.hostname, att),
            _ => Ok(Vec::new()),
        }
    };

    let mut cpu_millis = rc.cpu_millis;
    let mut memory_bytes = rc.memory_bytes;
    let (backend, host_rootfs, runtime_rootfs, volumes, cgroups_path) = match state.isolation {
        Isolation::Container => {
            let target = dir.rootfs();
            mount::mount_overlay(
                &lowers,
                &dir.upper(),
                &dir.work(),
                &target,
                mount::OverlayUse::HostContainer,
            )?;
            mounts.0.push(target.clone());
            timings::mark("rootfs");
            if memory_bytes.is_some() && !host_controller("memory") {
                log::warn!("the memory controller is not available in this host's cgroup v2 hierarchy: --memory is not enforced");
                report.progress("warning: --memory is not enforced (no cgroup v2 memory controller on this host)");
                memory_bytes = None;
            }
            if cpu_millis.is_some() && !host_controller("cpu") {
                report.progress(
                    "warning: --cpus is not enforced (no cgroup v2 cpu controller on this host)",
                );
                cpu_millis = None;
            }
            let backend = Backend::start_host(dir, &cfg.log_level_name()).await?;
            timings::mark("agent-start");
            let cg = cgroup::container_cgroups_path(&state.id);
            let mut volumes = rc.volumes.clone();
            for (host, container) in etc_files(&dir.path.join("etc"))? {
                volumes.push(Volume {
                    host,
                    container,
                    readonly: false,
                });
            }
            (backend, target.clone(), target, volumes, Some(cg))
        }
        Isolation::Vm => {
            report.progress("booting microVM...");
            let backend = Backend::start_vm(
                cfg,
                &VmRequest {
                    id: &state.id,
                    hostname: &rc.hostname,
                    cpu_millis,
                    memory_bytes,
                    netns: net.netns.clone(),
                },
            )
            .await?;
            let shared = backend
                .shared_dir()
                .context("the microVM has no shared directory")?;
            let cdir = shared.join(&state.id);
            let target = cdir.join("rootfs");
            mount::mount_overlay(
                &lowers,
                &dir.upper(),
                &dir.work(),
                &target,
                mount::OverlayUse::Guest,
            )?;
            mounts.0.push(target.clone());
            let mut volumes = Vec::new();
            for (i, v) in rc.volumes.iter().enumerate() {
                let at = cdir.join("volumes").join(i.to_string());
                mount::bind(&v.host, &at, v.readonly)?;
                mounts.0.push(at.clone());
                volumes.push(Volume {
                    host: backend
                        .guest_path(&at)
                        .context("volume outside the shared directory")?,
                    container: v.container.clone(),
                    readonly: v.readonly,
                });
            }
            for (host, container) in etc_files(&cdir.join("etc"))? {
                volumes.push(Volume {
                    host: backend
                        .guest_path(&host)
                        .context("/etc file outside the shared directory")?,
                    container,
                    readonly: false,
                });
            }
            let guest_root = backend
                .guest_path(&target)
                .context("rootfs outside the shared directory")?;
            (backend, target, guest_root, volumes, None)
        }
    };
    let users = spec::user_db(&host_rootfs);
    let input = SpecInput {
        overrides: ProcessOverrides {
            entrypoint: rc.entrypoint.clone(),
            cmd: rc.cmd.clone(),
            env: rc.env.clone(),
            workdir: rc.workdir.clone(),
            user: rc.user.clone(),
            terminal: rc.tty,
        },
        hostname: rc.hostname.clone(),
        readonly_root: rc.read_only,
        cpu_millis,
        memory_bytes,
        network: match (state.isolation, &net.netns) {
            (Isolation::Container, Some(path)) => SpecNetwork::Join(path.clone()),
            (Isolation::Container, None) => SpecNetwork::Shared,
            // In a VM the guest's network is the container's. With none the VM has no NIC,
            // so sharing it leaves the container loopback only, which the agent has
            // brought up (a private namespace in the guest would have its lo down).
            (Isolation::Vm, _) => SpecNetwork::Shared,
        },
        cgroups_path,
        volumes,
        security: rc.security.clone(),
        privileged_devices: match (state.isolation, rc.security.privileged) {
            (Isolation::Container, true) => {
                crate::security::host_devices(std::path::Path::new("/dev"))
            }
            _ => Vec::new(),
        },
    };
    let spec = spec::build(&image, &input, &users, &runtime_rootfs)?;
    if state.isolation == Isolation::Vm {
        timings::mark("rootfs");
    }
    Ok(Prepared {
        backend,
        spec,
        runtime_rootfs,
        users,
        mounts: std::mem::take(&mut mounts.0),
    })
}
