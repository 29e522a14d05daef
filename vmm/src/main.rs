//! `bulkhead-vmm`: parse flags (the contract's [`VmmArgs`]), set up logging, boot the
//! microVM, exit with a status that says how it ended (`bulkhead_vmm_contract::exit`).

use std::process::ExitCode;

use anyhow::Context;
use bulkhead_vmm::builder::build_microvm;
use bulkhead_vmm::exit_status::STATUS_VMM_ERROR;
use bulkhead_vmm::metrics_report;
use bulkhead_vmm::seccomp::{privileges, Confinement, Identity, RuleOptions};
use bulkhead_vmm::terminal::RawTerminal;
use bulkhead_vmm::vmm_config::{SerialOutput, VmConfig};
use bulkhead_vmm_contract::VmmArgs;
use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    // A panic report that needs no file (no backtrace): it must work under the filters.
    bulkhead_vmm::panic_hook::install();
    // Parsing opens nothing and starts no thread.
    let matches = VmmArgs::command()
        .version(bulkhead_version::LONG)
        .get_matches();
    let args = VmmArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = args.check() {
        // Status 2, like any other usage error.
        VmmArgs::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e)
            .exit();
    }
    // seccomp/confinement: nothing the VMM did not open itself stays reachable, except the
    // descriptors the command line names (`--net fd=N`, `--vsock fd=N`, `--fs TAG=fd=N`).
    let closed = privileges::close_inherited_fds(&args.inherited_fds());
    // Before any thread exists, so SIGUSR1 reaches only the metrics signalfd.
    let blocked = metrics_report::block_report_signal();
    let format = args.log_format.unwrap_or_else(|| {
        bulkhead_vmm::logger::Format::from_env()
            .ok()
            .flatten()
            .unwrap_or_default()
    });
    bulkhead_vmm::logger::init_with_format(args.log_level, format);
    if let Err(e) = closed {
        log::error!("cannot close inherited file descriptors: {e}");
        return ExitCode::from(STATUS_VMM_ERROR as u8);
    }
    if let Err(e) = blocked {
        log::error!("cannot block SIGUSR1 for metrics reports: {e}");
        return ExitCode::from(STATUS_VMM_ERROR as u8);
    }
    match run(&args) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            log::error!("{}", bulkhead_vmm::error_chain(e.as_ref()));
            ExitCode::from(STATUS_VMM_ERROR as u8)
        }
    }
}

fn run(args: &VmmArgs) -> anyhow::Result<i32> {
    let config = VmConfig::from_args(args);
    let identity = Identity {
        uid: args.uid,
        gid: args.gid,
    };
    // The lists depend on the flags (connect only with guest-initiated vsock connections) and
    // on this process's id (tgkill of its own threads only).
    let rules = RuleOptions::for_this_process(args.vsock_guest_connect);
    let confinement = Confinement::compile(args.seccomp, &rules, identity)
        .context("cannot build the seccomp filters")?;
    let mut vm = build_microvm(&config, &confinement).context("cannot start the microVM")?;
    let _raw = (config.serial == SerialOutput::Stdout).then(|| {
        vm.attach_console_input(std::io::stdin());
        RawTerminal::enter()
    });
    // The vsock socket file (of a --vsock path) stays: whoever made its directory removes it,
    // and the next VMM at that path replaces a stale one.
    let result = vm.wait().context("the microVM failed");
    Ok(result?.status())
}
