//! `bulkhead rm [-f]`: remove stopped containers (`-f`: kill running ones first). Leaves no
//! VMM, virtiofsd, mount, socket, directory, address or network namespace behind, also
//! after a supervisor crashed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::bail;
use bulkhead_sandbox::cgroup::Cgroup2;
use bulkhead_sandbox::leftovers;

use super::stop::wait_supervisor;
use super::Ctx;
use crate::control::{self, Request};
use crate::state::{Containers, State};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kill and remove running containers.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// SIGKILLs the supervisor recorded in `s`, only while its pid is still that process (the
/// recorded start time, as [`State::supervisor_alive`] checks it): a pid reused by another
/// process is never signalled. The pid is pinned with a pidfd before the check, so the
/// process checked is the one signalled. Returns whether the signal was sent.
fn kill_supervisor(s: &State) -> bool {
    let Some(pid) = s.supervisor_pid.filter(|&p| p > 1) else {
        return false;
    };
    let Some(pidfd) = pidfd_open(pid) else {
        return false;
    };
    if !s.supervisor_alive() {
        log::debug!(
            "pid {pid} is no longer the supervisor of {}: not killed",
            s.id
        );
        return false;
    }
    // SAFETY: pidfd_send_signal(2) with a pidfd we own, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the fd was just returned by the kernel and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Cleans what a dead supervisor left: the VMM and virtiofsd, the sandbox run dir, the
/// container's cgroup, its network.
fn clean_leftovers(ctx: &Ctx, s: &State) -> anyhow::Result<()> {
    if let Some(dir) = &s.sandbox_dir {
        // The VMM and virtiofsd were started by the dead supervisor: virtiofsd's command
        // line names the run directory, the (jailed) VMM's pid is recorded in it.
        let killed = leftovers::kill_processes_using(dir);
        bulkhead_sandbox::run_dir::remove_tree(dir)?;
        let left = leftovers::wait_gone(&killed, Duration::from_secs(3));
        if !left.is_empty() {
            log::warn!("processes {left:?} of {} are still ending", dir.display());
        }
        // The jailed VMM's cgroups, named after the sandbox (the run directory's name).
        if let Some(jail) = ctx.cfg.jail.settings() {
            let name = dir.file_name().and_then(|n| n.to_str());
            if let (Some(parent), Some(name)) = (&jail.cgroup_parent, name) {
                bulkhead_sandbox::jail::cgroup::remove_left_behind(parent, name);
            }
            // The dead supervisor's jail uid: its lock went with it, its file did not.
            bulkhead_sandbox::jail::ids::remove_stale(&jail.ids_dir);
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
            kill_supervisor(&s);
        }
        if !wait_supervisor(&s, Duration::from_secs(30)) {
            kill_supervisor(&s);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{process_start_time, Isolation, RunConfig, Status};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("60").spawn().unwrap()
    }

    fn recorded(pid: u32, start: Option<u64>) -> State {
        State {
            id: "c1".into(),
            name: "c1".into(),
            isolation: Isolation::Container,
            image_digest: String::new(),
            config: RunConfig::default(),
            command: vec![],
            status: Status::Running,
            created_at: 1,
            started_at: None,
            finished_at: None,
            exit_code: None,
            error: None,
            supervisor_pid: Some(pid),
            supervisor_start: start,
            vmm_pid: None,
            sandbox_dir: None,
            network: None,
        }
    }

    #[test]
    fn a_reused_pid_is_not_killed() {
        // A live process that is not the supervisor: its pid with another start time
        // (what a supervisor that died and whose pid was reused leaves in the state).
        let mut bystander = sleeper();
        let pid = bystander.id();
        let start = process_start_time(pid).unwrap();
        assert!(!kill_supervisor(&recorded(pid, Some(start + 1))));
        assert!(!kill_supervisor(&recorded(pid, None)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a process whose start time does not match was killed"
        );

        // The recorded process itself is killed.
        assert!(kill_supervisor(&recorded(pid, Some(start))));
        assert_eq!(bystander.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Gone: nothing to kill, no error.
        assert!(!kill_supervisor(&recorded(pid, Some(start))));
    }
}
