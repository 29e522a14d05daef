//! `bulkhead rm [-f]`: remove stopped containers (`-f`: kill running ones first). Leaves no
//! VMM, virtiofsd, mount, socket, directory, address or network namespace behind, also
//! after a supervisor crashed.

use std::time::Duration;

use anyhow::bail;
use bulkhead_sandbox::cgroup::Cgroup2;
use bulkhead_sandbox::leftovers;

use super::stop::wait_supervisor;
use super::Ctx;
use crate::control::{self, Request};
use crate::state::{process_start_time, Containers, State};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kill and remove running containers.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

fn kill_pid(pid: u32) {
    if pid > 1 && process_start_time(pid).is_some() {
        // SAFETY: kill with a pid and a signal number.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Cleans what a dead supervisor left: the VMM and virtiofsd, the sandbox run dir, the
/// container's cgroup, its network.
fn clean_leftovers(ctx: &Ctx, s: &State) -> anyhow::Result<()> {
    if let Some(dir) = &s.sandbox_dir {
        // The VMM and virtiofsd were started by the dead supervisor; their command lines
        // name the run directory.
        let killed = leftovers::kill_processes_using(dir);
        bulkhead_sandbox::run_dir::remove_tree(dir)?;
        let left = leftovers::wait_gone(&killed, Duration::from_secs(3));
        if !left.is_empty() {
            log::warn!("processes {left:?} of {} are still ending", dir.display());
        }
    }
    if let Some(cg) = Cgroup2::find() {
        if let Err(e) = cg.remove_container_cgroup(&s.id) {
            log::warn!("{:#}", anyhow::Error::new(e));
        }
    }
    // The address, port rules and namespace (after the VMM, whose NIC is in it).
    crate::network::release_state(&ctx.cfg, s)
}

fn remove_one(ctx: &Ctx, containers: &Containers, c: &str, force: bool) -> anyhow::Result<()> {
    let s = containers.find(c)?;
    let dir = containers.dir(&s.id);
    if s.is_running() {
        if !force {
            bail!("container {c} is running: stop it first (`bulkhead stop {c}`) or use `bulkhead rm -f`");
        }
        let rt = super::runtime()?;
        let killed = rt.block_on(control::call_ok(
            &dir.control_socket(),
            &Request::Kill {
                exec_id: String::new(),
                signal: libc::SIGKILL,
            },
        ));
        if let Err(e) = killed {
            log::warn!("{e:#}; killing the supervisor");
            if let Some(pid) = s.supervisor_pid {
                kill_pid(pid);
            }
        }
        if !wait_supervisor(&s, Duration::from_secs(30)) {
            if let Some(pid) = s.supervisor_pid {
                kill_pid(pid);
            }
            wait_supervisor(&s, Duration::from_secs(5));
        }
    } else if s.supervisor_alive() {
        // Exited, and its supervisor is still tearing down: let it finish.
        wait_supervisor(&s, Duration::from_secs(30));
    }
    let _lock = containers.lock()?;
    super::gc::release_lease(ctx, &s.id);
    // A supervisor that finished with --rm may have removed it already.
    if !dir.path.exists() {
        return Ok(());
    }
    let s = dir.read().unwrap_or(s);
    clean_leftovers(ctx, &s)?;
    dir.remove()
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let containers = ctx.containers();
    super::for_each_container(&args.containers, "removed", |c| {
        remove_one(ctx, &containers, c, args.force)
    })
}
