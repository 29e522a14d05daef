//! `bulkhead rmi`: remove image references, except images a container uses.

use anyhow::Context;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(required = true)]
    pub references: Vec<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    // Leases of removed containers do not keep an image.
    super::gc::drop_stale_leases(ctx, &store)?;
    for r in &args.references {
        let rec = store
            .remove_image(r)
            .with_context(|| format!("removing {r}"))?;
        println!("untagged: {}", rec.name);
    }
    Ok(())
}
