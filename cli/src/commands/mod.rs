//! Command-line definition and dispatch. Each command lives in its own module.

mod check;
mod check_install;
mod compare;
mod completion;
mod exec;
mod format;
mod gc;
mod images;
mod import;
mod inspect;
mod kill;
mod logs;
mod ps;
mod pull;
mod rm;
mod rmi;
mod run;
mod stop;
mod supervise;
mod unpack;
mod version;
mod wait;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_images::Store;
use clap::{Parser, Subcommand};

use crate::config::{self, Config, Layer, RunLayout};
use crate::state::Containers;

#[derive(Parser, Debug)]
#[command(
    name = "bulkhead",
    version = bulkhead_version::LONG,
    about = "VM-isolated containers: run OCI images in a microVM, or as plain containers to compare"
)]
pub struct Cli {
    /// Configuration file [default: /etc/bulkhead/config.toml].
    #[arg(long, global = true, env = "BULKHEAD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Image store root (overrides `store_root`).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Container state root (overrides `run_root`).
    #[arg(long, global = true)]
    pub run_root: Option<PathBuf>,
    /// error, warn, info, debug or trace (overrides `log_level`).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log lines as text or json (overrides `log_format`).
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command in a new container (a microVM by default).
    Run(Box<run::Args>),
    /// Run a command in a running container.
    Exec(exec::Args),
    /// List containers.
    Ps(ps::Args),
    /// Show a container's output.
    Logs(logs::Args),
    /// Stop running containers (SIGTERM, then SIGKILL after the grace period).
    Stop(stop::Args),
    /// Send a signal to running containers.
    Kill(kill::Args),
    /// Remove containers.
    Rm(rm::Args),
    /// Show containers' state and configuration as JSON.
    Inspect(inspect::Args),
    /// Wait until containers exit, then print their exit statuses.
    Wait(wait::Args),
    /// Check whether this host can run microVMs, and what to do if not.
    Check(check::Args),
    /// Run the isolation lab's probe in a microVM and in containers, side by side.
    Compare(compare::Args),
    /// Pull an image from a registry.
    Pull(pull::Args),
    /// List stored images.
    Images(images::Args),
    /// Remove image references (blobs go at the next `image gc`).
    Rmi(rmi::Args),
    /// Image management.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Show the version, the commit and what this build runs.
    Version(version::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
    /// Write man pages for bulkhead and each of its commands into a directory.
    Man(completion::ManArgs),
    /// (internal) Supervise a detached container.
    #[command(hide = true)]
    Supervise(supervise::Args),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Flatten an image's layers into a directory.
    Unpack(unpack::Args),
    /// Import an OCI layout directory or a `docker save` archive.
    Import(import::Args),
    /// Remove unreferenced blobs and layers.
    Gc(gc::Args),
}

/// The configuration with the global flags applied, and what a child supervisor needs
/// to see the same.
pub struct Ctx {
    pub cfg: Config,
    pub config_path: Option<PathBuf>,
}

impl Ctx {
    pub fn store(&self) -> anyhow::Result<Store> {
        Store::open(&self.cfg.store_root).with_context(|| {
            format!(
                "opening the image store at {}",
                self.cfg.store_root.display()
            )
        })
    }

    pub fn containers(&self) -> Containers {
        Containers::new(self.cfg.containers_dir())
    }

    /// Global flags that make a re-executed `bulkhead` see this configuration.
    pub fn global_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        if let Some(p) = &self.config_path {
            a.push("--config".into());
            a.push(p.into());
        }
        a.push("--root".into());
        a.push(self.cfg.store_root.clone().into());
        a.push("--run-root".into());
        a.push(self.cfg.run_root.clone().into());
        a.push("--log-format".into());
        a.push(self.cfg.log_format.as_str().into());
        a.push("--log-level".into());
        a.push(self.cfg.log_level_name().into());
        a
    }
}

/// Loads the configuration and applies the global flags.
pub fn context(cli: &Cli) -> anyhow::Result<Ctx> {
    context_in(cli, &std::env::vars().collect())
}

/// [`context`] with the environment `env`.
pub fn context_in(cli: &Cli, env: &HashMap<String, String>) -> anyhow::Result<Ctx> {
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let mut flags = Vec::new();
    if let Some(r) = &cli.root {
        flags.push(Layer::flag("--root", "store_root", path(r)));
    }
    if let Some(r) = &cli.run_root {
        flags.push(Layer::flag("--run-root", "run_root", path(r)));
    }
    if let Some(l) = &cli.log_level {
        flags.push(Layer::flag("--log-level", "log_level", l.clone()));
    }
    if let Some(f) = &cli.log_format {
        flags.push(Layer::flag("--log-format", "log_format", f.clone()));
    }
    Ok(Ctx {
        cfg: config::load(cli.config.as_deref(), env, flags)?,
        config_path: cli.config.clone(),
    })
}

/// A wrong combination of flags: reported like clap's own usage errors (status 125).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit status of a usage error: Docker's status for its own errors (125; 126 and 127
/// are for a command that cannot run, the rest is the container's own status).
pub const USAGE_STATUS: i32 = 125;

