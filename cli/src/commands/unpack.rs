//! `bulkhead image unpack REF DIR`: flatten an image into a directory.

use std::path::PathBuf;

use anyhow::Context;
use bulkhead_images::{Limits, Store};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Maximum bytes of file data per layer.
    #[arg(long)]
    pub max_layer_bytes: Option<u64>,
    /// Maximum entries per layer.
    #[arg(long)]
    pub max_entries: Option<u64>,
    pub reference: String,
    pub dir: PathBuf,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let rec = store.get_image(&args.reference)?;
    let mut limits = Limits::default();
    if let Some(b) = args.max_layer_bytes {
        limits.max_layer_bytes = b;
    }
    if let Some(n) = args.max_entries {
        limits.max_entries = n;
    }
    let stats = bulkhead_images::unpack_image(store, &rec, &args.dir, &limits)
        .with_context(|| format!("unpacking {} into {}", rec.name, args.dir.display()))?;
    println!(
        "{}: {} entries, {} into {}",
        rec.name,
        stats.entries,
        super::human(stats.bytes),
        args.dir.display()
    );
    Ok(())
}
