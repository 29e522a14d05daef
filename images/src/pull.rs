//! Pulling images from OCI registries with `oci-client`: manifest (or index
//! resolved to linux/amd64), config and layers, each verified against its
//! digest and size; layers fetched concurrently straight into the store.
//! A pull interrupted mid-layer keeps `tmp/partial-<hex>` and resumes it
//! with a range request; blobs already stored are never fetched again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::{Arc, Once};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::limits::{too_large, MAX_DOCUMENT_BYTES};
use crate::store::{ImageRecord, LayerRecord, Store};

pub use oci_client::secrets::RegistryAuth as Auth;

/// Media types this puller accepts for manifests.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Layer media types that can be unpacked (compression is detected from
/// the content).
pub const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// Progress callbacks for a pull (called from async tasks; keep them quick).
pub trait Progress: Send + Sync {
    fn layer_start(&self, _digest: &Digest, _size: u64, _cached: bool) {}
    fn layer_bytes(&self, _digest: &Digest, _fetched: u64) {}
    fn layer_done(&self, _digest: &Digest) {}
}

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    /// Talk plain HTTP to the registry (only when the user asks).
    pub plain_http: bool,
    pub auth: RegistryAuth,
    /// Layers fetched at once.
    pub max_concurrent: usize,
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            plain_http: false,
            auth: RegistryAuth::Anonymous,
            max_concurrent: 4,
            progress: None,
        }
    }
}

fn registry_err(
    what: impl Into<String>,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error {
    let what = what.into();
    move |source| Error::Registry { what, source }
}

fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Parses a reference the way the registry client does.
pub fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse::<Reference>()
        .map_err(|source| Error::InvalidReference {
            reference: reference.to_string(),
            source,
        })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Layout(format!("blocking task failed: {e}")))?
}

/// Pulls `reference` into `store` and records it under its full name.
pub async fn pull(store: &Store, reference: &str, opts: &PullOptions) -> Result<ImageRecord> {
    install_crypto();
    let image = parse_reference(reference)?;
    let config = ClientConfig {
        protocol: if opts.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    };
    let client = Client::try_from(config).map_err(registry_err("client set-up"))?;
    let s = store.clone();
    let _guard = blocking(move || s.lock_shared()).await?;

    client
        .auth(&image, &opts.auth, RegistryOperation::Pull)
        .await
        .map_err(registry_err(format!(
            "authentication to {}",
            image.resolve_registry()
        )))?;

    let (raw, _) = client
        .pull_manifest_raw(&image, &opts.auth, MANIFEST_TYPES)
        .await
        .map_err(registry_err(format!("manifest of {}", image.whole())))?;
    // oci-client has already buffered it; at least it goes no further.
    if raw.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(too_large(
            format!("manifest of {}", image.whole()),
            Some(raw.len() as u64),
            MAX_DOCUMENT_BYTES,
        ));
    }
    let top_digest = Digest::of(&raw);
    if let Some(want) = image.digest() {
        let want = Digest::parse(want)?;
        if want != top_digest {
            return Err(Error::DigestMismatch {
                expected: want.to_string(),
                actual: top_digest.to_string(),
            });
        }
    }
    let (index_digest, manifest_digest, manifest_raw) = if is_index(&raw)? {
        let index: ImageIndex =
            serde_json::from_slice(&raw).map_err(|e| Error::json("image index", e))?;
        let entry = select_platform(&index)
            .ok_or_else(|| Error::NoMatchingPlatform(top_digest.to_string()))?;
        let md = Digest::parse(entry.digest().as_ref())?;
        let by_digest = image.clone_with_digest(md.to_string());
        let (mraw, _) = client
            .pull_manifest_raw(&by_digest, &opts.auth, MANIFEST_TYPES)
            .await
            .map_err(registry_err(format!("manifest {md}")))?;
        if mraw.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(too_large(
                format!("manifest {md}"),
                Some(mraw.len() as u64),
                MAX_DOCUMENT_BYTES,
            ));
        }
        md.verify(&mraw)?;
        store.put_blob_bytes(&top_digest, &raw)?;
        (Some(top_digest), md, mraw.to_vec())
    } else {
        (None, top_digest, raw.to_vec())
    };

    let manifest: ImageManifest =
        serde_json::from_slice(&manifest_raw).map_err(|e| Error::json("image manifest", e))?;
    let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
    let config_raw = if store.has_blob(&config_digest) {
        store.read_blob(&config_digest)?
    } else {
        let buf = fetch_config(&client, &image, &config_digest, manifest.config().size()).await?;
        config_digest.verify(&buf)?;
        store.put_blob_bytes(&config_digest, &buf)?;
        buf
    };
    let config: ImageConfiguration =
        serde_json::from_slice(&config_raw).map_err(|e| Error::json("image config", e))?;
    let layers = layer_records(&manifest, &config)?;

    let progress = opts.progress.clone();
    futures_util::stream::iter(layers.iter().map(|l| {
        fetch_blob(
            &client,
            &image,
            store,
            l.digest.clone(),
            l.size,
            progress.clone(),
        )
    }))
    .buffer_unordered(opts.max_concurrent.max(1))
    .try_collect::<Vec<()>>()
    .await?;

    store.put_blob_bytes(&manifest_digest, &manifest_raw)?;
    let rec = ImageRecord {
        name: image.whole(),
        index_digest,
        manifest_digest,
        config_digest,
        layers,
    };
    store.put_image(&rec)?;
    Ok(rec)
}

