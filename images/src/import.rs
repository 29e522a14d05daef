//! Offline import: an OCI image layout directory or a `docker save`
//! tarball, every blob verified on the way into the store. JSON documents (index.json,
//! manifest.json, manifests, indexes, configs) are refused above
//! [`MAX_DOCUMENT_BYTES`] before they are buffered; layers are streamed. An image is
//! not recorded under a name another image has, unless the caller says `replace`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::limits::{read_document, too_large, MAX_DOCUMENT_BYTES};
use crate::pull::{layer_records, select_platform};
use crate::store::{normalize_name, ImageRecord, Store};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Opens a file of an image layout: a regular file, not through a symlink (a hostile layout
/// could point a blob at `/dev/zero` or at a host file).
fn open_layout_file(p: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| Error::io("open", p, e))?;
    let meta = f.metadata().map_err(|e| Error::io("stat", p, e))?;
    if !meta.is_file() {
        return Err(Error::Layout(format!(
            "{} is not a regular file",
            p.display()
        )));
    }
    Ok(f)
}

/// Reads the JSON document at `p` (`what` names it), refusing one above the cap.
fn read_file_document(p: &Path, what: &str) -> Result<Vec<u8>> {
    let f = open_layout_file(p)?;
    let size = f.metadata().map_err(|e| Error::io("stat", p, e))?.len();
    if size > MAX_DOCUMENT_BYTES {
        return Err(too_large(what, Some(size), MAX_DOCUMENT_BYTES));
    }
    read_document(f, what, "read", p)
}

/// Streams `src` into the store as blob `expected` (verified), unless present.
fn copy_blob(store: &Store, mut src: impl Read, expected: &Digest) -> Result<()> {
    if store.has_blob(expected) {
        return Ok(());
    }
    let (tmp, d, _) = stream_to_temp(store, &mut src)?;
    if &d != expected {
        let _ = fs::remove_file(&tmp);
        return Err(Error::DigestMismatch {
            expected: expected.to_string(),
            actual: d.to_string(),
        });
    }
    commit(store, &tmp, &d)
}

fn stream_to_temp(store: &Store, src: &mut impl Read) -> Result<(PathBuf, Digest, u64)> {
    let tmp = store.temp_path("import");
    let f = File::create(&tmp).map_err(|e| Error::io("create temp blob", &tmp, e))?;
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, f));
    io::copy(src, &mut w).map_err(|e| Error::io("copy blob", &tmp, e))?;
    let (bw, d, n) = w.finish();
    bw.into_inner()
        .map_err(|e| Error::io("write temp blob", &tmp, e.into_error()))?;
    Ok((tmp, d, n))
}

fn commit(store: &Store, tmp: &Path, d: &Digest) -> Result<()> {
    let _l = store.lock_digest("blob", d)?;
    if store.has_blob(d) {
        let _ = fs::remove_file(tmp);
        return Ok(());
    }
    let f = File::open(tmp).map_err(|e| Error::io("open temp blob", tmp, e))?;
    store.commit_blob_file(tmp, f, d)
}

fn read_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::json(what, e))
}

