//! Image records: what the store knows about a named image (its manifest,
//! config and layers), saved as one JSON file per reference name.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// One layer of a stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not).
    pub digest: Digest,
    /// Digest of the uncompressed tar (from the image config).
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A named image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Full reference name, e.g. `127.0.0.1:5000/app:latest` or `app@sha256:...`.
    pub name: String,
    /// Digest of the image index the manifest was chosen from, if any.
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<LayerRecord>,
}

impl ImageRecord {
    /// Every blob this image keeps alive.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.index_digest
            .iter()
            .chain(std::iter::once(&self.manifest_digest))
            .chain(std::iter::once(&self.config_digest))
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    /// Sum of the layer blob sizes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Normalises a user-typed reference the way the registry client does
/// (`busybox` -> `docker.io/library/busybox:latest`); falls back to the text.
pub fn normalize_name(name: &str) -> String {
    match name.parse::<oci_client::Reference>() {
        Ok(r) => r.whole(),
        Err(_) => name.to_string(),
    }
}
