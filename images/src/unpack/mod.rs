//! Unpacking layers: into per-layer overlayfs lowerdirs in the store
//! ([`ensure_layers`]) or flattened into one directory ([`unpack_image`]).
//! Every layer's uncompressed stream is checked against its diff_id.

mod apply;
pub mod decompress;
mod fsops;
mod guard;
mod gzip;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use crate::limits::Limits;
pub use apply::{Mode, Stats};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::{ImageRecord, LayerRecord, Store};
use decompress::{Decompressed, Pool};
use guard::{Guarded, Violation, Watch};

/// How far (MiB) a layer's decompressor may run ahead of the writer.
const PREFETCH_MIB: usize = 32;

/// Applies one (possibly compressed) layer stream to `dest`, which must
/// exist. Returns what was written. Used by tests and tools; the store uses
/// the threaded path below.
pub fn apply_layer(
    reader: impl Read + Send,
    dest: &Path,
    mode: Mode,
    limits: &Limits,
) -> Result<Stats> {
    let layer = dest.display().to_string();
    let root = fsops::open_dir_path(dest).map_err(|e| Error::io("open unpack target", dest, e))?;
    let r = decompress::decompressor(reader).map_err(|e| Error::Layer {
        layer: layer.clone(),
        source: e,
    })?;
    let mut total = Stats::default();
    let (guarded, watch) = guard_stream(r, limits, &total);
    let mut archive = tar::Archive::new(guarded);
    let stats = {
        let mut ap = apply::Applier::new(root, mode, limits, layer.clone(), &mut total);
        ap.apply(&mut archive)
            .map_err(|e| explain(e, &watch, &layer))?
    };
    // What follows the end-of-archive marker counts too.
    let mut guarded = archive.into_inner();
    guarded.drain().map_err(|e| {
        let e = Error::Layer {
            layer: layer.clone(),
            source: e,
        };
        explain(e, &watch, &layer)
    })?;
    Ok(Stats {
        stream_bytes: guarded.consumed(),
        ..stats
    })
}

/// Wraps a layer's decompressed stream in its byte budget: the layer limit, or what is
/// left of the image's.
fn guard_stream<R: Read>(r: R, limits: &Limits, total: &Stats) -> (Guarded<R>, Watch) {
    let image_left = limits.max_image_bytes.saturating_sub(total.stream_bytes);
    if image_left < limits.max_layer_bytes {
        Guarded::new(r, image_left, Violation::ImageBytes(limits.max_image_bytes))
    } else {
        Guarded::new(
            r,
            limits.max_layer_bytes,
            Violation::LayerBytes(limits.max_layer_bytes),
        )
    }
}

/// The bound behind an error, if the guard broke one (the tar reader reports it as an
/// I/O error of its own).
fn explain(e: Error, watch: &Watch, layer: &str) -> Error {
    match watch.violation() {
        Some(v) => Error::LimitExceeded {
            layer: layer.to_string(),
            what: v.to_string(),
        },
        None => e,
    }
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
    let name = layer.digest.to_string();
    let root = fsops::open_dir_path(dest).map_err(|e| Error::io("open unpack target", dest, e))?;
    let (guarded, watch) = guard_stream(stream, limits, total);
    let mut archive = tar::Archive::new(guarded);
    let stats = {
        let mut ap = apply::Applier::new(root, mode, limits, name.clone(), total);
        ap.apply(&mut archive)
            .map_err(|e| explain(e, &watch, &name))?
    };
    // What follows the end-of-archive marker counts too (and is part of the diff_id).
    let mut guarded = archive.into_inner();
    let drained = guarded.drain();
    total.stream_bytes += guarded.consumed();
    let layer_err = |e| Error::Layer {
        layer: name.clone(),
        source: e,
    };
    drained.map_err(|e| explain(layer_err(e), &watch, &name))?;
    let stream_bytes = guarded.consumed();
    let actual = guarded.into_inner().finish().map_err(layer_err)?;
    check_diff_id(&layer.diff_id, &actual)?;
    Ok(Stats {
        stream_bytes,
        ..stats
    })
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
