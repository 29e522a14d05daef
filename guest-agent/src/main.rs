//! bulkhead-agent: as PID 1 of the guest, mounts the kernel filesystems,
//! reads its options from the kernel command line, logs to the serial
//! console, serves the agent API on vsock and powers off at DestroySandbox.
//! Otherwise (tests) it takes flags and mounts nothing.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result};
use bulkhead_agent::{config, init, logger};
use log::{error, info, warn};

fn main() {
    let pid1 = std::process::id() == 1;
    if !pid1
        && std::env::args()
            .nth(1)
            .is_some_and(|a| a == "-V" || a == "--version")
    {
        println!("bulkhead-agent {}", bulkhead_version::LONG);
        return;
    }
    let code = match run(pid1) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e:#}");
            if !pid1 {
                eprintln!("bulkhead-agent: {e:#}");
            }
            1
        }
    };
    if pid1 {
        // PID 1 must not exit: the kernel would panic instead of a clean end.
        init::power_off();
    }
    std::process::exit(code);
}

fn run(pid1: bool) -> Result<()> {
    let (opts, warnings) = if pid1 {
        // Containers need a root they can pivot_root away from: not rootfs.
        let switch_error = if std::env::var_os(init::SWITCHED_ENV).is_none() {
            init::leave_initramfs().err()
        } else {
            None
        };
        // /proc is not mounted yet: mount first, log after.
        let mounted = init::setup_pid1();
        let console: Box<dyn Write + Send> = match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/console")
        {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(std::io::stderr()),
        };
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let (opts, warnings) = config::from_cmdline(&cmdline);
        logger::install(console, opts.log_level, opts.log_format);
        mounted.context("PID 1 set-up")?;
        init::enable_cgroup_controllers(std::path::Path::new("/sys/fs/cgroup"));
        if let Some(e) = switch_error {
            warn!(
                "staying on the initramfs, containers cannot pivot_root: {}",
                e.chain()
            );
        }
        (opts, warnings)
    } else {
        let opts = config::from_args(std::env::args().skip(1)).map_err(anyhow::Error::msg)?;
        logger::install(Box::new(std::io::stderr()), opts.log_level, opts.log_format);
        (opts, Vec::new())
    };
    for w in warnings {
        warn!("{w}");
    }
    info!(
        "bulkhead-agent {} (protocol {}) starting{}",
        bulkhead_agent::service::AGENT_VERSION,
        bulkhead_protocol::PROTOCOL_VERSION,
        if pid1 { " as PID 1" } else { "" }
    );

    // One thread runs everything async: libcontainer forks with clone3 and
    // keeps running Rust in the child, which is only safe when no other
    // thread can hold a lock the child needs. The only other thread is the
    // reaper's (`reaper::global`); while a container is being built it waits
    // on the spawn guard the builder holds (`Reaper::spawn_guard`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(bulkhead_agent::run(&opts, pid1))
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
    info!("sandbox destroyed");
    Ok(())
}
