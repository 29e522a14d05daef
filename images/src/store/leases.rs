//! Leases: which images the store's users (the CLI's containers) are using, so that
//! `rmi` refuses them and GC keeps their blobs and unpacked layers.
//!
//! A lease is `ROOT/leases/<holder>`, a JSON copy of the image record the holder uses
//! (so it protects that exact image even after its name is re-pulled or replaced),
//! written to `tmp/` and renamed into place. Taking a lease holds the shared store lock
//! (GC cannot run meanwhile) and `locks/leases.lock`, which `rmi` also holds while it
//! checks for leases and removes a record: an image is never removed between a check
//! and a lease. A holder that went away without releasing its lease leaves a stale
//! lease; [`Store::retain_leases`] drops the leases of holders the caller no longer
//! knows.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{sync_dir, ImageRecord, Store};
use crate::error::{Error, Result};
use crate::limits::read_document;

/// One holder's use of one image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub image: ImageRecord,
}

/// Holders are file names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128 bytes.
fn check_holder(holder: &str) -> Result<()> {
    let mut chars = holder.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && holder.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidHolder(holder.to_string()))
    }
}

impl Store {
    fn leases_dir(&self) -> PathBuf {
        self.root().join("leases")
    }

    fn lease_lock(&self) -> Result<super::LockGuard> {
        super::lock::exclusive(&self.root().join("locks/leases.lock"))
    }

