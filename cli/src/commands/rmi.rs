//! `bulkhead rmi`: remove image references.

use anyhow::Context;
use bulkhead_images::Store;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(required = true)]
    pub references: Vec<String>,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    for r in &args.references {
        let rec = store
            .remove_image(r)
            .with_context(|| format!("removing {r}"))?;
        println!("untagged: {}", rec.name);
    }
    Ok(())
}
