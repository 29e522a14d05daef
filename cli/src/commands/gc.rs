//! `bulkhead image gc`: drop unreferenced blobs and layers.

use bulkhead_images::Store;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(store: &Store, _args: Args) -> anyhow::Result<()> {
    let r = store.gc()?;
    println!(
        "removed {} blobs ({}), {} unpacked layers, {} temp entries",
        r.blobs_removed,
        super::human(r.bytes_freed),
        r.layers_removed,
        r.temp_removed
    );
    Ok(())
}
