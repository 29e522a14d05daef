//! The shim under a real containerd (Debian's 1.6.20), driven with `ctr`.
//!
//! Every test starts its own containerd (own config, root on a fresh tmpfs, state, socket,
//! namespace), imports a busybox image built here from `/bin/busybox` (busybox-static), and
//! stops containerd at the end, checking that no shim, VMM or mount is left behind.
//!
//! - `boot_failure_reaches_ctr_and_leaves_nothing`: runs wherever root, containerd and
//!   busybox are: the "VMM" is a script that fails the way a VMM without KVM does; the
//!   error `ctr` prints must name the phase and quote the VMM's log.
//! - `ctr_run_in_a_vm`: the real thing; needs the KVM harness (`BULKHEAD_IN_HARNESS=1`) and
//!   `BULKHEAD_KERNEL`, `BULKHEAD_INITRD`, `BULKHEAD_VMM` (and `BULKHEAD_VIRTIOFSD`, or
//!   virtiofsd in PATH) naming real files.
//!
//! A test that cannot run prints `SKIPPED: reason` and passes.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RUNTIME: &str = "io.containerd.bulkhead.v2";
const IMAGE: &str = "docker.io/bulkhead/busybox:e2e";

fn skip(reason: &str) {
    eprintln!("SKIPPED: {reason}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let out = check(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_owned()
}

/// Writes a blob into an OCI layout and returns its digest and size.
fn add_blob(layout: &Path, file: &Path) -> (String, u64) {
    let digest = sha256(file);
    let dest = layout.join("blobs/sha256").join(&digest);
    std::fs::copy(file, &dest).unwrap();
    (
        format!("sha256:{digest}"),
        std::fs::metadata(&dest).unwrap().len(),
    )
}

/// An OCI archive with one layer: `/bin/busybox` and its applets as symlinks.
fn busybox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("image-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "ls", "true", "false", "hostname",
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
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
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
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{IMAGE}","org.opencontainers.image.ref.name":"e2e"}}}}]}}"#
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

static NEXT_NAMESPACE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A containerd of the test's own, with the shim in its PATH.
struct Containerd {
    dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    namespace: String,
    run_root: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// `env`: extra environment for containerd (and so for the shims it starts).
    fn start(env: &[(&str, &str)], shim_config: &str) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let run_root = dir.path().join("bulkhead-run");
        std::fs::create_dir_all(&root).unwrap();
        // overlayfs cannot stack on the harness's overlay root: give it a tmpfs.
        check(
            Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(&root),
        );
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {socket:?}\n\
                 [ttrpc]\n  address = \"{}\"\n",
                socket.with_extension("ttrpc").display()
            ),
        )
        .unwrap();
        let shim_config_path = dir.path().join("bulkhead.toml");
        std::fs::write(
            &shim_config_path,
            format!("run_root = {run_root:?}\nlog_level = \"debug\"\n{shim_config}"),
        )
        .unwrap();
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-bulkhead-v2"))
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("BULKHEAD_CONFIG", &shim_config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
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
        let deadline = Instant::now() + Duration::from_secs(20);
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    fn import_busybox(&self) {
        let archive = busybox_image(self.dir.path());
        check(self.ctr().args(["images", "import"]).arg(&archive));
    }

    /// Processes whose command line names our run root (VMMs, virtiofsd) or a shim of our
    /// namespace.
    fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let run_root = self.run_root.to_string_lossy().into_owned();
        let ns = format!("-namespace\0{}\0", self.namespace);
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                .is_none()
            {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline);
            if text.contains(&run_root) || text.contains(&ns) {
                found.push(text.replace('\0', " "));
            }
        }
        found
    }

    fn mounts_below(&self, dir: &Path) -> Vec<String> {
        let prefix = dir.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
            .map(str::to_owned)
            .collect()
    }

    /// Asserts that nothing of ours is left: no process, no run directory content, no
    /// mount below the run root.
    fn assert_clean(&self) {
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
        assert_eq!(self.mounts_below(&self.run_root), Vec::<String>::new());
        let left: Vec<_> = walk(&self.run_root);
        assert!(left.is_empty(), "left in the run root: {left:#?}");
    }
}

