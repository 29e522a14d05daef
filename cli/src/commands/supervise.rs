//! `bulkhead supervise ID` (hidden): the daemon that owns a detached container. Started by
//! `run -d` in its own session; its stdout is the pipe `run -d` reads progress and
//! readiness from, its stderr the container's `supervisor.log`.

use std::os::fd::{AsRawFd, FromRawFd};

use anyhow::Context;

use super::Ctx;
use crate::supervisor::{self, Reporter};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Full container id.
    pub id: String,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<i32> {
    // Keep the pipe, and point stdout at /dev/null so nothing else writes into it.
    // SAFETY: dup of our own stdout; the new fd is owned by the File below.
    let fd = unsafe { libc::dup(1) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("dup(stdout)");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto fd 1; both descriptors are valid.
    unsafe { libc::dup2(null.as_raw_fd(), 1) };
    // The supervisor outlives the terminal that started it.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };

    if std::env::var("BULKHEAD_TIMINGS").as_deref() == Ok("1") {
        crate::timings::enable();
    }
    let containers = ctx.containers();
    let dir = containers.dir(&args.id);
    let store = ctx.store()?;
    let report = Reporter::Pipe(std::sync::Mutex::new(Some(pipe)));
    let rt = super::runtime()?;
    let result = rt.block_on(supervisor::supervise(&ctx.cfg, &store, dir, None, report));
    rt.shutdown_background();
    // Into supervisor.log.
    crate::timings::report();
    match result {
        Ok(code) => {
            log::info!("container {} exited with status {code}", args.id);
            Ok(0)
        }
        Err(e) => Err(e),
    }
}