    /// Records that `holder` uses the image `rec` (replacing an earlier lease of the same
    /// holder). Fails when the store no longer has `rec` under its name.
    pub fn lease(&self, holder: &str, rec: &ImageRecord) -> Result<()> {
        check_holder(holder)?;
        let _g = self.lock_shared()?;
        let _l = self.lease_lock()?;
        let current = self.get_image(&rec.name)?;
        if current.manifest_digest != rec.manifest_digest {
            return Err(Error::ImageNotFound(format!(
                "{}@{}",
                rec.name, rec.manifest_digest
            )));
        }
        let lease = Lease {
            holder: holder.to_string(),
            image: rec.clone(),
        };
        let json = serde_json::to_vec_pretty(&lease).map_err(|e| Error::json("lease", e))?;
        let tmp = self.temp_path("lease");
        let mut f = File::create(&tmp).map_err(|e| Error::io("create lease", &tmp, e))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("write lease", &tmp, e))?;
        let dst = self.leases_dir().join(holder);
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename lease into place", &dst, e))?;
        sync_dir(&self.leases_dir())
    }

    /// Drops `holder`'s lease; `false` when it had none.
    pub fn release(&self, holder: &str) -> Result<bool> {
        check_holder(holder)?;
        let p = self.leases_dir().join(holder);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove lease", &p, e)),
        }
    }

    fn lease_holders(&self) -> Result<Vec<String>> {
        let dir = self.leases_dir();
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| Error::io("list leases", &dir, e))? {
            let ent = ent.map_err(|e| Error::io("list leases", &dir, e))?;
            out.push(ent.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Every lease, by holder. An unreadable lease is an error (what it protects is
    /// unknown); [`Store::retain_leases`] drops it once its holder is gone.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for holder in self.lease_holders()? {
            let p = self.leases_dir().join(&holder);
            let f = match File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open lease", &p, e)),
            };
            let data = read_document(f, &format!("lease {}", p.display()), "read lease", &p)?;
            let lease: Lease = serde_json::from_slice(&data)
                .map_err(|e| Error::json(format!("lease {holder}"), e))?;
            out.push(lease);
        }
        Ok(out)
    }

    /// The image record `holder` leased, if it holds a lease.
    pub fn leased_image(&self, holder: &str) -> Result<Option<ImageRecord>> {
        Ok(self
            .leases()?
            .into_iter()
            .find(|l| l.holder == holder)
            .map(|l| l.image))
    }

    /// Drops the leases of every holder for which `live` is false (holders that went away
    /// without releasing); returns those holders.
    pub fn retain_leases(&self, live: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let _l = self.lease_lock()?;
        let mut dropped = Vec::new();
        for holder in self.lease_holders()? {
            if live(&holder) {
                continue;
            }
            let p = self.leases_dir().join(&holder);
            match fs::remove_file(&p) {
                Ok(()) => dropped.push(holder),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove lease", &p, e)),
            }
        }
        Ok(dropped)
    }

    /// Removes an image reference (blobs stay until [`Store::gc`]), unless a lease holds
    /// that image (same manifest): the error names the holders.
    pub fn remove_image(&self, name: &str) -> Result<ImageRecord> {
        let _l = self.lease_lock()?;
        let rec = self.get_image(name)?;
        let holders: Vec<String> = self
            .leases()?
            .into_iter()
            .filter(|l| l.image.manifest_digest == rec.manifest_digest)
            .map(|l| l.holder)
            .collect();
        if !holders.is_empty() {
            return Err(Error::ImageInUse {
                name: rec.name,
                holders,
            });
        }
        let p = self.record_path(&rec.name);
        fs::remove_file(&p).map_err(|e| Error::io("remove image record", &p, e))?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::store::LayerRecord;

    fn rec(name: &str, layer: &[u8]) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            index_digest: None,
            manifest_digest: Digest::of(format!("m-{name}-{layer:?}").as_bytes()),
            config_digest: Digest::of(format!("c-{name}").as_bytes()),
            layers: vec![LayerRecord {
                digest: Digest::of(layer),
                diff_id: Digest::of(layer),
                media_type: String::new(),
                size: layer.len() as u64,
            }],
        }
    }

    /// Puts the blobs and unpacked layer of `r` in the store and records it.
    fn put(s: &Store, r: &ImageRecord, layer: &[u8]) {
        s.put_blob_bytes(&r.layers[0].digest, layer).unwrap();
        fs::create_dir_all(s.layer_dir(&r.layers[0].diff_id)).unwrap();
        s.put_image(r).unwrap();
    }

    #[test]
    fn rmi_refuses_a_leased_image_and_names_the_holders() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = rec("a:1", b"layer-a");
        put(&s, &a, b"layer-a");
        s.lease("c1", &a).unwrap();
        s.lease("c2", &a).unwrap();
        assert_eq!(
            s.leased_image("c1").unwrap().map(|r| r.manifest_digest),
            Some(a.manifest_digest.clone())
        );
        assert!(s.leased_image("c3").unwrap().is_none());
        match s.remove_image("a:1") {
            Err(e @ Error::ImageInUse { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("c1") && msg.contains("c2") && msg.contains("a:1"),
                    "{msg}"
                );
            }
            other => panic!("expected ImageInUse, got {other:?}"),
        }
        assert!(s.release("c1").unwrap());
        assert!(!s.release("c1").unwrap());
        assert!(s.remove_image("a:1").is_err());
        s.release("c2").unwrap();
        s.remove_image("a:1").unwrap();
    }

    #[test]
    fn gc_keeps_what_a_lease_holds_even_without_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let old = rec("app:1", b"old-layer");
        put(&s, &old, b"old-layer");
        s.lease("c1", &old).unwrap();
        // The name now points to another image (a re-pull or `import --replace`).
        let new = rec("app:1", b"new-layer");
        put(&s, &new, b"new-layer");
        let r = s.gc().unwrap();
        assert_eq!((r.blobs_removed, r.layers_removed), (0, 0));
        assert!(s.has_blob(&old.layers[0].digest));
        assert!(s.layer_dir(&old.layers[0].diff_id).is_dir());
        // Once the holder is gone (its lease dropped as stale), GC collects.
        assert_eq!(
            s.retain_leases(|h| h == "c2").unwrap(),
            vec!["c1".to_string()]
        );
        let r = s.gc().unwrap();
        assert_eq!((r.blobs_removed, r.layers_removed), (1, 1));
        assert!(!s.has_blob(&old.layers[0].digest));
        assert!(s.has_blob(&new.layers[0].digest));
    }

    #[test]
    fn a_lease_needs_the_image_and_a_safe_holder() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = rec("a:1", b"l");
        assert!(matches!(s.lease("c1", &a), Err(Error::ImageNotFound(_))));
        put(&s, &a, b"l");
        for bad in ["", "../x", ".hidden", "a/b", &"x".repeat(129)] {
            assert!(
                matches!(s.lease(bad, &a), Err(Error::InvalidHolder(_))),
                "{bad}"
            );
        }
        // A record replaced since it was read cannot be leased under the old digest.
        put(&s, &rec("a:1", b"other"), b"other");
        assert!(s.lease("c1", &a).is_err());
        assert!(s.leases().unwrap().is_empty());
    }
}
