//! What must hold after an `image import` of a hostile input, whatever its outcome: the
//! input and a sentinel next to it are untouched, nothing appears beside the store, every
//! blob in the store is named by its own digest, and every imported record can be found
//! again with all its blobs present.

use std::fs;
use std::path::Path;

use bulkhead_images::{ImageRecord, Store};

use crate::image_spec::sha256_hex;
use crate::snapshot::{self, Snapshot};

/// The layout `<tmp>/{input,sentinel,store}` and the snapshots taken before the import.
pub struct Scene {
    pub tmp: tempfile::TempDir,
    input_before: Snapshot,
    sentinel_before: Snapshot,
}

impl Scene {
    /// `make_input` creates `<tmp>/input`; the sentinel is planted and both are snapshotted.
    pub fn new(make_input: impl FnOnce(&Path)) -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        make_input(&tmp.path().join("input"));
        snapshot::plant_sentinel(&tmp.path().join("sentinel"));
        Scene {
            input_before: snapshot::take(&tmp.path().join("input")),
            sentinel_before: snapshot::take(&tmp.path().join("sentinel")),
            tmp,
        }
    }

    pub fn input(&self) -> std::path::PathBuf {
        self.tmp.path().join("input")
    }

    pub fn store(&self) -> Store {
        Store::open(self.tmp.path().join("store")).expect("store")
    }

    /// Check everything after an import returned `result`.
    pub fn check(&self, store: &Store, result: Option<&[ImageRecord]>) {
        let t = self.tmp.path();
        assert_eq!(
            snapshot::take(&t.join("input")),
            self.input_before,
            "import changed its input"
        );
        assert_eq!(
            snapshot::take(&t.join("sentinel")),
            self.sentinel_before,
            "sentinel changed"
        );
        let mut top: Vec<_> = fs::read_dir(t)
            .expect("tmp")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["input", "sentinel", "store"],
            "something was created beside the store"
        );
        let blobs = t.join("store/blobs/sha256");
        for e in fs::read_dir(&blobs).expect("blobs").flatten() {
            let md = fs::symlink_metadata(e.path()).expect("blob");
            assert!(
                md.file_type().is_file(),
                "blob {:?} is not a regular file",
                e.file_name()
            );
            let data = fs::read(e.path()).expect("blob");
            assert_eq!(
                sha256_hex(&data),
                e.file_name().to_string_lossy(),
                "a blob is stored under another digest"
            );
        }
        for rec in result.unwrap_or_default() {
            let found = store
                .get_image(&rec.name)
                .expect("an imported image can be found");
            assert_eq!(found.manifest_digest, rec.manifest_digest);
            assert!(
                store.has_blob(&rec.manifest_digest),
                "manifest blob missing"
            );
            assert!(store.has_blob(&rec.config_digest), "config blob missing");
            for l in &rec.layers {
                assert!(store.has_blob(&l.digest), "layer blob missing");
            }
        }
    }
}
