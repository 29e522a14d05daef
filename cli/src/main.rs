//! `bulkhead`: parse the command line and dispatch to one command module.

mod backend;
mod commands;
mod config;
mod control;
mod logger;
mod network;
mod security;
mod spec;
mod state;
mod supervisor;
mod term;
mod timings;

use clap::Parser;

fn main() {
    let cli = match commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; a usage error exits like
            // Docker's own errors.
            let code = if e.use_stderr() {
                commands::USAGE_STATUS
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<commands::UsageError>().is_some() => {
            eprintln!("bulkhead: {e}");
            commands::USAGE_STATUS
        }
        Err(e) => {
            eprintln!("bulkhead: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            125
        }
    };
    // Leaves without waiting for a blocking stdin reader.
    std::process::exit(code);
}
