//! The content-addressed store under a root directory:
//!
//! ```text
//! ROOT/blobs/sha256/<hex>      verified blobs (manifests, configs, layers)
//! ROOT/layers/sha256/<hex>     layers unpacked in overlayfs format, by diff_id
//! ROOT/images/<hex>.json       image records, by sha256 of the reference name
//! ROOT/leases/<holder>         images in use (see [`leases`])
//! ROOT/tmp/                    work in progress; never trusted
//! ROOT/locks/                  flock files (store.lock: GC exclusive, others shared)
//! ```
//!
//! Only an entry renamed into place is complete: blobs are verified and
//! fsynced before the rename, layer directories are synced before theirs.
//!
//! The root is mode 0700 (tightened when it exists with a wider mode), and so is every
//! directory the store creates: unpacked layers keep the set-id bits and owners of the
//! image (the container needs them), so no host user but root may reach them.

mod gc;
pub mod leases;
pub mod lock;
mod records;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use gc::GcReport;
pub use leases::Lease;
pub use lock::LockGuard;
pub use records::{normalize_name, ImageRecord, LayerRecord};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Default store root.
pub const DEFAULT_ROOT: &str = "/var/lib/bulkhead";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Handle on a store root. Cheap to clone; all state is on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, and makes the root 0700.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let private = |p: &Path| {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|e| Error::io("create store directory", p, e))
        };
        private(&root)?;
        let mode = fs::metadata(&root)
            .map_err(|e| Error::io("stat store root", &root, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("make the store root private (0700)", &root, e))?;
        }
        for sub in [
            "blobs/sha256",
            "layers/sha256",
            "images",
            "leases",
            "tmp",
            "locks",
        ] {
            private(&root.join(sub))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Directory of a layer unpacked in overlayfs format, keyed by diff_id.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    /// A fresh, unique path under `tmp/`.
    pub fn temp_path(&self, prefix: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join("tmp")
            .join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()))
    }

    /// Shared lock held by every writer; GC takes it exclusively.
    pub fn lock_shared(&self) -> Result<LockGuard> {
        lock::shared(&self.root.join("locks/store.lock"))
    }

    /// Exclusive store lock (GC).
    pub fn lock_exclusive(&self) -> Result<LockGuard> {
        lock::exclusive(&self.root.join("locks/store.lock"))
    }

    /// Exclusive lock for one digest of one kind (`blob`, `layer`).
    pub fn lock_digest(&self, kind: &str, d: &Digest) -> Result<LockGuard> {
        lock::exclusive(
            &self
                .root
                .join("locks")
                .join(format!("{kind}-{}.lock", d.hex())),
        )
    }

    /// Reads a blob and checks it still hashes to its name.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let data = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::BlobNotFound(d.to_string())
            } else {
                Error::io("read blob", &p, e)
            }
        })?;
        d.verify(&data)?;
        Ok(data)
    }

    /// Verifies `data` against `d` and stores it (no-op when present).
    pub fn put_blob_bytes(&self, d: &Digest, data: &[u8]) -> Result<()> {
        d.verify(data)?;
        if self.has_blob(d) {
            return Ok(());
        }
        let _g = self.lock_digest("blob", d)?;
        if self.has_blob(d) {
            return Ok(());
        }
        let tmp = self.temp_path("blob");
        let mut f = File::create(&tmp).map_err(|e| Error::io("create temp blob", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| Error::io("write temp blob", &tmp, e))?;
        self.commit_blob_file(&tmp, f, d)
    }

    /// fsyncs a fully written and verified temp file and renames it into
    /// place as blob `d`.
    pub fn commit_blob_file(&self, tmp: &Path, file: File, d: &Digest) -> Result<()> {
        file.sync_all()
            .map_err(|e| Error::io("fsync temp blob", tmp, e))?;
        drop(file);
        let dst = self.blob_path(d);
        fs::rename(tmp, &dst).map_err(|e| Error::io("rename blob into place", &dst, e))?;
        sync_dir(&self.root.join("blobs/sha256"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// Saves an image record under its name unless another image has that name: the
    /// same image again is a no-op, another one is [`Error::ImageExists`] unless
    /// `replace`.
    pub fn put_new_image(&self, rec: &ImageRecord, replace: bool) -> Result<()> {
        let _l = self.lock_digest("image", &Digest::of(rec.name.as_bytes()))?;
        if !replace {
            let p = self.record_path(&rec.name);
            match File::open(&p) {
                Ok(f) => {
                    let data =
                        crate::limits::read_document(f, "image record", "read image record", &p)?;
                    let existing: ImageRecord = serde_json::from_slice(&data)
                        .map_err(|e| Error::json("image record", e))?;
                    if existing.manifest_digest != rec.manifest_digest {
                        return Err(Error::ImageExists {
                            name: rec.name.clone(),
                            existing: existing.manifest_digest.to_string(),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("open image record", &p, e)),
            }
        }
        self.put_image(rec)
    }

    /// Saves (or replaces) an image record under its name.
    pub fn put_image(&self, rec: &ImageRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(rec).map_err(|e| Error::json("image record", e))?;
        let dst = self.record_path(&rec.name);
        let tmp = self.temp_path("record");
        let mut f = File::create(&tmp).map_err(|e| Error::io("create image record", &tmp, e))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("write image record", &tmp, e))?;
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename image record", &dst, e))?;
        sync_dir(&self.root.join("images"))
    }

    /// All image records, sorted by name.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| Error::io("list images", &dir, e))? {
            let ent = ent.map_err(|e| Error::io("list images", &dir, e))?;
            let p = ent.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let data = fs::read(&p).map_err(|e| Error::io("read image record", &p, e))?;
            match serde_json::from_slice::<ImageRecord>(&data) {
                Ok(r) => out.push(r),
                Err(e) => log::warn!("skipping unreadable image record {}: {e}", p.display()),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Finds an image by reference name, manifest digest, or a hex prefix
    /// (at least 12 characters) of its manifest digest.
    pub fn get_image(&self, name: &str) -> Result<ImageRecord> {
        let norm = normalize_name(name);
        let images = self.list_images()?;
        if let Some(r) = images.iter().find(|r| r.name == norm || r.name == name) {
            return Ok(r.clone());
        }
        let prefix = name.strip_prefix("sha256:").unwrap_or(name);
        if prefix.len() >= 12 {
            let hits: Vec<_> = images
                .iter()
                .filter(|r| r.manifest_digest.hex().starts_with(prefix))
                .collect();
            if let Some(first) = hits.first() {
                if hits
                    .iter()
                    .all(|r| r.manifest_digest == first.manifest_digest)
                {
                    return Ok((*first).clone());
                }
            }
        }
        Err(Error::ImageNotFound(name.to_string()))
    }

    /// Parsed image config of a stored image.
    pub fn image_config(&self, rec: &ImageRecord) -> Result<oci_spec::image::ImageConfiguration> {
        let data = self.read_blob(&rec.config_digest)?;
        serde_json::from_slice(&data).map_err(|e| Error::json("image config", e))
    }

    /// Removes blobs and unpacked layers that no image record and no lease refers to,
    /// and stale temp files. Waits for running pulls (they hold the shared lock).
    pub fn gc(&self) -> Result<GcReport> {
        gc::collect(self)
    }
}

/// fsyncs a directory so that a rename inside it is durable.
pub(crate) fn sync_dir(p: &Path) -> Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .open(p)
        .map_err(|e| Error::io("open directory", p, e))?;
    f.sync_all().map_err(|e| Error::io("fsync directory", p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, layers: &[&[u8]]) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            index_digest: None,
            manifest_digest: Digest::of(name.as_bytes()),
            config_digest: Digest::of(b"config"),
            layers: layers
                .iter()
                .map(|l| LayerRecord {
                    digest: Digest::of(l),
                    diff_id: Digest::of(l),
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    size: l.len() as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn blobs_are_verified_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"abc");
        assert!(matches!(
            s.put_blob_bytes(&d, b"abd"),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(!s.has_blob(&d));
        s.put_blob_bytes(&d, b"abc").unwrap();
        s.put_blob_bytes(&d, b"abc").unwrap();
        assert_eq!(s.read_blob(&d).unwrap(), b"abc");
        // a corrupted blob on disk is detected on read
        fs::write(s.blob_path(&d), b"xyz").unwrap();
        assert!(s.read_blob(&d).is_err());
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn the_root_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let fresh = dir.path().join("new/store");
        let s = Store::open(&fresh).unwrap();
        assert_eq!(mode(s.root()), 0o700);
        assert_eq!(mode(&s.root().join("layers/sha256")), 0o700);
        // An existing store made with the default umask is tightened.
        let old = dir.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
    }

    #[test]
    fn a_new_image_does_not_replace_another_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = rec("local/app:1", &[b"a"]);
        s.put_new_image(&a, false).unwrap();
        // The same image again is fine.
        s.put_new_image(&a, false).unwrap();
        let mut b = rec("local/app:1", &[b"b"]);
        b.manifest_digest = Digest::of(b"another manifest");
        match s.put_new_image(&b, false) {
            Err(e @ Error::ImageExists { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("local/app:1") && msg.contains(&a.manifest_digest.to_string()),
                    "{msg}"
                );
            }
            other => panic!("expected ImageExists, got {other:?}"),
        }
        assert_eq!(s.get_image("local/app:1").unwrap(), a);
        s.put_new_image(&b, true).unwrap();
        assert_eq!(s.get_image("local/app:1").unwrap(), b);
    }

    #[test]
    fn records_roundtrip_list_lookup_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_image(&rec("localhost:5000/a:1", &[b"l1"])).unwrap();
        s.put_image(&rec("localhost:5000/b:1", &[b"l1", b"l2"]))
            .unwrap();
        assert_eq!(s.list_images().unwrap().len(), 2);
        let b = s.get_image("localhost:5000/b:1").unwrap();
        assert_eq!(b.layers.len(), 2);
        let by_digest = s.get_image(&b.manifest_digest.hex()[..12]).unwrap();
        assert_eq!(by_digest.name, b.name);
        s.remove_image("localhost:5000/a:1").unwrap();
        assert!(matches!(
            s.get_image("localhost:5000/a:1"),
            Err(Error::ImageNotFound(_))
        ));
        assert_eq!(s.list_images().unwrap().len(), 1);
    }
}
