//! `bulkhead image gc`: drop the image leases of containers that are gone, then the
//! blobs and layers that no image and no lease refers to. Also the lease helpers of the
//! container commands (`run` takes a lease, `rm` releases it, `rmi` and `gc` drop the
//! stale ones).

use std::collections::HashSet;

use anyhow::Context;
use bulkhead_images::Store;

use super::Ctx;
use crate::config::RunLayout;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(ctx: &Ctx, _args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let dropped = drop_stale_leases(ctx, &store)?;
    let r = store.gc()?;
    println!(
        "removed {} blobs ({}), {} unpacked layers, {} temp entries, {} stale leases",
        r.blobs_removed,
        super::human(r.bytes_freed),
        r.layers_removed,
        r.temp_removed,
        dropped.len()
    );
    Ok(())
}

/// Drops the leases whose container no longer exists (removed by its supervisor's
/// `--rm`, or a crash between removal and release). Holds the containers lock, under
/// which `run` creates a container and takes its lease, so a container being created is
/// never taken for gone.
pub fn drop_stale_leases(ctx: &Ctx, store: &Store) -> anyhow::Result<Vec<String>> {
    let containers = ctx.containers();
    let _lock = containers.lock()?;
    let dir = ctx.cfg.containers_dir();
    let live: HashSet<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    Ok(store.retain_leases(|holder| live.contains(holder))?)
}

/// Releases a removed container's lease; a failure leaves a stale lease, which the next
/// `rmi` or `gc` drops.
pub fn release_lease(ctx: &Ctx, id: &str) {
    let released = ctx
        .store()
        .and_then(|s| Ok(s.release(id)?))
        .with_context(|| format!("releasing the image lease of {id}"));
    if let Err(e) = released {
        log::warn!("{e:#}");
    }
}
