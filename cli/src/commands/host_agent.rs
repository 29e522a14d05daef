//! `bulkhead __agent` (hidden): the guest agent's library run on the host for
//! `--isolation container`, so both isolation modes create containers with the same code.
//! It runs in its own mount namespace where `/sys/fs/cgroup` is the cgroup2 hierarchy
//! (hosts with the v1/v2 hybrid layout have it at `/sys/fs/cgroup/unified`), and dies
//! with its supervisor.

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's own flags (--listen, --stdio-listen, --state-dir, --log).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

fn is_cgroup2(p: &str) -> bool {
    statfs(p)
        .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// A private mount namespace with cgroup2 at /sys/fs/cgroup.
fn enter_mount_namespace() -> anyhow::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private")?;
    if is_cgroup2("/sys/fs/cgroup") {
        return Ok(());
    }
    if !is_cgroup2("/sys/fs/cgroup/unified") {
        bail!("this host has no cgroup2 hierarchy (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)");
    }
    mount(
        Some("/sys/fs/cgroup/unified"),
        "/sys/fs/cgroup",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("binding the cgroup2 hierarchy on /sys/fs/cgroup")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid().as_raw() == 1 {
        bail!("the supervisor is gone");
    }
    let opts = bulkhead_agent::config::from_args(args.agent_args).map_err(anyhow::Error::msg)?;
    bulkhead_agent::logger::Logger::new(Box::new(std::io::stderr()), opts.log_level).install();
    enter_mount_namespace()?;
    // One thread, as in the guest: libcontainer forks with clone3 and keeps running Rust
    // in the child.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(bulkhead_agent::run(&opts, false))
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
    Ok(())
}
