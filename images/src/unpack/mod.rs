//! Unpacking layers: into per-layer overlayfs lowerdirs in the store
//! ([`ensure_layers`]) or flattened into one directory ([`unpack_image`]).
//! Every layer's uncompressed stream is checked against its diff_id.

mod apply;
pub mod decompress;
mod fsops;
mod gzip;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use apply::{Mode, Stats};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::{ImageRecord, LayerRecord, Store};
use decompress::{Decompressed, Pool};

/// How far (MiB) a layer's decompressor may run ahead of the writer.
const PREFETCH_MIB: usize = 32;

/// Bounds against decompression bombs.
#[derive(Clone, Debug)]
pub struct Limits {
    /// File data written per layer.
    pub max_layer_bytes: u64,
    /// File data written per image (all layers).
    pub max_image_bytes: u64,
    /// Tar entries per layer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 32 << 30,
            max_image_bytes: 64 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// Applies one (possibly compressed) layer stream to `dest`, which must
/// exist. Returns what was written. Used by tests and tools; the store uses
/// the threaded path below.
pub fn apply_layer(
    reader: impl Read + Send,
    dest: &Path,
    mode: Mode,
    limits: &Limits,
) -> Result<Stats> {
    let root = fsops::open_dir_path(dest).map_err(|e| Error::io("open unpack target", dest, e))?;
    let r = decompress::decompressor(reader).map_err(|e| Error::Layer {
        layer: dest.display().to_string(),
        source: e,
    })?;
    let mut archive = tar::Archive::new(r);
    let mut total = Stats::default();
    let mut ap = apply::Applier::new(root, mode, limits, dest.display().to_string(), &mut total);
    ap.apply(&mut archive)
}

/// Starts decompressing a stored layer blob; `ahead` MiB may be buffered.
fn open_blob(
    store: &Store,
    layer: &LayerRecord,
    ahead: usize,
    pool: &Pool,
) -> Result<Decompressed> {
    let blob = store.blob_path(&layer.digest);
    if !blob.is_file() {
        return Err(Error::BlobNotFound(layer.digest.to_string()));
    }
    Decompressed::spawn(&blob, ahead, pool.clone())
        .map_err(|e| Error::io("open layer blob", &blob, e))
}

fn apply_blob(
    stream: Decompressed,
    layer: &LayerRecord,
    dest: &Path,
    mode: Mode,
    limits: &Limits,
    total: &mut Stats,
) -> Result<Stats> {
    let root = fsops::open_dir_path(dest).map_err(|e| Error::io("open unpack target", dest, e))?;
    let mut archive = tar::Archive::new(stream);
    let stats = {
        let mut ap = apply::Applier::new(root, mode, limits, layer.digest.to_string(), total);
        ap.apply(&mut archive)?
    };
    let actual = archive.into_inner().finish().map_err(|e| Error::Layer {
        layer: layer.digest.to_string(),
        source: e,
    })?;
    check_diff_id(&layer.diff_id, &actual)?;
    Ok(stats)
}

fn check_diff_id(expected: &Digest, actual: &Digest) -> Result<()> {
    if expected != actual {
        return Err(Error::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// Unpacks (once, shared between images) every layer of `rec` into
/// `layers/sha256/<diff_id>` in overlayfs format. Layers are unpacked in
/// parallel; each lands by rename only when complete and synced.
pub fn ensure_layers(store: &Store, rec: &ImageRecord, limits: &Limits) -> Result<()> {
    let _g = store.lock_shared()?;
    let missing: Vec<&LayerRecord> = rec
        .layers
        .iter()
        .filter(|l| !store.layer_dir(&l.diff_id).is_dir())
        .collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    for chunk in missing.chunks(workers.max(1)) {
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|l| s.spawn(move || ensure_layer(store, l, limits)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Layout("unpack thread panicked".into())))
                })
                .collect()
        });
        for r in results {
            r?;
        }
    }
    Ok(())
}

/// Lower directories for an overlay mount of `rec`, topmost first, unpacking
/// (within `limits`) any layer not yet unpacked.
pub fn rootfs_layers(store: &Store, rec: &ImageRecord, limits: &Limits) -> Result<Vec<PathBuf>> {
    ensure_layers(store, rec, limits)?;
    Ok(rec
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(&l.diff_id))
        .collect())
}

fn ensure_layer(store: &Store, layer: &LayerRecord, limits: &Limits) -> Result<()> {
    let dst = store.layer_dir(&layer.diff_id);
    let _l = store.lock_digest("layer", &layer.diff_id)?;
    if dst.is_dir() {
        return Ok(());
    }
    let tmp = store.temp_path("layer");
    fs::create_dir(&tmp).map_err(|e| Error::io("create temp layer directory", &tmp, e))?;
    let result = (|| {
        let mut total = Stats::default();
        let stream = open_blob(store, layer, 4, &Pool::default())?;
        apply_blob(stream, layer, &tmp, Mode::Overlay, limits, &mut total)?;
        let fd = fsops::open_dir_path(&tmp).map_err(|e| Error::io("open layer", &tmp, e))?;
        fsops::syncfs(fd.as_raw_fd()).map_err(|e| Error::io("syncfs", &tmp, e))?;
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename layer into place", &dst, e))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Flattens all layers of `rec` into `dest` (created if missing; must be
/// empty), applying whiteouts, like `umoci raw unpack`. One syncfs at the end.
pub fn unpack_image(
    store: &Store,
    rec: &ImageRecord,
    dest: &Path,
    limits: &Limits,
) -> Result<Stats> {
    fs::create_dir_all(dest).map_err(|e| Error::io("create unpack target", dest, e))?;
    let nonempty = fs::read_dir(dest)
        .map_err(|e| Error::io("read unpack target", dest, e))?
        .next()
        .is_some();
    if nonempty {
        return Err(Error::io(
            "unpack target is not empty",
            dest,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    let mut total = Stats::default();
    // Layers apply in order, but the next layer's decompression (and
    // diff_id hashing) starts while the current one is being written.
    let pool = Pool::default();
    let mut next = match rec.layers.first() {
        Some(l) => Some(open_blob(store, l, PREFETCH_MIB, &pool)?),
        None => None,
    };
    for (i, layer) in rec.layers.iter().enumerate() {
        let Some(stream) = next.take() else { break };
        if let Some(l) = rec.layers.get(i + 1) {
            next = Some(open_blob(store, l, PREFETCH_MIB, &pool)?);
        }
        apply_blob(stream, layer, dest, Mode::Flatten, limits, &mut total)?;
    }
    let fd = fsops::open_dir_path(dest).map_err(|e| Error::io("open unpack target", dest, e))?;
    fsops::syncfs(fd.as_raw_fd()).map_err(|e| Error::io("syncfs", dest, e))?;
    Ok(total)
}
