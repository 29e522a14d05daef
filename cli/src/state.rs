//! Container state on disk: `<run_root>/containers/<id>/` with `state.json` (written
//! atomically), the output log, the supervisor's log and control socket, and the overlay
//! upper/work directories. Ids, names, lookup by id prefix or name, liveness of the
//! supervisor, and removal that leaves no mount or file behind.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::network::NetworkMode;
use crate::spec::Volume;
use bulkhead_sandbox::network::cni::{Attachment, PortMapping};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A microVM per container (its own guest kernel).
    Vm,
    /// Namespaces and cgroups on the host kernel.
    Container,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Vm => "vm",
            Isolation::Container => "container",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being set up (image, rootfs, VM boot).
    Created,
    Running,
    Exited,
}

/// What `run` asked for; the supervisor builds the container from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
    pub tty: bool,
    pub interactive: bool,
    pub detach: bool,
    pub auto_remove: bool,
    pub read_only: bool,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub volumes: Vec<Volume>,
    /// `--network`.
    #[serde(default)]
    pub network: NetworkMode,
    /// `-p`: ports published on the host (bridge network).
    #[serde(default)]
    pub publish: Vec<PortMapping>,
    /// `--privileged`, `--security-opt`, `--cap-add`, `--cap-drop`.
    #[serde(default)]
    pub security: crate::security::SecurityOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub name: String,
    pub isolation: Isolation,
    pub image_digest: String,
    pub config: RunConfig,
    /// The process actually run (image defaults + overrides), once known.
    pub command: Vec<String>,
    pub status: Status,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub exit_code: Option<i32>,
    /// Why the container ended other than by its own exit (VM crash, ...).
    pub error: Option<String>,
    pub supervisor_pid: Option<u32>,
    /// `/proc/<pid>/stat` start time of the supervisor (pids get reused).
    pub supervisor_start: Option<u64>,
    pub vmm_pid: Option<u32>,
    /// VM mode: the sandbox run directory (VMM, virtiofsd, shared dir).
    pub sandbox_dir: Option<PathBuf>,
    /// The container's CNI attachment, from before the first plugin runs until DEL
    /// succeeded (what `rm` releases after a crash).
    #[serde(default)]
    pub network: Option<Attachment>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random 64-hex-digit container id.
pub fn new_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut bytes).context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as Docker.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if !ok {
        bail!("invalid container name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit");
    }
    Ok(())
}

/// A generated name: `bulkhead-` and 8 hex digits of the id.
pub fn default_name(id: &str) -> String {
    format!("bulkhead-{}", id.get(..8).unwrap_or(id))
}

/// The directory of all containers.
#[derive(Debug, Clone)]
pub struct Containers {
    root: PathBuf,
}

/// Holds `<root>/.lock` (creation, naming and removal are serialised).
pub struct Lock(#[allow(dead_code)] fs::File);

impl Containers {
    pub fn new(root: PathBuf) -> Self {
        Containers { root }
    }

    pub fn lock(&self) -> anyhow::Result<Lock> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))
            .context("opening the containers lock")?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("locking the containers directory");
        }
        Ok(Lock(f))
    }

    pub fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir {
            path: self.root.join(id),
        }
    }

    /// Every container with a readable state, oldest first.
    pub fn list(&self) -> Vec<State> {
        let mut out: Vec<State> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| ContainerDir { path: e.path() }.read().ok())
            .collect();
        out.sort_by_key(|s| (s.created_at, s.id.clone()));
        out
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn find(&self, what: &str) -> anyhow::Result<State> {
        let all = self.list();
        if let Some(s) = all.iter().find(|s| s.name == what || s.id == what) {
            return Ok(s.clone());
        }
        let hits: Vec<&State> = all.iter().filter(|s| s.id.starts_with(what)).collect();
        match hits.as_slice() {
            [one] if !what.is_empty() => Ok((*one).clone()),
            [] | [_] => bail!("no such container: {what}"),
            _ => bail!("container id prefix {what:?} is ambiguous"),
        }
    }

    pub fn name_in_use(&self, name: &str) -> Option<State> {
        self.list().into_iter().find(|s| s.name == name)
    }
}

/// One container's directory.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    pub path: PathBuf,
}

impl ContainerDir {
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub fn log_file(&self) -> PathBuf {
        self.path.join("container.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.path.join("supervisor.log")
    }
    /// Unix socket paths are limited to 108 bytes: sockets live in a short directory,
    /// `<containers>/.s/<first 16 digits of the id>/`.
    pub fn socket_dir(&self) -> PathBuf {
        let id = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let short = id.get(..16).unwrap_or(&id).to_owned();
        let root = self.path.parent().unwrap_or(&self.path);
        root.join(".s").join(short)
    }
    pub fn control_socket(&self) -> PathBuf {
        self.socket_dir().join("control.sock")
    }
    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }
    /// Container mode: the overlay mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    pub fn create(&self, state: &State) -> anyhow::Result<()> {
        fs::create_dir(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        self.write(state)
    }