/// Imports the image(s) of an OCI layout. With `name`, only the manifest
/// whose ref-name annotation matches (or the only one) is imported. An image whose
/// name another image has is refused unless `replace`.
pub fn oci_layout(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
    replace: bool,
) -> Result<Vec<ImageRecord>> {
    let _g = store.lock_shared()?;
    let blob = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    // Manifests, indexes and configs: JSON read into memory.
    let read = |d: &Digest, what: &str| -> Result<Vec<u8>> {
        let data = read_file_document(&blob(d), &format!("{what} {d}"))?;
        d.verify(&data)?;
        Ok(data)
    };
    let ip = dir.join("index.json");
    let index: ImageIndex = read_json(&read_file_document(&ip, "index.json")?, "index.json")?;
    let mut entries: Vec<_> = index.manifests().iter().collect();
    if let Some(n) = name {
        let tag = n.rsplit_once(':').map(|(_, t)| t).unwrap_or(n);
        let hit: Vec<_> = entries
            .iter()
            .copied()
            .filter(|m| {
                m.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|r| r == n || r == tag)
            })
            .collect();
        if !hit.is_empty() {
            entries = hit;
        } else if entries.len() != 1 {
            return Err(Error::Layout(format!(
                "no manifest named {n:?} in {}",
                dir.display()
            )));
        }
        entries.truncate(1);
    }
    let mut out = Vec::new();
    for desc in entries {
        let rec_name = match name {
            Some(n) => normalize_name(n),
            None => desc
                .annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .map(|r| normalize_name(r))
                .ok_or_else(|| {
                    Error::Layout("manifest has no ref name: give a reference".into())
                })?,
        };
        let mut md = Digest::parse(desc.digest().as_ref())?;
        let mut mraw = read(&md, "manifest")?;
        let mut index_digest = None;
        let is_index = serde_json::from_slice::<serde_json::Value>(&mraw)
            .map(|v| v.get("manifests").is_some())
            .unwrap_or(false);
        if is_index {
            let idx: ImageIndex = read_json(&mraw, "image index")?;
            let e =
                select_platform(&idx).ok_or_else(|| Error::NoMatchingPlatform(md.to_string()))?;
            store.put_blob_bytes(&md, &mraw)?;
            index_digest = Some(md);
            md = Digest::parse(e.digest().as_ref())?;
            mraw = read(&md, "manifest")?;
        }
        let manifest: ImageManifest = read_json(&mraw, "image manifest")?;
        let cd = Digest::parse(manifest.config().digest().as_ref())?;
        let craw = read(&cd, "image config")?;
        let config: ImageConfiguration = read_json(&craw, "image config")?;
        let layers = layer_records(&manifest, &config)?;
        for l in &layers {
            let p = blob(&l.digest);
            let f = open_layout_file(&p)?;
            let size = f.metadata().map_err(|e| Error::io("stat", &p, e))?.len();
            if size != l.size {
                return Err(Error::SizeMismatch {
                    digest: l.digest.to_string(),
                    expected: l.size,
                    actual: size,
                });
            }
            // At most the size the manifest declares, whatever the file does meanwhile.
            copy_blob(store, f.take(l.size), &l.digest)?;
        }
        store.put_blob_bytes(&cd, &craw)?;
        store.put_blob_bytes(&md, &mraw)?;
        let rec = ImageRecord {
            name: rec_name,
            index_digest,
            manifest_digest: md,
            config_digest: cd,
            layers,
        };
        store.put_new_image(&rec, replace)?;
        out.push(rec);
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn clean(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

/// Imports the images of a `docker save` tarball (legacy and OCI-style). An image whose
/// name another image has is refused unless `replace`.
pub fn docker_archive(
    store: &Store,
    file: &Path,
    name: Option<&str>,
    replace: bool,
) -> Result<Vec<ImageRecord>> {
    let _g = store.lock_shared()?;
    let f = File::open(file).map_err(|e| Error::io("open archive", file, e))?;
    let mut ar = tar::Archive::new(io::BufReader::with_capacity(1 << 20, f));
    let mut files: HashMap<String, (PathBuf, Digest, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut manifest_json: Option<Vec<u8>> = None;
    let bad = |e: io::Error| Error::io("read archive", file, e);
    let result = (|| -> Result<Vec<ImageRecord>> {
        for entry in ar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
            match entry.header().entry_type() {
                tar::EntryType::Regular => {
                    if path == "manifest.json" {
                        let what = "the archive's manifest.json";
                        if entry.size() > MAX_DOCUMENT_BYTES {
                            return Err(too_large(what, Some(entry.size()), MAX_DOCUMENT_BYTES));
                        }
                        manifest_json =
                            Some(read_document(&mut entry, what, "read archive", file)?);
                    } else {
                        let t = stream_to_temp(store, &mut entry)?;
                        files.insert(path, t);
                    }
                }
                tar::EntryType::Symlink => {
                    if let Some(t) = entry.link_name_bytes() {
                        let t = String::from_utf8_lossy(&t).into_owned();
                        let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                        let joined = clean(&base.join(t).to_string_lossy());
                        let mut parts: Vec<&str> = Vec::new();
                        for c in joined.split('/') {
                            match c {
                                ".." => {
                                    parts.pop();
                                }
                                "." | "" => {}
                                c => parts.push(c),
                            }
                        }
                        links.insert(path, parts.join("/"));
                    }
                }
                _ => {}
            }
        }
        let manifests: Vec<DockerManifest> = read_json(
            manifest_json
                .as_deref()
                .ok_or_else(|| Error::Layout("archive has no manifest.json".into()))?,
            "manifest.json",
        )?;
        if name.is_some() && manifests.len() != 1 {
            return Err(Error::Layout(
                "archive holds several images: cannot name them all".into(),
            ));
        }
        let mut out = Vec::new();
        for m in manifests {
            let mut ckey = clean(&m.config);
            if let Some(t) = links.get(&ckey) {
                ckey = t.clone();
            }
            // Docker 25+ keeps the config as `blobs/sha256/<hex>` (no .json).
            let craw: Vec<u8> = match files.get(&ckey) {
                Some((tmp, _, _)) => {
                    read_file_document(tmp, &format!("image config {}", m.config))?
                }
                None => return Err(Error::Layout(format!("config {} missing", m.config))),
            };
            let craw = &craw;
            let cd = Digest::of(craw);
            let config: ImageConfiguration = read_json(craw, "image config")?;
            let mut layer_descs = Vec::new();
            for l in &m.layers {
                let mut key = clean(l);
                if let Some(t) = links.get(&key) {
                    key = t.clone();
                }
                let (tmp, d, size) = files
                    .get(&key)
                    .ok_or_else(|| Error::Layout(format!("layer {l} missing")))?;
                let mut head = [0u8; 4];
                let n = File::open(tmp)
                    .and_then(|mut f| f.read(&mut head))
                    .unwrap_or(0);
                let mt = match head.get(..n) {
                    Some([0x1f, 0x8b, ..]) => "application/vnd.oci.image.layer.v1.tar+gzip",
                    Some([0x28, 0xb5, 0x2f, 0xfd]) => "application/vnd.oci.image.layer.v1.tar+zstd",
                    _ => "application/vnd.oci.image.layer.v1.tar",
                };
                if !store.has_blob(d) {
                    let copy = store.temp_path("import");
                    fs::copy(tmp, &copy).map_err(|e| Error::io("copy layer", &copy, e))?;
                    commit(store, &copy, d)?;
                }
                layer_descs.push(
                    serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": size}),
                );
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": craw.len()},
                "layers": layer_descs,
            });
            let mraw = serde_json::to_vec(&manifest).map_err(|e| Error::json("manifest", e))?;
            let md = Digest::of(&mraw);
            let parsed: ImageManifest = read_json(&mraw, "image manifest")?;
            let layers = layer_records(&parsed, &config)?;
            store.put_blob_bytes(&cd, craw)?;
            store.put_blob_bytes(&md, &mraw)?;
            let rec_name = match (name, m.repo_tags.as_ref().and_then(|t| t.first())) {
                (Some(n), _) => normalize_name(n),
                (None, Some(t)) => normalize_name(t),
                (None, None) => format!("sha256:{}", md.hex()),
            };
            let rec = ImageRecord {
                name: rec_name,
                index_digest: None,
                manifest_digest: md,
                config_digest: cd,
                layers,
            };
            store.put_new_image(&rec, replace)?;
            out.push(rec);
        }
        Ok(out)
    })();
    for (tmp, _, _) in files.values() {
        let _ = fs::remove_file(tmp);
    }
    result
}
