//! `image import` of a hostile OCI image layout directory: a structured image (index,
//! manifest, config and layer blobs with the right digests) with damage (wrong digests,
//! missing blobs, blobs replaced by symlinks out of the layout, raw JSON, extra files).
//! Checks: see `bulkhead_fuzz::import_check`.
#![no_main]

use std::fs;

use bulkhead_fuzz::image_spec::{self, ImageSpec, Node};
use bulkhead_fuzz::import_check::Scene;
use bulkhead_images::import;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (ImageSpec, Option<String>, bool)| {
    let (spec, name, replace) = input;
    let files = image_spec::oci_layout(&spec);
    let scene = Scene::new(|dir| {
        fs::create_dir(dir).expect("layout dir");
        for (p, node) in &files {
            if !image_spec::safe_rel(p) {
                continue;
            }
            let path = dir.join(p);
            if let Some(parent) = path.parent() {
                if fs::create_dir_all(parent).is_err() {
                    continue;
                }
            }
            let _ = match node {
                Node::File(d) => fs::write(&path, d),
                Node::Symlink(t) => std::os::unix::fs::symlink(t, &path),
            };
        }
    });
    let store = scene.store();
    let result = import::oci_layout(&store, &scene.input(), name.as_deref(), replace);
    scene.check(&store, result.as_deref().ok());
});
