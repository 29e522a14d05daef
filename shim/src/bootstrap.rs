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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::util::write_str_to_file;
use containerd_shim::{api, Config, Flags, StartOpts};

use crate::config::ShimConfig;
use crate::events::ContainerdEvents;
use crate::pod::{self, Role};
use crate::process::VM_GONE_EXIT_STATUS;
use crate::runtime::Runtime;
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

/// The `containerd-shim` crate's options for this shim: our log level; no reaping of
/// arbitrary children (tokio reaps the VMM and virtiofsd itself) and no subreaper.
pub fn shim_options(config: &Result<ShimConfig, String>) -> Config {
    Config {
        default_log_level: config
            .as_ref()
            .map(|c| c.log_level.clone())
            .unwrap_or_else(|_| "info".into()),
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
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
        BulkheadShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            config: ShimConfig::load().map_err(|e| error_chain(&e)),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // Containers of one sandbox get one shim: same grouping id, same socket.
        let annotations = pod::read_spec(&self.bundle)
            .map(|s| pod::annotations(&s))
            .unwrap_or_default();
        let grouping = pod::grouping_id(&opts.id, &annotations);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<api::DeleteResponse> {
        delete_progress(&format!("delete {} in {}", self.id, self.namespace));
        let config = self.config.clone().unwrap_or_default();
        let spec = pod::read_spec(&self.bundle).ok();
        let annotations = spec.as_ref().map(pod::annotations).unwrap_or_default();
        let role = pod::classify(&self.id, &annotations);
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
        let runtime = Runtime::new(
            self.config.clone(),
            &self.namespace,
            events,
            self.exit.clone(),
        );
        TaskService::new(runtime)
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// One line on stderr with the wall-clock time: containerd shows a failed `delete`'s
/// stderr in its log, which is how a slow or stuck clean-up can be told apart.
fn delete_progress(what: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("{}.{:03} {what}", now.as_secs(), now.subsec_millis());
}

/// Removes what a dead shim left for container `id`. Blocking.
pub fn clean_up(config: &ShimConfig, namespace: &str, id: &str, role: &Role) -> Result<(), String> {
    let run_dir = pod::run_dir(config, namespace, role.sandbox_id());
    match role {
        Role::Owner { .. } => {
            // containerd gives this action 5 s in all. A SIGKILLed VMM can take a while to
            // end (the kernel tears its guest memory down first), and nothing needs it gone
            // before the mounts are detached and the files removed: kill, clean, then wait.
            delete_progress(&format!("killing what uses {}", run_dir.display()));
            let killed = kill_processes_using(&run_dir);
            delete_progress(&format!("killed {killed:?}; removing mounts and files"));
            let removed = crate::mounts::remove(&run_dir).map_err(|e| error_chain(&e));
            if !killed.is_empty() {
                let left = wait_gone(&killed, Duration::from_secs(3));
                log::info!(
                    "killed {killed:?} left over from {} ({} still ending)",
                    run_dir.display(),
                    left.len()
                );
            }
            removed
        }
        Role::Member { .. } => {
            crate::mounts::remove(&run_dir.join("shared").join(id)).map_err(|e| error_chain(&e))
        }
    }
}

/// Whether a command line (NUL-separated arguments) names a path inside `dir`.
pub fn cmdline_refers_to(cmdline: &[u8], dir: &Path) -> bool {
    let mut prefix = dir.as_os_str().as_encoded_bytes().to_vec();
    if prefix.is_empty() {
        return false;
    }
    if prefix.last() != Some(&b'/') {
        prefix.push(b'/');
    }
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.windows(prefix.len()).any(|w| w == prefix.as_slice()))
}

/// SIGKILLs every process whose command line names a path inside `dir` (the VMM and
/// virtiofsd of a sandbox); returns their pids.
pub fn kill_processes_using(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline_refers_to(&cmdline, dir) {
            // SAFETY: kill takes plain integers.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed.push(pid);
            }
        }
    }
    killed
}

/// Waits until none of `pids` runs, at most `limit`; returns those still running.
pub fn wait_gone(pids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` still runs (a zombie has exited).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // The state follows the last ')' (the command name may contain one).
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_that_name_the_run_dir() {
        let dir = Path::new("/run/bulkhead/default/c1");
        let vmm = b"bulkhead-vmm\0--kernel\0/k\0--vsock\0/run/bulkhead/default/c1/vsock.sock\0";
        let fsd = b"virtiofsd\0--socket-path=/run/bulkhead/default/c1/fs.sock\0--shared-dir=/run/bulkhead/default/c1/shared\0";
        let other = b"bulkhead-vmm\0--vsock\0/run/bulkhead/default/c10/vsock.sock\0";
        assert!(cmdline_refers_to(vmm, dir));
        assert!(cmdline_refers_to(fsd, dir));
        assert!(!cmdline_refers_to(other, dir));
        assert!(!cmdline_refers_to(b"sleep\0x\0", dir));
        assert!(!cmdline_refers_to(vmm, Path::new("")));
    }

    #[test]
    fn leftover_processes_are_killed_and_their_directory_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let config = ShimConfig {
            run_root: tmp.path().to_path_buf(),
            ..Default::default()
        };
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

    #[test]
    fn a_members_cleanup_removes_only_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let config = ShimConfig {
            run_root: tmp.path().to_path_buf(),
            ..Default::default()
        };
        let run_dir = pod::run_dir(&config, "k8s.io", "pod1");
        std::fs::create_dir_all(run_dir.join("shared/web/rootfs")).unwrap();
        std::fs::create_dir_all(run_dir.join("shared/pod1/rootfs")).unwrap();
        let role = Role::Member {
            sandbox_id: "pod1".into(),
        };
        clean_up(&config, "k8s.io", "web", &role).unwrap();
        assert!(!run_dir.join("shared/web").exists());
        assert!(run_dir.join("shared/pod1/rootfs").exists());
        // Nothing left to clean is not an error.
        clean_up(&config, "k8s.io", "web", &role).unwrap();
    }
}