/// Every non-directory below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
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
    fn kill_fake_guest_processes(&self) {
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
        let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| {
                l.split(" - ")
                    .nth(1)
                    .is_some_and(|t| t.starts_with("cgroup2 "))
            })
            .and_then(|l| l.split(' ').nth(4).map(PathBuf::from));
        if let Some(root) = cgroup2 {
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
        let mut ours: Vec<String> = self
            .mounts_below(&self.run_root)
            .into_iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
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
        let mut mounts: Vec<String> = self
            .mounts_below(&self.root)
            .into_iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

fn containerd_prerequisites() -> Result<(), String> {
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

fn write_script(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn boot_failure_reaches_ctr_and_leaves_nothing() {
    if let Err(reason) = containerd_prerequisites() {
        return skip(&reason);
    }
    let tools = tempfile::tempdir().unwrap();
    let vmm = tools.path().join("failing-vmm");
    write_script(
        &vmm,
        "#!/bin/sh\necho 'error: cannot open /dev/kvm: No such file or directory' >&2\nexit 1\n",
    );
    let kernel = tools.path().join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let c = Containerd::start(
        &[
            ("BULKHEAD_VMM", vmm.to_str().unwrap()),
            ("BULKHEAD_KERNEL", kernel.to_str().unwrap()),
            ("BULKHEAD_INITRD", ""),
            ("BULKHEAD_VIRTIOFSD", ""),
        ],
        "",
    );
    c.import_busybox();
    let out = run(c.ctr().args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "fails",
        "echo",
        "hi",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("ctr run: {stderr}");
    assert!(!out.status.success(), "ctr run succeeded without a VM");
    assert!(
        stderr.contains("starting the VM for fails"),
        "the error names the phase: {stderr}\ncontainerd log:\n{}",
        c.log()
    );
    assert!(
        stderr.contains("cannot open /dev/kvm"),
        "the VMM log is quoted: {stderr}"
    );
    // ctr leaves the container record after a failed task create.
    let _ = run(c.ctr().args(["containers", "rm", "fails"]));
    c.assert_clean();
}

#[test]
fn ctr_run_in_a_vm() {
    if std::env::var("BULKHEAD_IN_HARNESS").as_deref() != Ok("1") {
        return skip("boots a guest: run through the KVM harness (BULKHEAD_IN_HARNESS=1)");
    }
    if let Err(reason) = containerd_prerequisites() {
        return skip(&reason);
    }
    let mut env = Vec::new();
    for var in ["BULKHEAD_KERNEL", "BULKHEAD_INITRD", "BULKHEAD_VMM"] {
        match std::env::var(var) {
            Ok(v) if Path::new(&v).is_file() => env.push((var, v)),
            _ => return skip(&format!("{var} must name a file")),
        }
    }
    match std::env::var("BULKHEAD_VIRTIOFSD")
        .ok()
        .or_else(|| which("virtiofsd").map(|p| p.to_string_lossy().into_owned()))
    {
        Some(v) if Path::new(&v).is_file() => env.push(("BULKHEAD_VIRTIOFSD", v)),
        _ => return skip("virtiofsd not found (set BULKHEAD_VIRTIOFSD)"),
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Containerd::start(&env, "agent_timeout_secs = 120\n");
    c.import_busybox();

    // Output and exit status pass through.
    let out = run(c.ctr().args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "e2e-echo",
        "sh",
        "-c",
        "echo hello from the guest; cat /proc/version; exit 7",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    assert!(stdout.contains("hello from the guest"), "{stdout}");
    c.assert_clean();

    // stdin reaches the container and its EOF ends it.
    let mut child = c
        .ctr()
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, "e2e-cat", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    c.assert_clean();
}

/// The agent binary for the host-agent test.
fn agent_binary() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("BULKHEAD_AGENT_BIN")?);
    p.is_file().then_some(p)
}

/// A containerd whose "VMs" run the real agent on the host (`tests/fake-vm/vmm`).
fn host_agent_containerd(agent: &Path) -> Containerd {
    // The host's cgroup v2 hierarchy lacks the cpu controller here (hybrid cgroups): ctr's
    // default cpu shares would fail in the host "guest"; a real guest has it.
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-vm");
    let vmm = fake.join("vmm");
    Containerd::start(
        &[
            ("BULKHEAD_VMM", vmm.to_str().unwrap()),
            ("BULKHEAD_KERNEL", "/nonexistent-kernel"),
            ("BULKHEAD_INITRD", ""),
            ("BULKHEAD_VIRTIOFSD", ""),
        ],
        &format!("kernel_cmdline = \"agent={}\"\n", agent.display()),
    )
}

/// The host-agent tests' prerequisites and agent binary.
fn host_agent_prerequisites() -> Result<PathBuf, String> {
    containerd_prerequisites()?;
    let agent = agent_binary()
        .ok_or("no agent binary: set BULKHEAD_AGENT_BIN to a bulkhead-agent build")?;
    if which("python3").is_none() || !Path::new("/sys/fs/cgroup").exists() {
        return Err("needs python3 and cgroups".into());
    }
    Ok(agent)
}

/// Pids of processes whose command line contains all of `needles`.
fn pids_with(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            needles.iter().all(|n| text.contains(n)).then_some(pid)
        })
        .collect()
}

fn wait_for_status(c: &Containerd, task: &str, status: &str, limit: Duration) -> Duration {
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

#[test]
fn ctr_run_with_the_agent_on_the_host() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();

    // Output and the exit status pass through; the rootfs is the image's.
    let out = run(c.ctr().args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "host-echo",
        "sh",
        "-c",
        "echo hello; ls /bin/busybox; echo oops >&2; exit 7",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}\ncontainerd log:\n{}",
        c.log()
    );
    assert_eq!(stdout, "hello\n/bin/busybox\n");
    assert!(stderr.contains("oops"), "{stderr}");
    c.assert_clean();

    // stdin reaches the container and its EOF ends it.
    let mut child = c
        .ctr()
        .args([
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--cpu-shares",
            "0",
            IMAGE,
            "host-cat",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    c.assert_clean();

    // exec into a running container, kill it, delete it.
    check(c.ctr().args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "host-sleep",
        "sleep",
        "1000",
    ]));
    let out = run(c.ctr().args([
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "host-sleep",
        "sh",
        "-c",
        "echo from exec; exit 3",
    ]));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from exec\n");
    let ps = check(c.ctr().args(["tasks", "ls"]));
    assert!(ps.contains("host-sleep") && ps.contains("RUNNING"), "{ps}");
    // Stats arrive as cgroup v2 metrics containerd can decode.
    let metrics = check(c.ctr().args(["tasks", "metrics", "host-sleep"]));
    eprintln!("ctr tasks metrics: {metrics}");
    assert!(metrics.contains("pids.current"), "{metrics}");
    // Pause is refused with a reason.
    let out = run(c.ctr().args(["tasks", "pause", "host-sleep"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot freeze"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "host-sleep"]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = check(c.ctr().args(["tasks", "ls"]));
        if ps.contains("STOPPED") {
            break;
        }
        assert!(Instant::now() < deadline, "not stopped: {ps}");
        std::thread::sleep(Duration::from_millis(100));
    }
    check(c.ctr().args(["tasks", "delete", "host-sleep"]));
    check(c.ctr().args(["containers", "delete", "host-sleep"]));
    c.assert_clean();
}

#[test]
fn a_dying_vm_ends_its_processes_and_can_be_deleted() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();
    check(c.ctr().args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "doomed",
        "sleep",
        "1000",
    ]));
    let out = run(c.ctr().args([
        "tasks",
        "exec",
        "-d",
        "--exec-id",
        "e1",
        "doomed",
        "sleep",
        "1000",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_status(&c, "doomed", "RUNNING", Duration::from_secs(10));
    let run_root = c.run_root.to_string_lossy().into_owned();
    let vmm = pids_with(&["fake-vmm.py", &run_root]);
    assert_eq!(vmm.len(), 1, "one fake VMM: {vmm:?}");
    // SAFETY: kill takes plain integers; the pid is the fake VMM found above.
    unsafe { libc::kill(vmm[0], libc::SIGKILL) };
    let took = wait_for_status(&c, "doomed", "STOPPED", Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "TaskExit took {took:?}");
    check(c.ctr().args(["tasks", "delete", "doomed"]));
    check(c.ctr().args(["containers", "delete", "doomed"]));
    c.assert_clean();
}

#[test]
fn delete_after_a_killed_shim_removes_the_vm() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();
    check(c.ctr().args([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "0",
        IMAGE,
        "orphan",
        "sleep",
        "1000",
    ]));
    wait_for_status(&c, "orphan", "RUNNING", Duration::from_secs(10));
    let shim = pids_with(&["containerd-shim-bulkhead-v2", &c.namespace]);
    assert_eq!(shim.len(), 1, "one shim: {shim:?}");
    // SAFETY: kill takes plain integers; the pid is the shim found above.
    unsafe { libc::kill(shim[0], libc::SIGKILL) };
    // containerd notices the dead shim and runs `containerd-shim-bulkhead-v2 delete`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.leftovers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after the shim died: {:#?}\ncontainerd log:\n{}",
            c.leftovers(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = run(c.ctr().args(["tasks", "delete", "orphan"]));
    check(c.ctr().args(["containers", "delete", "orphan"]));
    c.assert_clean();
}

#[test]
fn a_pods_containers_share_one_shim_and_one_vm() {
    let agent = match host_agent_prerequisites() {
        Ok(a) => a,
        Err(reason) => return skip(&reason),
    };
    let c = host_agent_containerd(&agent);
    c.import_busybox();
    let in_pod = |kind: &str, pod: &str, id: &str, cmd: &[&str]| {
        let mut ctr = c.ctr();
        ctr.args(["run", "-d", "--runtime", RUNTIME, "--cpu-shares", "0"])
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.container-type={kind}"))
            .arg("--annotation")
            .arg(format!("io.kubernetes.cri.sandbox-id={pod}"))
            .args([IMAGE, id])
            .args(cmd);
        run(&mut ctr)
    };
    let out = in_pod("sandbox", "pod1", "pod1", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = in_pod("container", "pod1", "app1", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_status(&c, "app1", "RUNNING", Duration::from_secs(10));

    let run_root = c.run_root.to_string_lossy().into_owned();
    assert_eq!(
        pids_with(&["containerd-shim-bulkhead-v2", &c.namespace]).len(),
        1
    );
    assert_eq!(pids_with(&["fake-vmm.py", &run_root]).len(), 1);
    let shared = c.run_root.join(&c.namespace).join("pod1/shared");
    assert!(shared.join("pod1/rootfs/bin/busybox").exists());
    assert!(shared.join("app1/rootfs/bin/busybox").exists());

    // A container of a pod whose sandbox is not in this shim is refused.
    let out = in_pod("container", "nopod", "stray", &["true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sandbox nopod"), "{stderr}");
    let _ = run(c.ctr().args(["containers", "delete", "stray"]));

    // The app container goes; the VM stays for the sandbox.
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "app1"]),
    );
    wait_for_status(&c, "app1", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "app1"]));
    check(c.ctr().args(["containers", "delete", "app1"]));
    assert!(!shared.join("app1").exists());
    assert_eq!(pids_with(&["fake-vmm.py", &run_root]).len(), 1);

    // The sandbox goes: so does the VM, and the shim.
    check(
        c.ctr()
            .args(["tasks", "kill", "--signal", "SIGKILL", "pod1"]),
    );
    wait_for_status(&c, "pod1", "STOPPED", Duration::from_secs(10));
    check(c.ctr().args(["tasks", "delete", "pod1"]));
    check(c.ctr().args(["containers", "delete", "pod1"]));
    c.assert_clean();
}