/// Fetches an image config, refusing one above [`MAX_DOCUMENT_BYTES`] by its declared
/// size, its Content-Length, or its bytes as they arrive (never buffering more).
async fn fetch_config(
    client: &Client,
    image: &Reference,
    digest: &Digest,
    declared: u64,
) -> Result<Vec<u8>> {
    let what = format!("image config {digest}");
    if declared > MAX_DOCUMENT_BYTES {
        return Err(too_large(what, Some(declared), MAX_DOCUMENT_BYTES));
    }
    let desc = descriptor(digest, declared, "");
    let mut stream = client
        .pull_blob_stream(image, &desc)
        .await
        .map_err(registry_err(format!("config blob {digest}")))?;
    if let Some(len) = stream.content_length.filter(|l| *l > MAX_DOCUMENT_BYTES) {
        return Err(too_large(what, Some(len), MAX_DOCUMENT_BYTES));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Layer {
            layer: digest.to_string(),
            source: e,
        })?;
        if (buf.len() + chunk.len()) as u64 > MAX_DOCUMENT_BYTES {
            return Err(too_large(what, None, MAX_DOCUMENT_BYTES));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn is_index(raw: &[u8]) -> Result<bool> {
    let v: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| Error::json("manifest", e))?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(Error::UnsupportedMediaType(
            "application/vnd.docker.distribution.manifest.v1+json".into(),
        ));
    }
    Ok(v.get("manifests").is_some())
}

/// The linux/amd64 entry of an index (variant ignored).
pub fn select_platform(index: &ImageIndex) -> Option<&oci_spec::image::Descriptor> {
    use oci_spec::image::{Arch, Os};
    index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    })
}

fn descriptor(d: &Digest, size: u64, media_type: &str) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: d.to_string(),
        size: size as i64,
        ..Default::default()
    }
}

/// Pairs the manifest's layers with the config's diff_ids, checking media
/// types and counts.
pub fn layer_records(
    manifest: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<Vec<LayerRecord>> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Layout(format!(
            "manifest has {} layers but config has {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff)| {
            let mt = l.media_type().to_string();
            if !LAYER_TYPES.contains(&mt.as_str()) {
                return Err(Error::UnsupportedMediaType(mt));
            }
            Ok(LayerRecord {
                digest: Digest::parse(l.digest().as_ref())?,
                diff_id: Digest::parse(diff)?,
                media_type: mt,
                size: l.size(),
            })
        })
        .collect()
}

/// Fetches one blob into the store unless present: streamed to
/// `tmp/partial-<hex>` under the blob's lock, hashed on the way, verified
/// (size and digest), fsynced and renamed into place.
async fn fetch_blob(
    client: &Client,
    image: &Reference,
    store: &Store,
    digest: Digest,
    size: u64,
    progress: Option<Arc<dyn Progress>>,
) -> Result<()> {
    if store.has_blob(&digest) {
        if let Some(p) = &progress {
            p.layer_start(&digest, size, true);
            p.layer_done(&digest);
        }
        return Ok(());
    }
    let (s, d) = (store.clone(), digest.clone());
    let _lock = blocking(move || s.lock_digest("blob", &d)).await?;
    if store.has_blob(&digest) {
        if let Some(p) = &progress {
            p.layer_start(&digest, size, true);
            p.layer_done(&digest);
        }
        return Ok(());
    }
    if let Some(p) = &progress {
        p.layer_start(&digest, size, false);
    }
    let partial = store
        .root()
        .join("tmp")
        .join(format!("partial-{}", digest.hex()));
    // Resume: hash what an earlier, interrupted pull already wrote.
    let mut hasher = Hasher::new();
    let mut have: u64 = 0;
    if let Ok(mut f) = File::open(&partial) {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error::io("read partial blob", &partial, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
        if have > size {
            hasher = Hasher::new();
            have = 0;
        }
    }
    let desc = descriptor(&digest, size, "");
    let what = format!("blob {digest}");
    let resp = client
        .pull_blob_stream_partial(image, &desc, have, None)
        .await
        .map_err(registry_err(what.clone()))?;
    let mut stream = match resp {
        BlobResponse::Full(s) => {
            hasher = Hasher::new();
            have = 0;
            s
        }
        BlobResponse::Partial(s) => s,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&partial)
        .map_err(|e| Error::io("open partial blob", &partial, e))?;
    file.set_len(have)
        .map_err(|e| Error::io("truncate partial blob", &partial, e))?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(have))
        .map_err(|e| Error::io("seek partial blob", &partial, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Layer {
            layer: digest.to_string(),
            source: e,
        })?;
        have += chunk.len() as u64;
        if have > size {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            return Err(Error::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual: have,
            });
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .map_err(|e| Error::io("write partial blob", &partial, e))?;
        if let Some(p) = &progress {
            p.layer_bytes(&digest, have);
        }
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io("write partial blob", &partial, e.into_error()))?;
    let actual = hasher.finish();
    if have != size || actual != digest {
        drop(file);
        let _ = std::fs::remove_file(&partial);
        if have != size {
            return Err(Error::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual: have,
            });
        }
        return Err(Error::DigestMismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    let (s, d) = (store.clone(), digest.clone());
    blocking(move || s.commit_blob_file(&partial, file, &d)).await?;
    if let Some(p) = &progress {
        p.layer_done(&digest);
    }
    Ok(())
}
