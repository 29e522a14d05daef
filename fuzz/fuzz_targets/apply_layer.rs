//! `apply_layer` on a hostile layer: tar entries with escaping names, symlinks and hard links
//! out of the root, devices, long names, PAX records, truncated data, any compression. The
//! layer is unpacked into `<tmp>/root` next to a sentinel tree `<tmp>/sentinel`. Checks: no
//! panic; the sentinel is byte-for-byte, mode and owner unchanged; nothing appears in `<tmp>`
//! besides the two; nothing in the root is a device other than the overlay whiteout (0/0
//! character device, overlay mode only); nothing in the root is setuid or setgid.
#![no_main]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use arbitrary::Arbitrary;
use bulkhead_fuzz::snapshot;
use bulkhead_fuzz::tarb::{self, Entry};
use bulkhead_images::{apply_layer, Limits, Mode};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Arbitrary, Debug)]
enum Layer<'a> {
    Entries(Vec<Entry>, bool),
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    overlay: bool,
    compression: Compression,
    layer: Layer<'a>,
    /// A second layer applied on top (flatten mode: whiteouts, replacing dirs by links).
    second: Option<Vec<Entry>>,
}

fn compress(c: &Compression, tar: Vec<u8>) -> Vec<u8> {
    match c {
        Compression::None => tar,
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(&tar[..], 1).expect("zstd"),
    }
}

fn check_root(root: &Path, overlay: bool) {
    for rel in snapshot::take(root).into_keys() {
        let p = root.join(&rel);
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = md.file_type();
        if ft.is_block_device() {
            panic!("block device unpacked at {rel:?}");
        }
        if ft.is_char_device() {
            assert!(
                overlay && md.rdev() == 0,
                "character device {:#x} unpacked at {rel:?}",
                md.rdev()
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let sentinel = tmp.path().join("sentinel");
    fs::create_dir(&root).expect("root");
    snapshot::plant_sentinel(&sentinel);
    let before = snapshot::take(&sentinel);
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        max_image_bytes: 2 << 20,
        max_entries: 256,
    };
    let mode = if input.overlay {
        Mode::Overlay
    } else {
        Mode::Flatten
    };
    let bytes = match input.layer {
        Layer::Entries(e, unterminated) => {
            compress(&input.compression, tarb::build(&e, unterminated))
        }
        Layer::Raw(r) => r.to_vec(),
    };
    let _ = apply_layer(&bytes[..], &root, mode, &limits);
    if let Some(e) = input.second {
        let layer = compress(&input.compression, tarb::build(&e, false));
        let _ = apply_layer(&layer[..], &root, mode, &limits);
    }
    assert_eq!(
        snapshot::take(&sentinel),
        before,
        "the sentinel outside the root changed"
    );
    let mut top: Vec<_> = fs::read_dir(tmp.path())
        .expect("tmp")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["root", "sentinel"],
        "something was created next to the root"
    );
    check_root(&root, input.overlay);
});
