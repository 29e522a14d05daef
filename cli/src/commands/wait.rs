//! `bulkhead wait CTR...`: blocks until each container has exited and prints its exit status,
//! one line per container, as `docker wait` does (the command itself exits 0 unless a
//! container is unknown or its status cannot be known).

use std::time::Duration;

use anyhow::{bail, Context};

use super::Ctx;
use crate::control::{self, Request};
use crate::state::{Containers, State};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// The exit status of the container `what`, waiting for it while it runs.
fn wait_one(
    containers: &Containers,
    rt: &tokio::runtime::Runtime,
    what: &str,
) -> anyhow::Result<i32> {
    let s = containers.find(what)?;
    if s.is_running() {
        let sock = containers.dir(&s.id).control_socket();
        let answer = rt.block_on(control::call(
            &sock,
            &Request::Wait {
                exec_id: String::new(),
            },
        ));
        if let Ok((response, _)) = answer {
            if let Some(code) = response.exit_code {
                return Ok(code);
            }
        }
        // The supervisor went away before answering (it records the status first): wait
        // for it to finish, then read what it recorded.
        super::stop::wait_supervisor(&s, Duration::from_secs(60));
    }
    recorded_status(
        &containers
            .find(&s.id)
            .with_context(|| format!("container {what}"))?,
    )
}

fn recorded_status(s: &State) -> anyhow::Result<i32> {
    match (s.exit_code, &s.error) {
        (Some(code), _) => Ok(code),
        (None, Some(error)) => bail!("container {} ended without an exit status: {error}", s.name),
        (None, None) => bail!("container {} ended without an exit status", s.name),
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<i32> {
    let containers = ctx.containers();
    let rt = super::runtime()?;
    let mut failed = 0;
    for what in &args.containers {
        match wait_one(&containers, &rt, what) {
            Ok(code) => println!("{code}"),
            Err(e) => {
                eprintln!("bulkhead: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} containers could not be waited for",
            args.containers.len()
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_state;

    #[test]
    fn a_recorded_status_or_why_there_is_none() {
        let mut s = test_state("abc", "web");
        assert_eq!(recorded_status(&s).unwrap(), 3);
        s.exit_code = None;
        s.error = Some("the VM crashed".into());
        assert_eq!(
            recorded_status(&s).unwrap_err().to_string(),
            "container web ended without an exit status: the VM crashed"
        );
    }
}
