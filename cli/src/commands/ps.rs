//! `bulkhead ps`: list containers (running ones, or all with `-a`).

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only print ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Do not truncate ids and commands.
    #[arg(long)]
    pub no_trunc: bool,
}

fn trunc(s: &str, n: usize, no_trunc: bool) -> String {
    if no_trunc || s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let list: Vec<_> = ctx
        .containers()
        .list()
        .into_iter()
        .filter(|s| args.all || s.is_running())
        .collect();
    if args.quiet {
        for s in list {
            println!(
                "{}",
                if args.no_trunc {
                    &s.id
                } else {
                    s.id.get(..12).unwrap_or(&s.id)
                }
            );
        }
        return Ok(());
    }
    println!(
        "{:<12}  {:<24}  {:<22}  {:<16}  {:<12}  {:<9}  {:<24}  NAME",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "ISOLATION", "PORTS"
    );
    for s in list {
        let id = if args.no_trunc {
            s.id.clone()
        } else {
            s.id.get(..12).unwrap_or(&s.id).to_owned()
        };
        let cmd = format!("\"{}\"", s.command.join(" "));
        // Published ports while they are (Docker shows none for a stopped container).
        let ports = if s.is_running() {
            crate::network::ports_column(&s.config.publish)
        } else {
            String::new()
        };
        println!(
            "{:<12}  {:<24}  {:<22}  {:<16}  {:<12}  {:<9}  {:<24}  {}",
            id,
            trunc(&s.config.image, 24, args.no_trunc),
            trunc(&cmd, 22, args.no_trunc),
            super::ago(s.created_at),
            s.display_status(),
            s.isolation.to_string(),
            ports,
            s.name
        );
    }
    Ok(())
}
