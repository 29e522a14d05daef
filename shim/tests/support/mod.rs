//! Test support: a containerd of the test's own, a busybox image built from
//! `/bin/busybox`, process and mount checks, the host-agent set-up.

#![allow(dead_code)]

pub mod cri;
pub mod scenarios;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bulkhead_sandbox::mountinfo;

pub const RUNTIME: &str = "io.containerd.bulkhead.v2";
pub const IMAGE: &str = "docker.io/bulkhead/busybox:e2e";
/// The shim's timeouts in these tests. Under the harness's nested emulation a boot takes tens
/// of seconds, and a guest can stand still for tens of seconds when the host does not run it
/// (the agent's stall watcher reports that): the defaults (60 s, 30 s) are for hardware.
pub const HARNESS_TIMEOUTS: &str = "[vm]\nboot_timeout_secs = 120\nrequest_timeout_secs = 120\n";

pub use bulkhead_test_skip::skip;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sha256(path: &Path) -> String {
    let out = check(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_owned()
}

/// Writes a blob into an OCI layout and returns its digest and size.
pub fn add_blob(layout: &Path, file: &Path) -> (String, u64) {
    let digest = sha256(file);
    let dest = layout.join("blobs/sha256").join(&digest);
    std::fs::copy(file, &dest).unwrap();
    (
        format!("sha256:{digest}"),
        std::fs::metadata(&dest).unwrap().len(),
    )
}

/// An OCI archive with one layer: `/bin/busybox` and its applets as symlinks.
pub fn busybox_image(dir: &Path) -> PathBuf {
    image_archive(&dir.join("busybox"), IMAGE, &["/bin/sh"])
}

/// A busybox OCI archive named `name` whose default command is `cmd` (built in `dir`).
pub fn image_archive(dir: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let rootfs = dir.join("image-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "ls", "true", "false", "hostname", "mkdir", "httpd", "wget",
        "nc", "ip",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer = dir.join("layer.tar");
    check(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
            .arg(&layer)
            .arg("."),
    );
    let (layer_digest, layer_size) = add_blob(&layout, &layer);
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":{}}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#,
            serde_json::to_string(cmd).unwrap()
        ),
    )
    .unwrap();
    let (config_digest, config_size) = add_blob(&layout, &config);
    let manifest = dir.join("manifest.json");
    std::fs::write(
        &manifest,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
        ),
    )
    .unwrap();
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest);
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{name}"}}}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("busybox.tar");
    check(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    archive
}

pub static NEXT_NAMESPACE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A containerd of the test's own, with the shim in its PATH.
pub struct Containerd {
    dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    pub namespace: String,
    pub run_root: PathBuf,
    child: Option<Child>,
}

