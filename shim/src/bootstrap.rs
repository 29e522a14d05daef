//! The shim binary's three lives, as containerd starts them (the `containerd-shim` crate
//! parses the flags and runs the ttrpc server):
//!
//! - `start`: pick the shim socket by sandbox (containers of one pod share a shim and a
//!   VM), start the serving shim if that socket is not served yet, print its address;
//! - serve: the Task service ([`crate::service::TaskService`]) until Shutdown;
//! - `delete`: the shim died; remove what it left for this container: for the VM's owner
//!   the VMM and virtiofsd (found by their command lines naming the sandbox's run
//!   directory), every mount below that directory and the directory; for a pod member its
//!   directory below the shared one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bulkhead_protocol::types::validate_container_id;
use bulkhead_sandbox::leftovers;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::util::write_str_to_file;
use containerd_shim::{api, Config, Flags, StartOpts};

use crate::config::ShimConfig;
use crate::error::ShimError;
use crate::pod::{self, Role};
use crate::pod_core::PodCore;
use crate::process::VM_GONE_EXIT_STATUS;
use crate::publisher::ContainerdEvents;
use crate::service::TaskService;
use crate::translate;

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.bulkhead.v2";

pub struct BulkheadShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    config: Result<ShimConfig, String>,
    exit: Arc<ExitSignal>,
}

