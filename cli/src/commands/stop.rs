//! `bulkhead stop [-t SECONDS]`: SIGTERM, SIGKILL after the grace period, and wait until
//! the supervisor has torn the container down.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::Ctx;
use crate::control::{self, Request};
use crate::state::State;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to wait after SIGTERM before SIGKILL [default: `container.stop_timeout_secs`, 10].
    #[arg(short = 't', long)]
    pub time: Option<u64>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Waits until the supervisor of `s` is gone (it has unmounted and shut the VM down).
pub fn wait_supervisor(s: &State, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while s.supervisor_alive() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let timeout = args.time.unwrap_or(ctx.cfg.cli.stop_timeout_secs);
    let containers = ctx.containers();
    let rt = super::runtime()?;
    super::for_each_container(&args.containers, "stopped", |c| {
        let s = containers.find(c)?;
        if s.is_running() {
            let sock = containers.dir(&s.id).control_socket();
            rt.block_on(control::call_ok(
                &sock,
                &Request::Stop {
                    timeout_secs: timeout,
                },
            ))?;
            if !wait_supervisor(&s, Duration::from_secs(60)) {
                bail!("container {c} stopped but its supervisor did not finish within 60 s");
            }
        }
        Ok(())
    })
}
