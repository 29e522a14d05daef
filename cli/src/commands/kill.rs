//! `bulkhead kill [-s SIGNAL]`: send a signal to containers' init processes.

use anyhow::bail;

use super::Ctx;
use crate::control::{self, Request};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Signal name (KILL, SIGTERM, ...) or number.
    #[arg(short = 's', long, default_value = "KILL", value_parser = parse_signal)]
    pub signal: i32,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal {n} out of range"))
        };
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("unknown signal {s:?}"))
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let containers = ctx.containers();
    let rt = super::runtime()?;
    super::for_each_container(&args.containers, "signalled", |c| {
        let s = containers.find(c)?;
        if !s.is_running() {
            bail!("container {c} is not running");
        }
        let sock = containers.dir(&s.id).control_socket();
        rt.block_on(control::call_ok(
            &sock,
            &Request::Kill {
                exec_id: String::new(),
                signal: args.signal,
            },
        ))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("2"), Ok(2));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }
}
