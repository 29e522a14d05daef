//! Host-side OCI images: pull from registries (or import from an OCI layout
//! or `docker save` archive), keep blobs and unpacked layers in a
//! content-addressed [`Store`], unpack layers safely, and turn an image
//! config into an OCI runtime process.
//!
//! Module graph (no cycles): `digest`, `error`, `limits` at the bottom; `store` (blobs, records,
//! locks, gc) on them; `unpack` (layers into the store, [`rootfs_layers`]) and `pull` /
//! `import` on `store`; `process` on the image config alone.

pub mod digest;
pub mod error;
pub mod import;
pub mod limits;
pub mod process;
pub mod pull;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use limits::{MAX_DOCUMENT_BYTES, MAX_TAR_METADATA_BYTES};
pub use process::{runtime_process, ProcessOverrides, UserDb};
pub use pull::{pull, PullOptions};
pub use store::{ImageRecord, LayerRecord, Store};
pub use unpack::{apply_layer, ensure_layers, rootfs_layers, unpack_image, Limits, Mode};
