//! `docker save` archives built here (legacy `<id>/layer.tar` layout with a
//! symlinked duplicate layer, and the OCI-style `blobs/sha256/` layout of
//! Docker 25+), imported, unpacked and checked.

mod common;

use std::fs;
use std::path::Path;

use bulkhead_images::{import, unpack_image, Digest, Error, Limits, Store};
use common::{compress, Compression, Layer};

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, path, &[][..]).unwrap();
}

fn append_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o777);
    h.set_entry_type(tar::EntryType::Symlink);
    b.append_link(&mut h, path, target).unwrap();
}

fn layers() -> (Vec<u8>, Vec<u8>) {
    let base = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/os-release", 0o644, b"ID=saved\n")
        .file("etc/gone", 0o644, b"x")
        .file("bin/tool", 0o755, &vec![0x7fu8; 50_000])
        .tar();
    let upper = Layer::new()
        .file("etc/.wh.gone", 0o644, b"")
        .file("app/run.sh", 0o755, b"#!/bin/sh\necho hi\n")
        .tar();
    (base, upper)
}

fn config(diff_ids: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/app/run.sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
    }))
    .unwrap()
}

/// Docker < 25: `<id>/layer.tar`, `<config-hex>.json`; a layer repeated in
/// the image is stored once and symlinked (`../<id>/layer.tar`).
fn legacy_archive(path: &Path) -> Vec<Digest> {
    let (base, upper) = layers();
    let (d1, d2) = (Digest::of(&base), Digest::of(&upper));
    let diff_ids = vec![d1.clone(), d2.clone(), d1.clone()];
    let cfg = config(&diff_ids);
    let cfg_name = format!("{}.json", Digest::of(&cfg).hex());
    let (id1, id2, id3) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let manifest = serde_json::json!([{
        "Config": cfg_name,
        "RepoTags": ["saved/app:1"],
        "Layers": [format!("{id1}/layer.tar"), format!("{id2}/layer.tar"), format!("{id3}/layer.tar")],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    for (id, data) in [(&id1, &base), (&id2, &upper)] {
        append_dir(&mut b, &format!("{id}/"));
        append(&mut b, &format!("{id}/VERSION"), b"1.0");
        append(&mut b, &format!("{id}/json"), b"{}");
        append(&mut b, &format!("{id}/layer.tar"), data);
    }
    append_dir(&mut b, &format!("{id3}/"));
    append_symlink(
        &mut b,
        &format!("{id3}/layer.tar"),
        &format!("../{id1}/layer.tar"),
    );
    append(&mut b, &cfg_name, &cfg);
    append(&mut b, "manifest.json", manifest.to_string().as_bytes());
    append(&mut b, "repositories", br#"{"saved/app":{"1":"x"}}"#);
    fs::write(path, b.into_inner().unwrap()).unwrap();
    diff_ids
}

/// Docker 25+: everything under `blobs/sha256/`, config without `.json`,
/// plus `index.json` and `oci-layout`; one layer gzip-compressed.
fn oci_style_archive(path: &Path, tamper: bool) -> Vec<Digest> {
    let (base, upper) = layers();
    let gz = compress(&upper, Compression::Gzip);
    let mut diff_ids = vec![Digest::of(&base), Digest::of(&upper)];
    if tamper {
        diff_ids[1] = Digest::of(b"not this layer");
    }
    let cfg = config(&diff_ids);
    let blob = |d: &[u8]| format!("blobs/sha256/{}", Digest::of(d).hex());
    let manifest = serde_json::json!([{
        "Config": blob(&cfg),
        "RepoTags": ["saved/oci:2"],
        "Layers": [blob(&base), blob(&gz)],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    append_dir(&mut b, "blobs/");
    append_dir(&mut b, "blobs/sha256/");
    for data in [&base, &gz, &cfg] {
        append(&mut b, &blob(data), data);
    }
    append(
        &mut b,
        "index.json",
        br#"{"schemaVersion":2,"manifests":[]}"#,
    );
    append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    append(&mut b, "manifest.json", manifest.to_string().as_bytes());
    fs::write(path, b.into_inner().unwrap()).unwrap();
    diff_ids
}

fn check_rootfs(out: &Path) {
    assert_eq!(fs::read(out.join("etc/os-release")).unwrap(), b"ID=saved\n");
    assert!(!out.join("etc/gone").exists());
    assert_eq!(
        fs::read(out.join("app/run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(fs::read(out.join("bin/tool")).unwrap().len(), 50_000);
}

#[test]
fn legacy_docker_save_with_symlinked_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("save.tar");
    let diff_ids = legacy_archive(&archive);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let recs = import::docker_archive(&store, &archive, None, false).unwrap();
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.name, "docker.io/saved/app:1");
    let got: Vec<_> = rec.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(got, diff_ids);
    // Uncompressed layers: blob digest is the diff_id; the duplicate is one blob.
    assert_eq!(rec.layers[0].digest, rec.layers[2].digest);
    assert!(rec.layers[0].media_type.ends_with(".tar"));
    assert_eq!(store.get_image("saved/app:1").unwrap().name, rec.name);
    let cfg = store.image_config(rec).unwrap();
    assert_eq!(
        cfg.config().as_ref().unwrap().cmd().as_ref().unwrap(),
        &vec!["/app/run.sh".to_string()]
    );

    let out = tmp.path().join("rootfs");
    unpack_image(&store, rec, &out, &Limits::default()).unwrap();
    // Layer 3 repeats the base: etc/gone comes back.
    assert!(out.join("etc/gone").exists());
    assert_eq!(fs::read(out.join("app/run.sh")).unwrap().len(), 18);
    // Overlay lowerdirs: two distinct layer dirs, three entries.
    let lowers = bulkhead_images::rootfs_layers(&store, rec, &Limits::default()).unwrap();
    assert_eq!(lowers.len(), 3);
    assert_eq!(lowers[0], lowers[2]);

    // Importing again under another name reuses every blob; no temp left.
    let blobs = fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count();
    let again = import::docker_archive(&store, &archive, Some("local/copy:1"), false).unwrap();
    assert_eq!(again[0].manifest_digest, rec.manifest_digest);
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        blobs
    );
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    assert_eq!(store.list_images().unwrap().len(), 2);
}

#[test]
fn oci_style_docker_save() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("save.tar");
    let diff_ids = oci_style_archive(&archive, false);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let recs = import::docker_archive(&store, &archive, None, false).unwrap();
    let rec = &recs[0];
    assert_eq!(rec.name, "docker.io/saved/oci:2");
    assert_eq!(
        rec.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
        diff_ids.iter().collect::<Vec<_>>()
    );
    assert!(rec.layers[1].media_type.ends_with("+gzip"));
    let out = tmp.path().join("rootfs");
    unpack_image(&store, rec, &out, &Limits::default()).unwrap();
    check_rootfs(&out);
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn docker_save_with_wrong_diff_id_fails_to_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("save.tar");
    let diff_ids = oci_style_archive(&archive, true);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let rec = import::docker_archive(&store, &archive, None, false)
        .unwrap()
        .remove(0);
    let err =
        unpack_image(&store, &rec, &tmp.path().join("rootfs"), &Limits::default()).unwrap_err();
    match err {
        Error::DigestMismatch { expected, .. } => assert_eq!(expected, diff_ids[1].to_string()),
        other => panic!("expected a diff_id mismatch, got {other:?}"),
    }
    assert!(bulkhead_images::rootfs_layers(&store, &rec, &Limits::default()).is_err());
    assert!(!store.layer_dir(&diff_ids[1]).exists());
}

#[test]
fn docker_save_with_missing_layer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let cfg = config(&[Digest::of(b"l")]);
    append(&mut b, "c.json", &cfg);
    append(
        &mut b,
        "manifest.json",
        br#"[{"Config":"c.json","RepoTags":["x/y:1"],"Layers":["nope/layer.tar"]}]"#,
    );
    let archive = tmp.path().join("bad.tar");
    fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let err = import::docker_archive(&store, &archive, None, false).unwrap_err();
    assert!(format!("{err}").contains("nope/layer.tar"), "{err}");
    assert!(store.list_images().unwrap().is_empty());
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn import_does_not_replace_another_image_of_the_same_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let first = tmp.path().join("first.tar");
    legacy_archive(&first);
    let second = tmp.path().join("second.tar");
    oci_style_archive(&second, false);
    let a = import::docker_archive(&store, &first, Some("local/app:1"), false).unwrap();
    // The same image again under the same name: nothing changes, no error.
    import::docker_archive(&store, &first, Some("local/app:1"), false).unwrap();
    let err = import::docker_archive(&store, &second, Some("local/app:1"), false).unwrap_err();
    match &err {
        Error::ImageExists { name, existing } => {
            assert_eq!(name, "docker.io/local/app:1");
            assert_eq!(existing, &a[0].manifest_digest.to_string());
        }
        other => panic!("expected ImageExists, got {other:?}"),
    }
    assert_eq!(
        store.get_image("local/app:1").unwrap().manifest_digest,
        a[0].manifest_digest
    );
    let b = import::docker_archive(&store, &second, Some("local/app:1"), true).unwrap();
    assert_eq!(
        store.get_image("local/app:1").unwrap().manifest_digest,
        b[0].manifest_digest
    );
}

#[test]
fn oversized_json_documents_are_refused_before_buffering() {
    let cap = bulkhead_images::MAX_DOCUMENT_BYTES;
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    // A manifest.json above the cap.
    let mut b = tar::Builder::new(Vec::new());
    let mut big = b"[".to_vec();
    big.resize(cap as usize + 10, b' ');
    big.push(b']');
    append(&mut b, "manifest.json", &big);
    let archive = tmp.path().join("big-manifest.tar");
    fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let err = import::docker_archive(&store, &archive, None, false).unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { what, cap: c, .. } if what.contains("manifest.json") && *c == cap),
        "{err:?}"
    );
    assert!(err.to_string().contains(&cap.to_string()), "{err}");
    // A config above the cap.
    let mut b = tar::Builder::new(Vec::new());
    let mut cfg = config(&[]);
    let pad = cap as usize + 1 - cfg.len() + 1;
    cfg.splice(1..1, std::iter::repeat_n(b' ', pad));
    append(&mut b, "c.json", &cfg);
    append(
        &mut b,
        "manifest.json",
        br#"[{"Config":"c.json","RepoTags":["x/y:1"],"Layers":[]}]"#,
    );
    let archive = tmp.path().join("big-config.tar");
    fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let err = import::docker_archive(&store, &archive, None, false).unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { what, .. } if what.contains("image config c.json")),
        "{err:?}"
    );
    assert!(store.list_images().unwrap().is_empty());
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn an_oversized_oci_layout_index_is_refused() {
    let cap = bulkhead_images::MAX_DOCUMENT_BYTES;
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let mut index = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
    index.resize(cap as usize + 1, b'\n');
    fs::write(layout.join("index.json"), &index).unwrap();
    let err = import::oci_layout(&store, &layout, None, false).unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { what, size: Some(s), .. } if what == "index.json" && *s == cap + 1),
        "{err:?}"
    );
    // A manifest blob above the cap, named by a small index.
    let mut manifest = br#"{"schemaVersion":2}"#.to_vec();
    manifest.resize(cap as usize + 1, b' ');
    let d = Digest::of(&manifest);
    fs::write(layout.join("blobs/sha256").join(d.hex()), &manifest).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": d.to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "big:1"}
    }]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let err = import::oci_layout(&store, &layout, None, false).unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { what, .. } if what.starts_with("manifest sha256:")),
        "{err:?}"
    );
}

/// A hostile OCI layout points its files elsewhere: a symlinked index, a manifest blob
/// that is a symlink to `/dev/zero`. Both are refused without reading through them.
#[test]
fn oci_layout_files_are_not_followed_through_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let elsewhere = tmp.path().join("index-elsewhere.json");
    fs::write(&elsewhere, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    std::os::unix::fs::symlink(&elsewhere, layout.join("index.json")).unwrap();
    let err = import::oci_layout(&store, &layout, None, false).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");

    fs::remove_file(layout.join("index.json")).unwrap();
    let d = Digest::of(b"never read");
    std::os::unix::fs::symlink("/dev/zero", layout.join("blobs/sha256").join(d.hex())).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": d.to_string(), "size": 10,
        "annotations": {"org.opencontainers.image.ref.name": "zero:1"}
    }]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let err = import::oci_layout(&store, &layout, None, false).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(store.list_images().unwrap().is_empty());
}
