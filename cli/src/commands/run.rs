//! `bulkhead run`: create a container from an image and run it, in the foreground (this
//! process supervises it and exits with its status) or detached (`-d`: a supervisor
//! daemon is started and this process prints the id once the container runs).

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};

use bulkhead_sandbox::network::cni::PortMapping;

use super::{Ctx, UsageError};
use crate::network::{self, NetworkMode};
use crate::spec::Volume;
use crate::state::{default_name, new_id, now, validate_name, Isolation, RunConfig, State, Status};
use crate::supervisor::{self, Foreground, Reporter};

#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// vm: a microVM with its own kernel; container: namespaces on the host kernel
    /// [default: `container.isolation` of the configuration, vm].
    #[arg(long, value_enum)]
    pub isolation: Option<Isolation>,
    /// CPU limit in cores (e.g. 1.5); sizes the microVM in vm mode.
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Memory limit (e.g. 256m, 1g, or bytes); sizes the microVM in vm mode.
    #[arg(short = 'm', long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Set an environment variable: KEY=VALUE, or KEY to pass this shell's value (left out
    /// when it is not set here, as Docker does).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file: one KEY=VALUE or KEY per line, `#` comments
    /// and blank lines ignored; -e wins over the file (repeatable).
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// The image's platform: only linux/amd64 runs here; anything else is refused.
    #[arg(long)]
    pub platform: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User: name or uid, optionally :group or :gid.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container name (unique).
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open (pass input to the container).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Host name inside the container [default: the first 12 digits of the id].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Bind a host directory: HOST:CONTAINER[:ro] (shared over virtio-fs in vm mode).
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<Volume>,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Network: bridge (the default bridge network: an address of its own, NAT to the
    /// outside, -p to publish ports), none (only loopback) or host (the host's network;
    /// container isolation only) [default: `cli.network` of the configuration, bridge].
    #[arg(long, value_enum)]
    pub network: Option<NetworkMode>,
    /// Publish a container port on the host: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]
    /// (bridge network; repeatable).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<PortMapping>,
    /// Turn the hardening off: every capability, no seccomp filter, nothing masked, /sys
    /// writable, and in container mode the host's devices (what `docker run --privileged`
    /// does).
    #[arg(long)]
    pub privileged: bool,
    /// seccomp=unconfined, seccomp=PROFILE.json (Docker's profile format), or
    /// no-new-privileges[=true|false] (repeatable).
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Add a capability (NET_ADMIN, CAP_NET_ADMIN or ALL; repeatable).
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop a capability (or ALL; repeatable).
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Print no progress messages.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print how long each phase took (image, VMM start, kernel boot, agent, container
    /// start, run, exit) on stderr at the end [env: BULKHEAD_TIMINGS=1].
    #[arg(long)]
    pub timings: bool,
    /// The image (name or digest).
    pub image: String,
    /// Command and arguments [default: the image's entrypoint and cmd].
    pub command: Vec<String>,
}

fn parse_cpus(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of CPUs"))?;
    if !(v > 0.0 && v <= 1024.0) {
        return Err(format!("--cpus {s}: must be above 0 and at most 1024"));
    }
    Ok((v * 1000.0).round() as u64)
}

fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a memory size (like 512m or 2g)"))?;
    let bytes = n
        .checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes < 6 << 20 {
        return Err(format!("--memory {s}: at least 6m"));
    }
    Ok(bytes)
}

/// One `-e` entry as it goes into the container: `KEY=VALUE` as given, `KEY` with this
/// process's value, or nothing when `KEY` is not set here (Docker leaves it out).
pub(super) fn env_entry(e: &str) -> anyhow::Result<Option<String>> {
    if e.is_empty() || e.starts_with('=') {
        bail!("invalid -e {e:?}: expected KEY=VALUE or KEY");
    }
    if e.contains('=') {
        return Ok(Some(e.to_owned()));
    }
    Ok(std::env::var_os(e).map(|v| format!("{e}={}", v.to_string_lossy())))
}

/// The entries of an `--env-file`, in Docker's format: a line is `KEY=VALUE` (the value
/// verbatim, quotes included) or `KEY` (this process's value, left out when unset); blank
/// lines and lines starting with `#` are skipped. A key with whitespace is refused, naming
/// the file and line.
fn env_file_entries(text: &str, path: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!(
                "{}, line {}: {key:?} is not a variable name (expected KEY=VALUE or KEY)",
                path.display(),
                n + 1
            );
        }
        if let Some(entry) = env_entry(line)? {
            out.push(entry);
        }
    }
    Ok(out)
}

