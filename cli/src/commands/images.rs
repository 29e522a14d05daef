//! `bulkhead images`: list stored image references.

use bulkhead_images::Store;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print full digests.
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    println!(
        "{:<60} {:<20} {:>7} {:>10}",
        "REFERENCE", "DIGEST", "LAYERS", "SIZE"
    );
    for rec in store.list_images()? {
        let d = rec.manifest_digest.to_string();
        let d = if args.no_trunc {
            d.as_str()
        } else {
            d.get(..19).unwrap_or(&d)
        };
        println!(
            "{:<60} {:<20} {:>7} {:>10}",
            rec.name,
            d,
            rec.layers.len(),
            super::human(rec.size())
        );
    }
    Ok(())
}
