//! Test environment for the `bulkhead` binary: the demo image built once per test process
//! into a private store, a private run root per test, and command helpers.

#![allow(dead_code)]

pub mod pty;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use bulkhead_sandbox::mountinfo;

pub const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// Longest a single `bulkhead` command of a test may take (VM runs in the nested harness
/// take 15-60 s; a boot under load up to the configured 300 s).
pub const RUN_LIMIT_SECS: u64 = 600;

pub use bulkhead_test_skip::skip;

/// Root, busybox and a cgroup2 hierarchy: what container mode needs.
pub fn host_ready() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Err("needs /bin/busybox (busybox-static)".into());
    }
    if !Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.procs").exists()
    {
        return Err("needs a cgroup2 hierarchy".into());
    }
    Ok(())
}

/// VM tests run only inside the KVM harness (`BULKHEAD_IN_HARNESS=1`), then need what container
/// mode needs too.
pub fn vm_host_ready() -> Result<(), String> {
    if std::env::var("BULKHEAD_IN_HARNESS").as_deref() != Ok("1") {
        return Err("VM tests run inside the KVM harness (BULKHEAD_IN_HARNESS=1)".into());
    }
    host_ready()
}

/// What the output of `bulkhead check --json` says: Ok when this host can run microVMs, else
/// the failed VM checks as the reason.
pub fn check_says_vm_ready(check: &Output) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(&check.stdout).map_err(|e| format!("bulkhead check --json: {e}"))?;
    if v["vm_ready"] == true {
        return Ok(());
    }
    let failed: Vec<String> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["outcome"] == "fail" && c["vm"] == true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect();
    Err(format!(
        "this host cannot run microVMs: {}",
        failed.join("; ")
    ))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The directory behind [`store`], removed when the test process exits.
static STORE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_store_dir() {
    if let Some(dir) = STORE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A store with `bulkhead/demo:latest`, shared by the tests of this process (a static is
/// never dropped, so an exit handler removes it).
pub fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = STORE_DIR.get_or_init(|| {
            std::env::temp_dir().join(format!("bulkhead-cli-test-store-{}", std::process::id()))
        });
        // SAFETY: registers a plain function that only touches a static.
        let registered = unsafe { libc::atexit(remove_store_dir) };
        assert_eq!(registered, 0, "atexit failed");
        let layout = dir.join("layout");
        let out = Command::new(repo_root().join("scripts/build-demo-image.sh"))
            .arg(&layout)
            .env("BULKHEAD", BIN)
            .env("BULKHEAD_ROOT", dir.join("store"))
            .env("BULKHEAD_CONFIG", "/dev/null")
            .output()
            .expect("running build-demo-image.sh");
        assert!(
            out.status.success(),
            "build-demo-image.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("store")
    })
}

/// The bridge network of the CLI tests: its own bridge and subnet (not a real install's),
/// one IPAM store for every test process (host-local locks it), so parallel tests and
/// test binaries never get the same address.
pub const TEST_BRIDGE: &str = "bhcli0";
pub const TEST_SUBNET: &str = "10.89.251.0/24";
pub const TEST_IPAM_DIR: &str = "/run/bulkhead-cli-test-ipam";

/// Whether the CNI plugins are installed; without them the tests use `--network host`.
pub fn cni_ready() -> bool {
    ["bridge", "host-local", "portmap", "firewall", "loopback"]
        .iter()
        .all(|p| Path::new("/usr/lib/cni").join(p).exists())
}

extern "C" fn remove_test_bridge() {
    // Only when no container of another test process is on it.
    let ports = Path::new("/sys/class/net").join(TEST_BRIDGE).join("brif");
    let empty = std::fs::read_dir(&ports).is_ok_and(|mut d| d.next().is_none());
    if empty {
        let _ = Command::new("ip")
            .args(["link", "del", TEST_BRIDGE])
            .output();
        // The address store too, once it holds no lease (host-local's files named by an
        // address); what is left is its lock and last-reserved marker.
        let leases = std::fs::read_dir(Path::new(TEST_IPAM_DIR).join("bulkhead"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                    })
                    .count()
            })
            .unwrap_or(0);
        if leases == 0 {
            let _ = std::fs::remove_dir_all(TEST_IPAM_DIR);
        }
    }
}

/// One test's run root and configuration.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub isolation: &'static str,
}

impl Env {
    /// The default network: the tests' bridge when the CNI plugins are installed.
    pub fn new(isolation: &'static str) -> Env {
        Env::with_network(isolation, if cni_ready() { "bridge" } else { "host" })
    }

    /// Without a network (`network = "none"`): for VM tests about something else, since
    /// setting up and tearing down the bridge costs seconds per run under the harness's
    /// emulation (vm_bridge_network_ports_peers_and_none and the detached lifecycle keep the
    /// default).
    pub fn without_network(isolation: &'static str) -> Env {
        Env::with_network(isolation, "none")
    }