    pub fn read(&self) -> anyhow::Result<State> {
        let p = self.state_file();
        let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))
    }

    /// Writes `state.json` atomically.
    pub fn write(&self, state: &State) -> anyhow::Result<()> {
        let tmp = self.path.join(".state.json.tmp");
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(state)?)?;
        f.sync_all().ok();
        fs::rename(&tmp, self.state_file()).context("replacing state.json")?;
        Ok(())
    }

    /// Reads, changes and writes the state.
    pub fn update(&self, f: impl FnOnce(&mut State)) -> anyhow::Result<State> {
        let mut s = self.read()?;
        f(&mut s);
        self.write(&s)?;
        Ok(s)
    }

    /// Unmounts whatever is left below the directory and deletes it (never crossing into
    /// another filesystem).
    pub fn remove(&self) -> anyhow::Result<()> {
        bulkhead_sandbox::run_dir::remove_tree(&self.socket_dir())
            .with_context(|| format!("removing {}", self.socket_dir().display()))?;
        bulkhead_sandbox::run_dir::remove_tree(&self.path)
            .with_context(|| format!("removing {}", self.path.display()))
    }
}

pub use bulkhead_sandbox::leftovers::process_start_time;

impl State {
    /// Whether the supervisor recorded in the state is still that process.
    pub fn supervisor_alive(&self) -> bool {
        match (self.supervisor_pid, self.supervisor_start) {
            (Some(pid), Some(start)) => process_start_time(pid) == Some(start),
            _ => false,
        }
    }

    /// `running` only while the supervisor lives; a dead supervisor of a running
    /// container shows as `dead`.
    pub fn display_status(&self) -> String {
        match self.status {
            Status::Running if self.supervisor_alive() => "running".into(),
            Status::Running | Status::Created if !self.supervisor_alive() => "dead".into(),
            Status::Created => "created".into(),
            Status::Running => "running".into(),
            Status::Exited => match self.exit_code {
                Some(c) => format!("exited ({c})"),
                None => "exited".into(),
            },
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.status, Status::Running | Status::Created) && self.supervisor_alive()
    }
}

/// An exited container state for tests: isolation container, exit code 3.
#[cfg(test)]
pub(crate) fn test_state(id: &str, name: &str) -> State {
    State {
        id: id.into(),
        name: name.into(),
        isolation: Isolation::Container,
        image_digest: String::new(),
        config: RunConfig::default(),
        command: vec![],
        status: Status::Exited,
        created_at: 1,
        started_at: None,
        finished_at: None,
        exit_code: Some(3),
        error: None,
        supervisor_pid: None,
        supervisor_start: None,
        vmm_pid: None,
        sandbox_dir: None,
        network: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        validate_name("web-1.a_b").unwrap();
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, new_id().unwrap());
        assert_eq!(default_name(&id).len(), "bulkhead-".len() + 8);
    }

    #[test]
    fn find_by_name_id_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let c = Containers::new(dir.path().to_path_buf());
        let _l = c.lock().unwrap();
        c.dir("abc123")
            .create(&test_state("abc123", "one"))
            .unwrap();
        c.dir("abd456")
            .create(&test_state("abd456", "two"))
            .unwrap();
        assert_eq!(c.find("one").unwrap().id, "abc123");
        assert_eq!(c.find("abd456").unwrap().name, "two");
        assert_eq!(c.find("abc").unwrap().id, "abc123");
        assert!(c.find("ab").is_err());
        assert!(c.find("zzz").is_err());
        assert!(c.name_in_use("two").is_some());
        let s = c.dir("abc123").update(|s| s.exit_code = Some(7)).unwrap();
        assert_eq!(c.find("one").unwrap(), s);
        assert_eq!(s.display_status(), "exited (7)");
        c.dir("abc123").remove().unwrap();
        assert_eq!(c.list().len(), 1);
    }

    #[test]
    fn liveness_uses_the_start_time() {
        let me = std::process::id();
        let mut s = test_state("x", "x");
        s.status = Status::Running;
        s.supervisor_pid = Some(me);
        s.supervisor_start = process_start_time(me);
        assert!(s.supervisor_alive() && s.is_running());
        s.supervisor_start = s.supervisor_start.map(|t| t + 1);
        assert!(!s.supervisor_alive());
        assert_eq!(s.display_status(), "dead");
    }
}