/// The container's environment from `--env-file` (first) and `-e` (which wins: later
/// entries override earlier ones of the same key).
fn container_env(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut env = Vec::new();
    for path in &args.env_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --env-file {}", path.display()))?;
        env.extend(env_file_entries(&text, path)?);
    }
    for e in &args.env {
        env.extend(env_entry(e)?);
    }
    Ok(env)
}

/// `--platform`: this host runs linux/amd64 images (also spelled amd64, x86_64); anything
/// else is a usage error that says so.
fn check_platform(platform: &str) -> Result<(), String> {
    let p = platform.trim().to_ascii_lowercase();
    let arch = p.strip_prefix("linux/").unwrap_or(&p);
    if matches!(arch, "amd64" | "x86_64" | "x86-64") {
        return Ok(());
    }
    Err(format!(
        "--platform {platform}: this host runs only linux/amd64 images (an x86_64 kernel \
         and VMM, no emulation)"
    ))
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<i32> {
    if args.timings || std::env::var("BULKHEAD_TIMINGS").as_deref() == Ok("1") {
        crate::timings::enable();
    }
    let isolation = match args.isolation {
        Some(i) => i,
        None if ctx.cfg.cli.isolation == crate::config::Isolation::Container => {
            Isolation::Container
        }
        None => Isolation::Vm,
    };
    let network = args
        .network
        .unwrap_or_else(|| NetworkMode::from(ctx.cfg.cli.network));
    network::check_usage(network, isolation, &args.publish).map_err(UsageError)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("bulkhead run needs root (namespaces, mounts, KVM)");
    }
    if let Some(h) = &args.hostname {
        if h.is_empty()
            || h.len() > 64
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            bail!("invalid --hostname {h:?}");
        }
    }
    let security = crate::security::SecurityOptions::from_args(
        args.privileged,
        &args.security_opt,
        &args.cap_add,
        &args.cap_drop,
    )
    .map_err(UsageError)?;
    if let Some(platform) = &args.platform {
        check_platform(platform).map_err(UsageError)?;
    }
    let env = container_env(&args)?;
    for v in &args.volumes {
        if !v.host.exists() {
            bail!("volume source {} does not exist", v.host.display());
        }
    }
    let store = ctx.store()?;
    let rec = store
        .get_image(&args.image)
        .with_context(|| format!("unknown image {:?}: pull or import it first", args.image))?;

    let id = new_id()?;
    let name = match &args.name {
        Some(n) => {
            validate_name(n)?;
            n.clone()
        }
        None => default_name(&id),
    };
    let config = RunConfig {
        image: rec.name.clone(),
        entrypoint: args.entrypoint.as_ref().map(|e| vec![e.clone()]),
        cmd: (!args.command.is_empty()).then(|| args.command.clone()),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args
            .hostname
            .clone()
            .unwrap_or_else(|| id.get(..12).unwrap_or(&id).to_owned()),
        tty: args.tty,
        interactive: args.interactive,
        detach: args.detach,
        auto_remove: args.rm,
        read_only: args.read_only,
        cpu_millis: args.cpus,
        memory_bytes: args.memory,
        volumes: args.volumes.clone(),
        network,
        publish: args.publish.clone(),
        security,
    };
    let state = State {
        id: id.clone(),
        name: name.clone(),
        isolation,
        image_digest: rec.manifest_digest.to_string(),
        config,
        command: Vec::new(),
        status: Status::Created,
        created_at: now(),
        started_at: None,
        finished_at: None,
        exit_code: None,
        error: None,
        supervisor_pid: None,
        supervisor_start: None,
        vmm_pid: None,
        sandbox_dir: None,
        network: None,
    };
    let containers = ctx.containers();
    let dir = containers.dir(&id);
    {
        let _lock = containers.lock()?;
        if let Some(other) = containers.name_in_use(&name) {
            bail!(
                "the name {name:?} is already in use by container {} (remove it with `bulkhead rm {name}`)",
                other.id.get(..12).unwrap_or(&other.id)
            );
        }
        // The image stays (`rmi` refuses it, `gc` keeps its layers) until `rm`.
        store
            .lease(&id, &rec)
            .with_context(|| format!("using image {}", rec.name))?;
        dir.create(&state)?;
    }

    if args.detach {
        return detach(ctx, &dir.path, &id, args.quiet).map(|()| 0);
    }
    let rt = super::runtime()?;
    let fg = Foreground {
        tty: args.tty,
        interactive: args.interactive,
    };
    let report = Reporter::Stderr { quiet: args.quiet };
    let result = rt.block_on(supervisor::supervise(
        &ctx.cfg,
        &store,
        dir,
        Some(fg),
        report,
    ));
    rt.shutdown_background();
    crate::timings::report();
    result
}