/// Runs a command; `Ok(code)` is the process exit status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // These read no configuration, so they work where it is missing or broken.
    match &cli.command {
        Command::Version(a) => return version::run(a).map(|()| 0),
        Command::Completion(a) => return completion::completion(a).map(|()| 0),
        Command::Man(a) => return completion::man(a).map(|()| 0),
        _ => {}
    }
    let ctx = context(&cli)?;
    crate::logger::install(ctx.cfg.log_level, ctx.cfg.log_format);
    let done = |r: anyhow::Result<()>| r.map(|()| 0);
    match cli.command {
        Command::Run(a) => run::run(&ctx, *a),
        Command::Exec(a) => exec::run(&ctx, a),
        Command::Ps(a) => done(ps::run(&ctx, a)),
        Command::Logs(a) => done(logs::run(&ctx, a)),
        Command::Stop(a) => done(stop::run(&ctx, a)),
        Command::Kill(a) => done(kill::run(&ctx, a)),
        Command::Rm(a) => done(rm::run(&ctx, a)),
        Command::Inspect(a) => done(inspect::run(&ctx, a)),
        Command::Wait(a) => wait::run(&ctx, a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Compare(a) => done(compare::run(&ctx, a)),
        Command::Supervise(a) => supervise::run(&ctx, a),
        Command::Pull(a) => done(pull::run(&ctx.store()?, a)),
        Command::Images(a) => done(images::run(&ctx.store()?, a)),
        Command::Rmi(a) => done(rmi::run(&ctx, a)),
        Command::Image(ImageCommand::Unpack(a)) => done(unpack::run(&ctx.store()?, a)),
        Command::Image(ImageCommand::Import(a)) => done(import::run(&ctx.store()?, a)),
        Command::Image(ImageCommand::Gc(a)) => done(gc::run(&ctx, a)),
        // Handled before the configuration is read.
        Command::Version(_) | Command::Completion(_) | Command::Man(_) => Ok(0),
    }
}

/// A runtime for the container commands: one thread (the supervisor's children get their
/// parent-death signal from the thread that spawned them, which must live as long as the
/// process).
/// Applies `action` to each named container the way `docker` does: prints the name of
/// each one done, reports each failure on stderr and goes on, and fails at the end if any
/// failed (`"{failed} of {total} containers not {verb}"`).
pub fn for_each_container(
    names: &[String],
    verb: &str,
    mut action: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut failed = 0;
    for name in names {
        match action(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("bulkhead: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} containers not {verb}", names.len());
    }
    Ok(())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Human-readable byte count.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// "3 minutes ago" style age of a Unix timestamp.
pub fn ago(t: u64) -> String {
    let d = crate::state::now().saturating_sub(t);
    match d {
        0..=59 => format!("{d} seconds ago"),
        60..=3599 => format!("{} minutes ago", d / 60),
        3600..=86399 => format!("{} hours ago", d / 3600),
        _ => format!("{} days ago", d / 86400),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bulkhead_sandbox::config::VENDOR_DEFAULTS_PATH;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The configuration files the repository ships (`config/*.toml`).
    fn shipped() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no configuration in {}", dir.display());
        files
    }

    #[test]
    fn every_shipped_configuration_loads_through_the_cli() {
        for file in shipped() {
            let cli = Cli::try_parse_from(["bulkhead", "--config", file.to_str().unwrap(), "ps"])
                .unwrap();
            let ctx =
                context_in(&cli, &env(&[])).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
            let expected = Config::load(&[
                Layer::OptionalFile(VENDOR_DEFAULTS_PATH.into()),
                Layer::File(file.clone()),
            ])
            .unwrap();
            assert_eq!(ctx.cfg, expected, "{}", file.display());
            assert_eq!(
                ctx.cfg.containers_dir(),
                ctx.cfg.run_root.join("containers")
            );
            if file.ends_with("bulkhead.toml") && !Path::new(VENDOR_DEFAULTS_PATH).exists() {
                assert_eq!(ctx.cfg, Config::default());
            }
        }
    }

    #[test]
    fn flags_over_environment_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "store_root = \"/file/store\"\nrun_root = \"/file/run\"\n[cli]\nisolation = \"container\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let cli = Cli::try_parse_from(["bulkhead", "--config", f, "ps"]).unwrap();
        let ctx = context_in(&cli, &env(&[("BULKHEAD_RUN_ROOT", "/env/run")])).unwrap();
        assert_eq!(ctx.cfg.store_root, Path::new("/file/store"));
        assert_eq!(ctx.cfg.run_root, Path::new("/env/run"));
        assert_eq!(ctx.cfg.cli.isolation, config::Isolation::Container);
        let cli = Cli::try_parse_from([
            "bulkhead",
            "--config",
            f,
            "--run-root",
            "/flag/run",
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "ps",
        ])
        .unwrap();
        let ctx = context_in(&cli, &env(&[("BULKHEAD_RUN_ROOT", "/env/run")])).unwrap();
        assert_eq!(ctx.cfg.run_root, Path::new("/flag/run"));
        let args: Vec<String> = ctx
            .global_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.ends_with(&[
                "--log-format".to_owned(),
                "json".to_owned(),
                "--log-level".to_owned(),
                "debug".to_owned()
            ]),
            "{args:?}"
        );
        let cli =
            Cli::try_parse_from(["bulkhead", "--config", f, "--log-level", "loud", "ps"]).unwrap();
        let err = context_in(&cli, &env(&[])).err().unwrap();
        assert!(format!("{err:#}").contains("--log-level"), "{err:#}");
    }
}