    fn with_network(isolation: &'static str, network: &str) -> Env {
        // Inside the KVM harness only /tmp (a tmpfs) takes overlay mounts and sockets.
        let base = if std::env::var_os("BULKHEAD_IN_HARNESS").is_some() {
            std::env::temp_dir()
        } else {
            PathBuf::from("/run")
        };
        let dir = tempfile::Builder::new()
            .prefix("bh")
            .tempdir_in(base)
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        static BRIDGE_CLEANUP: OnceLock<()> = OnceLock::new();
        BRIDGE_CLEANUP.get_or_init(|| {
            // SAFETY: registers a plain function.
            unsafe { libc::atexit(remove_test_bridge) };
        });
        // Boots under the harness's nested emulation take tens of seconds.
        let cfg = format!(
            "store_root = {:?}\nrun_root = {:?}\nlog_level = \"info\"\n[vm]\nboot_timeout_secs = 300\nrequest_timeout_secs = 120\n[network]\nbridge = {TEST_BRIDGE:?}\nsubnet = {TEST_SUBNET:?}\nipam_dir = {TEST_IPAM_DIR:?}\n[cli]\nisolation = {:?}\nnetwork = {network:?}\nstop_timeout_secs = 10\n",
            store(),
            dir.path().join("run"),
            isolation
        );
        std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
        Env { dir, isolation }
    }

    pub fn run_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(self.dir.path().join("config.toml"));
        c.args(args);
        c.env_remove("BULKHEAD_ROOT");
        c.env_remove("BULKHEAD_RUN_ROOT");
        c.env_remove("BULKHEAD_ISOLATION");
        c
    }

    /// Runs `bulkhead ARGS` to the end, at most [`RUN_LIMIT_SECS`]: a run that hangs is
    /// ended by coreutils `timeout` (SIGTERM, which bulkhead passes to its container and
    /// tears down after; SIGKILL 10 s later) and shows as status 124, not as a stuck test.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new("timeout");
        c.args(["--kill-after=10", &RUN_LIMIT_SECS.to_string()])
            .arg(BIN)
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .args(args)
            .env_remove("BULKHEAD_ROOT")
            .env_remove("BULKHEAD_RUN_ROOT")
            .env_remove("BULKHEAD_ISOLATION");
        let out = c.output().expect("running bulkhead");
        eprintln!(
            "$ bulkhead {}\n-> {:?}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Container directories still present.
    pub fn containers_left(&self) -> Vec<String> {
        std::fs::read_dir(self.run_root().join("containers"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// Entries of a directory of the run root (missing: none).
    fn entries(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.run_root().join(sub))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Per-container socket directories (`containers/.s/<id>`) still present.
    pub fn sockets_left(&self) -> Vec<String> {
        self.entries("containers/.s")
    }

    /// Network namespaces (`<run_root>/netns/<id>`) still present.
    pub fn netns_left(&self) -> Vec<String> {
        self.entries("netns")
    }

    /// VM sandbox run directories (sockets, consoles, shared dir) still present.
    pub fn sandboxes_left(&self) -> Vec<String> {
        self.entries("sandboxes")
    }

    /// The one-time shared bind of `<run_root>/sandboxes` (see docs/cli.md, "Mount
    /// propagation"): host set-up, not a container's.
    fn sandboxes_mount(&self) -> PathBuf {
        self.run_root().join("sandboxes")
    }

    /// Mounts below the run root (except the sandboxes directory's own shared bind).
    pub fn mounts_left(&self) -> Vec<String> {
        let root = self.run_root();
        let own = self.sandboxes_mount();
        mountinfo::read_self()
            .unwrap()
            .into_iter()
            .filter(|e| e.mount_point.starts_with(&root) && e.mount_point != own)
            .map(|e| e.mount_point.display().to_string())
            .collect()
    }

    /// Processes whose command line mentions this test's directory (supervisors, agents,
    /// VMMs and virtiofsd: their sockets live below it).
    pub fn processes_left(&self) -> Vec<String> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .collect()
    }

    pub fn assert_clean(&self) {
        // Supervisors finish their teardown a moment after the container's end.
        for _ in 0..100 {
            if self.containers_left().is_empty()
                && self.mounts_left().is_empty()
                && self.processes_left().is_empty()
                && self.sockets_left().is_empty()
                && self.sandboxes_left().is_empty()
                && self.netns_left().is_empty()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "left behind: containers {:?}, mounts {:?}, processes {:?}, socket dirs {:?}, sandboxes {:?}, netns {:?}",
            self.containers_left(),
            self.mounts_left(),
            self.processes_left(),
            self.sockets_left(),
            self.sandboxes_left(),
            self.netns_left()
        );
    }
}

impl Drop for Env {
    /// A failed test must not leave containers running: remove what is left.
    fn drop(&mut self) {
        let left = self.containers_left();
        if !left.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(left.iter().map(String::as_str));
            let _ = self.cmd(&args).output();
        }
        let own = self.sandboxes_mount();
        if own.exists() {
            let _ = nix::mount::umount2(&own, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