/// Starts `bulkhead supervise ID` in its own session and relays its progress until it
/// says the container runs (or why it does not).
fn detach(ctx: &Ctx, dir: &std::path::Path, id: &str, quiet: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the bulkhead binary")?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(
        crate::state::ContainerDir {
            path: dir.to_path_buf(),
        }
        .supervisor_log(),
    )?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(ctx.global_args())
        .arg("supervise")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child is detached from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the supervisor")?;
    let out = child.stdout.take().context("supervisor pipe")?;
    let mut result: anyhow::Result<()> = Err(anyhow::anyhow!(
        "the supervisor ended without starting the container; see {}",
        dir.join("supervisor.log").display()
    ));
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(msg) = line.strip_prefix("progress: ") {
            if !quiet {
                eprintln!("{msg}");
            }
        } else if line == "ready" {
            result = Ok(());
            break;
        } else if let Some(e) = line.strip_prefix("error: ") {
            result = Err(anyhow::anyhow!("{e}"));
            break;
        }
    }
    if result.is_err() {
        // The supervisor removes the container on a failed start; reap it.
        let _ = child.wait();
    }
    result?;
    println!("{id}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("x").is_err());
        assert_eq!(parse_memory("256m"), Ok(256 << 20));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("1gb"), Ok(1 << 30));
        assert_eq!(parse_memory("10485760"), Ok(10 << 20));
        assert!(parse_memory("1k").is_err());
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("99999999999999g").is_err());
    }

    #[test]
    fn env_entries() {
        assert_eq!(env_entry("A=1").unwrap().as_deref(), Some("A=1"));
        assert_eq!(env_entry("A=").unwrap().as_deref(), Some("A="));
        assert!(env_entry("=x").is_err());
        std::env::set_var("BULKHEAD_TEST_ENV_COPY", "v");
        assert_eq!(
            env_entry("BULKHEAD_TEST_ENV_COPY").unwrap().as_deref(),
            Some("BULKHEAD_TEST_ENV_COPY=v")
        );
        // Docker leaves an unset KEY out instead of setting it empty.
        assert_eq!(env_entry("BULKHEAD_TEST_ENV_SURELY_UNSET").unwrap(), None);
    }

    #[test]
    fn env_files_follow_dockers_format() {
        std::env::set_var("BULKHEAD_TEST_ENV_FILE_COPY", "from-here");
        let text = "# comment\n\nA=1\n  B=two words\nQ=\"quoted\"\nBULKHEAD_TEST_ENV_FILE_COPY\n\
                    BULKHEAD_TEST_ENV_FILE_UNSET\nE=\n";
        let path = Path::new("app.env");
        assert_eq!(
            env_file_entries(text, path).unwrap(),
            [
                "A=1",
                "B=two words",
                "Q=\"quoted\"",
                "BULKHEAD_TEST_ENV_FILE_COPY=from-here",
                "E="
            ]
        );
        let e = env_file_entries("A=1\nBAD KEY=2\n", path).unwrap_err();
        assert_eq!(
            e.to_string(),
            "app.env, line 2: \"BAD KEY\" is not a variable name (expected KEY=VALUE or KEY)"
        );
        assert!(env_file_entries("=x\n", path).is_err());
    }

    #[test]
    fn only_linux_amd64_is_accepted() {
        for ok in ["linux/amd64", "amd64", "Linux/AMD64", "linux/x86_64"] {
            assert_eq!(check_platform(ok), Ok(()), "{ok}");
        }
        for bad in ["linux/arm64", "arm64", "windows/amd64", "linux/arm/v7", ""] {
            let e = check_platform(bad).unwrap_err();
            assert!(e.contains("only linux/amd64"), "{bad}: {e}");
        }
    }
}
