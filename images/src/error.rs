//! Typed errors of the image crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while pulling, storing or unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("digest mismatch for blob {expected}: content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch for blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("registry request for {what} failed")]
    Registry {
        what: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("image index {0} has no linux/amd64 manifest")]
    NoMatchingPlatform(String),
    #[error("malformed {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {0:?} not found in the store")]
    ImageNotFound(String),
    #[error("blob {0} not found in the store")]
    BlobNotFound(String),
    #[error("layer {index} has no diff_id in the image config")]
    MissingDiffId { index: usize },
    #[error("{context}: {path}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    HostileEntry {
        /// The layer (blob digest, or the unpack target for a bare stream).
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer entry {entry:?}: {context}")]
    Entry {
        entry: String,
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading layer {layer} failed")]
    Layer {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer} exceeds the unpack limit: {what}")]
    LimitExceeded { layer: String, what: String },
    #[error("invalid image layout: {0}")]
    Layout(String),
    #[error("invalid user {0:?}")]
    InvalidUser(String),
    #[error("{what} is too large: {} (the limit is {cap} bytes)", size.map_or("more than the limit".to_string(), |s| format!("{s} bytes")))]
    TooLarge {
        what: String,
        /// The size, when known before reading (a header or a declared size).
        size: Option<u64>,
        cap: u64,
    },
    #[error("image {name:?} already exists (manifest {existing}): remove it first or replace it explicitly")]
    ImageExists { name: String, existing: String },
    #[error("image {name:?} is in use by container(s) {}", holders.join(", "))]
    ImageInUse { name: String, holders: Vec<String> },
    #[error("invalid lease holder {0:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit, at most 128")]
    InvalidHolder(String),
}

impl Error {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            what: what.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
