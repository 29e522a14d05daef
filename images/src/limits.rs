//! Every bound the crate puts on what an image (a hostile input) can make the host
//! read, buffer or write: [`Limits`] for unpacking layers, [`MAX_DOCUMENT_BYTES`] for the
//! JSON documents (manifests, indexes, configs) read into memory on pull and import,
//! [`MAX_TAR_METADATA_BYTES`] for the tar records the tar reader buffers, and
//! [`read_capped`], which refuses a document above its cap before buffering more of it.

use std::io::Read;

use crate::error::{Error, Result};

/// Largest manifest, image index or image config read into memory (pull, import, the
/// store's own records and leases). Real ones are a few KiB; Docker caps manifests at
/// 4 MiB too.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// Largest PAX extended header or GNU long name/link record in a layer: the tar reader
/// keeps these in memory (a path is at most 4 KiB on Linux; xattrs at most 64 KiB each).
pub const MAX_TAR_METADATA_BYTES: u64 = 1 << 20;

/// Bounds against decompression bombs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Decompressed bytes per layer: the whole tar stream as it comes out of the
    /// decompressor (headers, PAX records, long names, padding, file data and anything
    /// after the end-of-archive marker), not only file data.
    pub max_layer_bytes: u64,
    /// Decompressed bytes per image (all layers of one unpack).
    pub max_image_bytes: u64,
    /// Tar entries per layer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 32 << 30,
            max_image_bytes: 64 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// Reads all of `r`, or `None` when it is longer than `cap` (found without buffering
/// more than `cap + 1` bytes).
pub fn read_capped(r: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    r.take(cap.saturating_add(1)).read_to_end(&mut data)?;
    Ok((data.len() as u64 <= cap).then_some(data))
}

/// The error for a document of `size` bytes (or more, when `None`) above `cap`.
pub fn too_large(what: impl Into<String>, size: Option<u64>, cap: u64) -> Error {
    Error::TooLarge {
        what: what.into(),
        size,
        cap,
    }
}

/// [`read_capped`] with errors of this crate: `TooLarge` naming `what`, or an I/O error
/// with `context` on `path`.
pub(crate) fn read_document(
    r: impl Read,
    what: &str,
    context: &'static str,
    path: &std::path::Path,
) -> Result<Vec<u8>> {
    read_capped(r, MAX_DOCUMENT_BYTES)
        .map_err(|e| Error::io(context, path, e))?
        .ok_or_else(|| too_large(what, None, MAX_DOCUMENT_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_stops_one_byte_past_the_cap() {
        let data = vec![1u8; 100];
        assert_eq!(read_capped(&data[..], 100).unwrap(), Some(data.clone()));
        assert_eq!(read_capped(&data[..], 99).unwrap(), None);
        // An endless source is not read to its end.
        assert_eq!(read_capped(std::io::repeat(0), 1 << 20).unwrap(), None);
        let e = too_large("manifest.json", Some(5 << 20), MAX_DOCUMENT_BYTES).to_string();
        assert!(
            e.contains("manifest.json") && e.contains(&MAX_DOCUMENT_BYTES.to_string()),
            "{e}"
        );
    }
}