/// The installed containerd drop-in (`/etc/containerd/conf.d/bulkhead.toml`) with the
/// TOML texts `cri` (the test's CRI options) and `extra` (more handlers) merged into it, as
/// an administrator merges it into a config.toml that has CRI options of its own
/// (containerd 1.x would replace, not merge, an imported plugin section).
fn with_installed_drop_in(cri: &str, extra: &str) -> String {
    fn merge(base: &mut toml::Table, top: toml::Table) {
        for (k, v) in top {
            match (base.get_mut(&k), v) {
                (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
                (_, v) => {
                    base.insert(k, v);
                }
            }
        }
    }
    let drop_in = "/etc/containerd/conf.d/bulkhead.toml";
    let mut base: toml::Table = std::fs::read_to_string(drop_in)
        .unwrap_or_else(|e| panic!("{drop_in}: {e}"))
        .parse()
        .unwrap_or_else(|e| panic!("{drop_in}: {e}"));
    base.remove("version");
    for text in [cri, extra] {
        merge(
            &mut base,
            text.parse().expect("the test's containerd options"),
        );
    }
    toml::to_string(&base).expect("serialize containerd's configuration")
}

/// systemd's PATH for services: what containerd has on an installed host.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Containerd {
    /// `env`: extra environment for containerd (and so for the shims it starts).
    pub fn start(env: &[(&str, &str)], shim_config: &str) -> Containerd {
        Containerd::start_with(env, shim_config, None)
    }

    /// With `cri_sandbox_image`: the CRI plugin on, as ECOSYSTEM.md says it must be set
    /// here (restricted oom_score_adj, a local sandbox image, runtime handler `bulkhead`,
    /// no CNI configuration: host-network pods only).
    pub fn start_with(
        env: &[(&str, &str)],
        shim_config: &str,
        cri_sandbox_image: Option<&str>,
    ) -> Containerd {
        Containerd::start_full(env, Some(shim_config), cri_sandbox_image, None, "")
    }

    /// The CRI plugin on, as [`Containerd::start_with`], with the CNI configuration list
    /// `conflist` (JSON) for pod-network pods; `{DIR}` in it is replaced by the test's own
    /// directory (for host-local's `dataDir`).
    pub fn start_with_cni(
        env: &[(&str, &str)],
        shim_config: &str,
        cri_sandbox_image: &str,
        conflist: &str,
    ) -> Containerd {
        Containerd::start_full(
            env,
            Some(shim_config),
            Some(cri_sandbox_image),
            Some(conflist),
            "",
        )
    }

    /// containerd as an installed Bulkhead meets it: the CRI plugin on, its configuration
    /// the installed drop-in with the test's options and `extra` (more handlers) merged
    /// in ([`with_installed_drop_in`]), the system's
    /// PATH (the shim is the installed `/usr/local/bin` link), no other environment: the
    /// shim reads the installed vendor defaults, its run root is the default.
    pub fn start_installed(cri_sandbox_image: &str, extra: &str) -> Containerd {
        Containerd::start_full(&[], None, Some(cri_sandbox_image), None, extra)
    }

    /// `shim_config`: the shim's configuration file (this build's shim on PATH, the test's
    /// run root); `None`: an installed shim with its defaults ([`Containerd::start_installed`]).
    fn start_full(
        env: &[(&str, &str)],
        shim_config: Option<&str>,
        cri_sandbox_image: Option<&str>,
        conflist: Option<&str>,
        extra_config: &str,
    ) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        // Everything on a tmpfs: in the harness /tmp is an overlay over 9p, where overlayfs
        // cannot stack (containerd's snapshots, the shim's rootfs mounts) and unix sockets
        // cannot be created.
        check(
            Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(dir.path()),
        );
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let run_root = match shim_config {
            Some(_) => dir.path().join("bulkhead-run"),
            None => PathBuf::from(bulkhead_sandbox::sandbox::DEFAULT_RUN_ROOT),
        };
        std::fs::create_dir_all(&root).unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        let plugins = match cri_sandbox_image {
            None => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_owned(),
            Some(image) => {
                let cni = dir.path().join("cni");
                std::fs::create_dir_all(&cni).unwrap();
                if let Some(list) = conflist {
                    let list = list.replace("{DIR}", &dir.path().to_string_lossy());
                    std::fs::write(cni.join("10-e2e.conflist"), list).unwrap();
                }
                let cri = format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
                     sandbox_image = \"{image}\"\n\
                     restrict_oom_score_adj = true\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                     bin_dir = \"/usr/lib/cni\"\n  conf_dir = {cni:?}\n"
                );
                match shim_config {
                    Some(_) => format!(
                        "{cri}\
                         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                         runtime_type = \"io.containerd.runc.v2\"\n\
                         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.bulkhead]\n\
                         runtime_type = \"{RUNTIME}\"\n"
                    ),
                    None => with_installed_drop_in(&cri, extra_config),
                }
            }
        };
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n{plugins}\
                 [grpc]\n  address = {socket:?}\n\
                 [ttrpc]\n  address = \"{}\"\n",
                socket.with_extension("ttrpc").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match shim_config {
            Some(shim_config) => {
                let shim_config_path = dir.path().join("bulkhead.toml");
                std::fs::write(
                    &shim_config_path,
                    format!("run_root = {run_root:?}\nlog_level = \"debug\"\n{shim_config}"),
                )
                .unwrap();
                // The shim reaches containerd's PATH through a directory of its own holding
                // a copy (on this tmpfs: in the harness an exec from the 9p-shared build
                // tree can take seconds) of this build's binary, or of BULKHEAD_SHIM_BIN (a
                // release build starts much faster in the harness, where containerd's 5 s
                // for `delete` are tight).
                let shim_bin = std::env::var_os("BULKHEAD_SHIM_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-bulkhead-v2"))
                    });
                let shim_dir = dir.path().join("bin");
                std::fs::create_dir_all(&shim_dir).unwrap();
                std::fs::copy(&shim_bin, shim_dir.join("containerd-shim-bulkhead-v2")).unwrap();
                let path = format!(
                    "{}:{}",
                    shim_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                );
                cmd.env("PATH", path)
                    .env("BULKHEAD_CONFIG", &shim_config_path);
            }
            None => {
                cmd.env_clear().env("PATH", SYSTEM_PATH);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start containerd");
        let c = Containerd {
            namespace: format!(
                "bulkhead-e2e-{}-{}",
                std::process::id(),
                NEXT_NAMESPACE.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
            dir,
            root,
            socket,
            run_root,
            child: Some(child),
        };
        // The first start in a fresh harness VM reads everything over 9p: slow.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !c.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    pub fn import_busybox(&self) {
        let archive = busybox_image(self.dir.path());
        check(self.ctr().args(["images", "import"]).arg(&archive));
    }

    /// Imports an image into another containerd namespace (CRI's is `k8s.io`).
    pub fn import_into(&self, namespace: &str, archive: &Path) {
        check(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--namespace", namespace, "images", "import"])
                .arg(archive),
        );
    }

    /// The test's own directory (on the tmpfs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Processes whose command line names our run root (VMMs, virtiofsd) or a shim of our
    /// namespace.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let run_root = self.run_root.to_string_lossy().into_owned();
        let ns = format!("-namespace\0{}\0", self.namespace);
        let me = std::process::id();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            // This test process may have a file below the run root open itself.
            if entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                .is_none_or(|pid| pid == me)
            {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline);
            // A jailed VMM names no host path on its command line: its open files do.
            let open_below = std::fs::read_dir(entry.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|t| t.starts_with(&self.run_root));
            if text.contains(&run_root) || text.contains(&ns) || open_below {
                found.push(text.replace('\0', " "));
            }
        }
        found
    }

    /// Mount points at or below `dir`, deepest first (the order to detach them in).
    pub fn mounts_below(&self, dir: &Path) -> Vec<PathBuf> {
        let mut mounts: Vec<PathBuf> = mountinfo::read_self()
            .unwrap()
            .into_iter()
            .map(|e| e.mount_point)
            .filter(|m| m.starts_with(dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        mounts
    }

    /// Asserts that nothing of ours is left: no process, no run directory content, no
    /// mount below the run root.
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = self.leftovers();
            if procs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left running: {procs:#?}\ncontainerd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The run root itself stays a (shared) mount point: the shim makes it one once.
        let below: Vec<PathBuf> = self
            .mounts_below(&self.run_root)
            .into_iter()
            .filter(|m| *m != self.run_root)
            .collect();
        assert_eq!(
            below,
            Vec::<PathBuf>::new(),
            "mounts left; containerd log:\n{}",
            self.log()
        );
        let left: Vec<_> = walk(&self.run_root);
        assert!(
            left.is_empty(),
            "left in the run root: {left:#?}\ncontainerd log:\n{}",
            self.log()
        );
    }
}

/// Every non-directory below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

impl Containerd {
    /// The host-agent tests run containers on the host: a killed fake VM leaves their
    /// processes (a real VM takes them along). Kill what runs in our namespace's cgroup
    /// and remove the cgroups.
    pub fn kill_fake_guest_processes(&self) {
        let prefix = format!("0::/{}/", self.namespace);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let in_ours = std::fs::read_to_string(entry.path().join("cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.starts_with(&prefix)));
            if in_ours {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(root) = cgroup2_root() {
            let ours = root.join(&self.namespace);
            let deadline = Instant::now() + Duration::from_secs(5);
            while ours.exists() && Instant::now() < deadline {
                for e in std::fs::read_dir(&ours).into_iter().flatten().flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                if std::fs::remove_dir(&ours).is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // After a failed test: shims of our namespace and VMMs of our run root outlive
        // containerd; end them.
        let run_root = self.run_root.to_string_lossy().into_owned();
        let ns = format!("-namespace\0{}\0", self.namespace);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline);
            if text.contains(&run_root) || text.contains(&ns) {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for m in self.mounts_below(&self.run_root) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        self.kill_fake_guest_processes();
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill takes plain integers; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // containerd leaves its snapshot mounts below the root: detach them, then the tmpfs.
        for m in self.mounts_below(&self.root) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

pub fn containerd_prerequisites() -> Result<(), String> {
    if !is_root() {
        return Err("needs root (containerd, mounts)".into());
    }
    for tool in ["containerd", "ctr", "tar", "sha256sum", "mount"] {
        if which(tool).is_none() {
            return Err(format!("{tool} not found (apt-get install containerd)"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Err("/bin/busybox not found (apt-get install busybox-static)".into());
    }
    Ok(())
}

pub fn write_script(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The agent binary for the host-agent test.
pub fn agent_binary() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("BULKHEAD_AGENT_BIN")?);
    p.is_file().then_some(p)
}

/// A containerd whose "VMs" run the real agent on the host (`tests/fake-vm/vmm`).
pub fn host_agent_containerd(agent: &Path) -> Containerd {
    host_agent_containerd_with(agent, None)
}

/// [`host_agent_containerd`], with the CRI plugin when `cri_sandbox_image` is given.
pub fn host_agent_containerd_with(agent: &Path, cri_sandbox_image: Option<&str>) -> Containerd {
    // The host's cgroup v2 hierarchy lacks the cpu controller here (hybrid cgroups): ctr's
    // default cpu shares would fail in the host "guest"; a real guest has it.
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-vm");
    let vmm = fake.join("vmm");
    Containerd::start_with(
        &[
            ("BULKHEAD_VMM", vmm.to_str().unwrap()),
            ("BULKHEAD_KERNEL", "/nonexistent-kernel"),
            ("BULKHEAD_INITRD", ""),
            ("BULKHEAD_VIRTIOFSD", ""),
        ],
        // A Python stand-in cannot be jailed (the jail holds one static binary).
        &format!(
            "[vm]\ncmdline = \"agent={}\"\n[jail]\nenabled = false\n",
            agent.display()
        ),
        cri_sandbox_image,
    )
}

/// The host-agent tests' prerequisites and agent binary.
pub fn host_agent_prerequisites() -> Result<PathBuf, String> {
    containerd_prerequisites()?;
    let agent = agent_binary()
        .ok_or("no agent binary: set BULKHEAD_AGENT_BIN to a bulkhead-agent build")?;
    if which("python3").is_none() || !Path::new("/sys/fs/cgroup").exists() {
        return Err("needs python3 and cgroups".into());
    }
    Ok(agent)
}

/// Pids of processes whose command line and open files (a jailed VMM names no host path
/// on its command line, but its console and log are open files in the run directory)
/// contain all of `needles`.
pub fn pids_with(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let mut text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            for fd in std::fs::read_dir(e.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    text.push(' ');
                    text.push_str(&target.to_string_lossy());
                }
            }
            needles.iter().all(|n| text.contains(n)).then_some(pid)
        })
        .collect()
}

pub fn wait_for_status(c: &Containerd, task: &str, status: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let ps = check(c.ctr().args(["tasks", "ls"]));
        if ps
            .lines()
            .any(|l| l.starts_with(task) && l.contains(status))
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{task} not {status} after {limit:?}: {ps}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies the VM logs (`console.log`, `vmm.log`, `virtiofsd.log`) found below a run root
/// into a directory of its own every 100 ms, so they survive the run directory's removal;
/// [`LogCollector::dump`] prints them (after a failure).
pub struct LogCollector {
    dir: tempfile::TempDir,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogCollector {
    pub fn start(run_root: &Path) -> LogCollector {
        let dir = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (root, dest, flag) = (
            run_root.to_path_buf(),
            dir.path().to_path_buf(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || loop {
            for f in walk(&root) {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.ends_with(".log") {
                    let sandbox = f
                        .parent()
                        .and_then(|p| p.file_name())
                        .and_then(|n| n.to_str())
                        .unwrap_or_default();
                    let _ = std::fs::copy(&f, dest.join(format!("{sandbox}-{name}")));
                }
            }
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        });
        LogCollector {
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything collected so far, one file after another.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            out.push_str(&format!("===== {} =====\n{text}\n", f.display()));
        }
        out
    }
}

impl Drop for LogCollector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() {
            eprintln!("VM logs:\n{}", self.dump());
        }
    }
}

/// Where the host mounts its cgroup v2 hierarchy (the first cgroup2 mount), if it does.
pub fn cgroup2_root() -> Option<PathBuf> {
    mountinfo::read_self()
        .ok()?
        .into_iter()
        .find(|e| e.fs_type == "cgroup2")
        .map(|e| e.mount_point)
}
