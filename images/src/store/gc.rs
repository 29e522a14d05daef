//! Garbage collection: drop blobs and unpacked layers that no image record and no
//! lease refers to, and leftovers in `tmp/` from crashed pulls.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::Store;
use crate::error::{Error, Result};

/// What a GC run removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub temp_removed: usize,
    pub bytes_freed: u64,
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) fn collect(store: &Store) -> Result<GcReport> {
    let _g = store.lock_exclusive()?;
    let mut report = GcReport::default();
    // Leases first: a lease is only taken while its image's record exists (and the
    // shared lock, which we hold exclusively, is held meanwhile).
    let leased: Vec<_> = store.leases()?.into_iter().map(|l| l.image).collect();
    let mut images = store.list_images()?;
    images.extend(leased);
    let blobs: HashSet<String> = images
        .iter()
        .flat_map(|r| r.blobs().map(|d| d.hex().to_string()))
        .collect();
    let layers: HashSet<String> = images
        .iter()
        .flat_map(|r| r.layers.iter().map(|l| l.diff_id.hex().to_string()))
        .collect();

    let bdir = store.root().join("blobs/sha256");
    for ent in fs::read_dir(&bdir).map_err(|e| Error::io("list blobs", &bdir, e))? {
        let ent = ent.map_err(|e| Error::io("list blobs", &bdir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if !blobs.contains(&name) {
            let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
            remove_any(&ent.path()).map_err(|e| Error::io("remove blob", ent.path(), e))?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }
    }
    let ldir = store.root().join("layers/sha256");
    for ent in fs::read_dir(&ldir).map_err(|e| Error::io("list layers", &ldir, e))? {
        let ent = ent.map_err(|e| Error::io("list layers", &ldir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if !layers.contains(&name) {
            remove_any(&ent.path()).map_err(|e| Error::io("remove layer", ent.path(), e))?;
            report.layers_removed += 1;
        }
    }
    // With the exclusive lock held no pull is running: everything in tmp/ is stale.
    let tdir = store.root().join("tmp");
    for ent in fs::read_dir(&tdir).map_err(|e| Error::io("list temp", &tdir, e))? {
        let ent = ent.map_err(|e| Error::io("list temp", &tdir, e))?;
        remove_any(&ent.path()).map_err(|e| Error::io("remove temp", ent.path(), e))?;
        report.temp_removed += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::store::{ImageRecord, LayerRecord};

    #[test]
    fn gc_keeps_referenced_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let keep = Digest::of(b"keep");
        let drop_ = Digest::of(b"drop");
        let m = Digest::of(b"manifest");
        let c = Digest::of(b"config");
        for (d, b) in [
            (&keep, &b"keep"[..]),
            (&drop_, b"drop"),
            (&m, b"manifest"),
            (&c, b"config"),
        ] {
            s.put_blob_bytes(d, b).unwrap();
        }
        fs::create_dir_all(s.layer_dir(&keep)).unwrap();
        fs::create_dir_all(s.layer_dir(&drop_).join("sub")).unwrap();
        fs::write(s.temp_path("blob"), b"partial").unwrap();
        s.put_image(&ImageRecord {
            name: "x:1".into(),
            index_digest: None,
            manifest_digest: m.clone(),
            config_digest: c.clone(),
            layers: vec![LayerRecord {
                digest: keep.clone(),
                diff_id: keep.clone(),
                media_type: String::new(),
                size: 4,
            }],
        })
        .unwrap();
        let r = s.gc().unwrap();
        assert_eq!(
            (r.blobs_removed, r.layers_removed, r.temp_removed),
            (1, 1, 1)
        );
        assert!(s.has_blob(&keep) && s.has_blob(&m) && s.has_blob(&c));
        assert!(!s.has_blob(&drop_));
        assert!(s.layer_dir(&keep).is_dir() && !s.layer_dir(&drop_).exists());
        s.remove_image("x:1").unwrap();
        let r = s.gc().unwrap();
        assert_eq!(r.blobs_removed, 3);
    }
}