/// The `containerd-shim` crate's options for this shim: our own logger ([`init_logging`]);
/// no reaping of arbitrary children (tokio reaps the VMM and virtiofsd itself) and no
/// subreaper.
pub fn shim_options() -> Config {
    Config {
        no_setup_logger: true,
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// The shim's logger, in the one format of every Bulkhead binary (crate `bulkhead-log`).
/// The serving shim writes to the `log` FIFO containerd opened in the bundle directory (its
/// working directory), whose lines containerd copies into its own log; `delete` writes to
/// stderr, which containerd logs when the action fails; `start` logs nothing (containerd
/// reads the socket address from its output). Level: `RUST_LOG`, else the configuration's
/// `log_level`, at least debug with containerd's `-debug`. Format: the configuration's
/// `log_format` (which `BULKHEAD_LOG_FORMAT` overrides), else `BULKHEAD_LOG_FORMAT`.
fn init_logging(flags: &Flags, config: &Result<ShimConfig, String>) {
    let target = match flags.action.as_str() {
        "start" => return,
        "delete" => bulkhead_log::Target::Stderr,
        _ => match std::fs::OpenOptions::new().write(true).open("log") {
            Ok(fifo) => bulkhead_log::Target::Writer(Box::new(fifo)),
            Err(_) => bulkhead_log::Target::Stderr,
        },
    };
    let configured = config.as_ref().ok();
    let mut level = std::env::var(containerd_shim::logger::LOG_ENV)
        .ok()
        .and_then(|l| l.parse().ok())
        .or_else(|| configured.map(|c| c.config.log_level))
        .unwrap_or(log::LevelFilter::Info);
    if flags.debug {
        level = level.max(log::LevelFilter::Debug);
    }
    let format = configured.map(|c| c.config.log_format).unwrap_or_else(|| {
        bulkhead_log::Format::from_env()
            .ok()
            .flatten()
            .unwrap_or_default()
    });
    bulkhead_log::Logger::new("containerd-shim-bulkhead-v2", level)
        .format(format)
        .target(target)
        .init();
}

#[async_trait]
impl Shim for BulkheadShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        let config = ShimConfig::load().map_err(|e| error_chain(&e));
        init_logging(args, &config);
        BulkheadShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            config,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // Containers of one sandbox get one shim: same grouping id, same socket.
        let annotations = pod::read_spec(&self.bundle)
            .map(|s| pod::annotations(&s))
            .unwrap_or_default();
        let grouping = pod::grouping_id(&opts.id, &annotations)
            .map_err(|e| containerd_shim::Error::InvalidArgument(e.message()))?;
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<api::DeleteResponse> {
        delete_progress(&format!("delete {} in {}", self.id, self.namespace));
        // The run root, even when the VM's files cannot be found.
        // The handler's own file when Create was given one (runtime option ConfigPath).
        let config = match pod::recorded_config_path(&self.bundle) {
            Some(path) => ShimConfig::load_file_lenient(&path).unwrap_or_else(|e| {
                log::warn!("delete {}: {}", self.id, error_chain(&e));
                ShimConfig::load_lenient()
            }),
            None => self
                .config
                .clone()
                .unwrap_or_else(|_| ShimConfig::load_lenient()),
        };
        let spec = pod::read_spec(&self.bundle).ok();
        let annotations = spec.as_ref().map(pod::annotations).unwrap_or_default();
        // Every id that becomes a path below is checked (classify: the container's and the
        // sandbox id of its annotations).
        let role = pod::classify(&self.id, &annotations).and_then(|role| {
            validate_container_id(&self.namespace)
                .map(|()| role)
                .map_err(|e| ShimError::InvalidArgument(format!("namespace: {e}")))
        });
        let role = match role {
            Ok(role) => role,
            Err(e) => {
                log::error!("delete {}: {}", self.id, e.message());
                return Err(containerd_shim::Error::InvalidArgument(e.message()));
            }
        };
        let namespace = self.namespace.clone();
        let id = self.id.clone();
        let cleaned =
            tokio::task::spawn_blocking(move || clean_up(&config, &namespace, &id, &role)).await;
        match cleaned {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("delete {}: {e}", self.id),
            Err(e) => log::warn!("delete {}: {e}", self.id),
        }
        let mut r = api::DeleteResponse::new();
        r.exit_status = VM_GONE_EXIT_STATUS;
        r.exited_at = containerd_shim_protos::protobuf::MessageField::some(translate::timestamp(
            SystemTime::now(),
        ));
        Ok(r)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let events = Arc::new(ContainerdEvents::new(publisher, &self.namespace));
        let core = PodCore::new(
            self.config.clone(),
            &self.namespace,
            events,
            self.exit.clone(),
        );
        TaskService::new(core)
    }
}

/// An error and its causes on one line (the one helper of every binary).
pub use bulkhead_log::error_chain;

/// One line on stderr with the wall-clock time: containerd shows a failed `delete`'s
/// stderr in its log, which is how a slow or stuck clean-up can be told apart.
fn delete_progress(what: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("{}.{:03} {what}", now.as_secs(), now.subsec_millis());
}

/// How long [`clean_up`] may take: containerd kills a `delete` action after 5 s, and the
/// process spends some of that starting.
const DELETE_BUDGET: Duration = Duration::from_millis(3500);

/// Removes what a dead shim left for container `id`. Blocking.
pub fn clean_up(config: &ShimConfig, namespace: &str, id: &str, role: &Role) -> Result<(), String> {
    let began = Instant::now();
    let run_dir = pod::run_dir(config, namespace, role.sandbox_id());
    match role {
        Role::Owner { .. } => {
            // containerd gives this action 5 s in all. A SIGKILLed VMM can take a while to
            // end (the kernel tears its guest memory down first), and nothing needs it gone
            // before the mounts are detached and the files removed: kill, clean, then wait.
            delete_progress(&format!("killing what uses {}", run_dir.display()));
            let killed = leftovers::kill_processes_using(&run_dir);
            delete_progress(&format!("killed {killed:?}; removing mounts and files"));
            let removed = crate::mounts::remove(&run_dir).map_err(|e| error_chain(&e));
            // What is left of containerd's 5 s (the process started a little before this
            // function): the killed processes may end, their cgroups may go.
            let deadline = began + DELETE_BUDGET;
            if !killed.is_empty() {
                let left = leftovers::wait_gone(
                    &killed,
                    deadline.saturating_duration_since(Instant::now()),
                );
                log::info!(
                    "killed {killed:?} left over from {} ({} still ending)",
                    run_dir.display(),
                    left.len()
                );
            }
            // The sandbox's cgroups (the dead shim could not remove them); a cgroup empties
            // only once its killed processes have ended.
            if let Some(parent) = config.config.jail.settings().and_then(|j| j.cgroup_parent) {
                let name = pod::vm_name(role.sandbox_id());
                use bulkhead_sandbox::jail::cgroup::{left_behind, remove_left_behind};
                loop {
                    for dir in remove_left_behind(&parent, &name) {
                        log::info!("removed the cgroup {} left over", dir.display());
                    }
                    let left = left_behind(&parent, &name);
                    if left.is_empty() || Instant::now() >= deadline {
                        if !left.is_empty() {
                            log::warn!("cgroups still busy, left: {left:?}");
                        }
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // The dead shim's jail uid: its lock went with the shim, its file did not.
            if let Some(jail) = config.config.jail.settings() {
                let ids = bulkhead_sandbox::jail::ids::remove_stale(&jail.ids_dir);
                if !ids.is_empty() {
                    log::info!("released the jail uids {ids:?} left over");
                }
            }
            delete_progress("done");
            removed
        }
        Role::Member { .. } => {
            // A member's directory is on the host's side of the share (the guest's view is
            // read-only).
            crate::mounts::remove(&run_dir.join("share").join(id)).map_err(|e| error_chain(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn leftover_processes_are_killed_and_their_directory_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = ShimConfig::default();
        config.config.run_root = tmp.path().to_path_buf();
        let run_dir = pod::run_dir(&config, "default", "c1");
        std::fs::create_dir_all(run_dir.join("shared/c1/rootfs")).unwrap();
        std::fs::write(run_dir.join("console.log"), "boot\n").unwrap();
        // A stand-in for the VMM: its command line names a file in the run directory.
        let sock = run_dir.join("vsock.sock");
        let mut vmm = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 60; : \"$0\"")
            .arg(&sock)
            .spawn()
            .unwrap();
        let mut bystander = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        // Let the child exec so that /proc shows its final command line.
        std::thread::sleep(Duration::from_millis(100));

        let role = Role::Owner {
            sandbox_id: "c1".into(),
            cri: false,
        };
        let start = Instant::now();
        clean_up(&config, "default", "c1", &role).unwrap();
        let status = vmm.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(!run_dir.exists());
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "an unrelated process was killed"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    fn shim(
        run_root: &std::path::Path,
        bundle: PathBuf,
        id: &str,
        namespace: &str,
    ) -> BulkheadShim {
        let mut config = ShimConfig::default();
        config.config.run_root = run_root.to_path_buf();
        BulkheadShim {
            namespace: namespace.into(),
            id: id.into(),
            bundle,
            config: Ok(config),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    #[tokio::test]
    async fn delete_refuses_a_sandbox_id_that_is_no_id() {
        let tmp = tempfile::tempdir().unwrap();
        let run_root = tmp.path().join("run");
        // What `<run_root>/default/../../victim` names: outside the run root.
        let victim = tmp.path().join("victim/shared/web");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("precious"), "keep").unwrap();
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let spec = serde_json::json!({"annotations": {
            pod::ANNOTATION_CONTAINER_TYPE: "container",
            pod::ANNOTATION_SANDBOX_ID: "../../victim",
        }});
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();

        let r = shim(&run_root, bundle.clone(), "web", "default")
            .delete_shim()
            .await;
        assert!(
            matches!(r, Err(containerd_shim::Error::InvalidArgument(_))),
            "{r:?}"
        );
        assert!(
            victim.join("precious").exists(),
            "deleted outside the run root"
        );

        // A namespace or container id that is no id is refused the same way.
        std::fs::write(bundle.join("config.json"), "{}").unwrap();
        for (id, ns) in [("web", "../.."), ("../../victim/shared/web", "default")] {
            let r = shim(&run_root, bundle.clone(), id, ns).delete_shim().await;
            assert!(r.is_err(), "{id} in {ns}: {r:?}");
        }
        assert!(victim.join("precious").exists());

        // A valid member's delete still works.
        let member = run_root.join("default/pod1/share/web");
        std::fs::create_dir_all(&member).unwrap();
        let spec = serde_json::json!({"annotations": {
            pod::ANNOTATION_CONTAINER_TYPE: "container",
            pod::ANNOTATION_SANDBOX_ID: "pod1",
        }});
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        shim(&run_root, bundle, "web", "default")
            .delete_shim()
            .await
            .unwrap();
        assert!(!member.exists());
    }

    #[test]
    fn a_members_cleanup_removes_only_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = ShimConfig::default();
        config.config.run_root = tmp.path().to_path_buf();
        let run_dir = pod::run_dir(&config, "k8s.io", "pod1");
        std::fs::create_dir_all(run_dir.join("share/web/rootfs")).unwrap();
        std::fs::create_dir_all(run_dir.join("share/pod1/rootfs")).unwrap();
        let role = Role::Member {
            sandbox_id: "pod1".into(),
        };
        clean_up(&config, "k8s.io", "web", &role).unwrap();
        assert!(!run_dir.join("share/web").exists());
        assert!(run_dir.join("share/pod1/rootfs").exists());
        // Nothing left to clean is not an error.
        clean_up(&config, "k8s.io", "web", &role).unwrap();
    }
}
