//! Hostile layers: every one is refused with an error naming the entry and
//! nothing appears outside the target, in both unpack modes.

mod common;

use std::fs;
use std::path::Path;

use bulkhead_images::{apply_layer, Error, Limits, Mode, MAX_TAR_METADATA_BYTES};
use common::Layer;
use tar::EntryType;

/// Applies `tar` under `out/root` and returns the result; `out/outside`
/// is a directory a hostile entry might try to reach.
fn run(tar: Vec<u8>, mode: Mode, limits: &Limits) -> (tempfile::TempDir, Result<(), Error>) {
    let out = tempfile::tempdir().unwrap();
    fs::create_dir(out.path().join("root")).unwrap();
    fs::create_dir(out.path().join("outside")).unwrap();
    fs::write(out.path().join("outside/secret"), b"secret").unwrap();
    let r = apply_layer(&tar[..], &out.path().join("root"), mode, limits).map(drop);
    (out, r)
}

fn outside_untouched(out: &Path) {
    let mut names: Vec<_> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "root"]);
    let inside: Vec<_> = fs::read_dir(out.join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(inside, ["secret"]);
    assert_eq!(fs::read(out.join("outside/secret")).unwrap(), b"secret");
}

fn refused(tar: Vec<u8>, entry: &str) {
    for mode in [Mode::Flatten, Mode::Overlay] {
        let (out, r) = run(tar.clone(), mode, &Limits::default());
        match r {
            Err(Error::HostileEntry {
                layer,
                entry: e,
                reason,
            }) => {
                assert_eq!(e, entry, "{mode:?}: wrong entry named ({reason})");
                let root = out.path().join("root");
                assert_eq!(layer, root.display().to_string(), "the layer is named");
                let msg = Error::HostileEntry {
                    layer,
                    entry: e,
                    reason,
                }
                .to_string();
                assert!(msg.contains(entry), "{msg}");
            }
            other => panic!("{mode:?}: expected refusal of {entry}, got {other:?}"),
        }
        outside_untouched(out.path());
    }
}

#[test]
fn dotdot_paths_are_refused() {
    refused(Layer::new().file("../evil", 0o644, b"x").tar(), "../evil");
    refused(
        Layer::new().file("a/../../evil", 0o644, b"x").tar(),
        "a/../../evil",
    );
    refused(Layer::new().dir("../outside/", 0o777).tar(), "../outside/");
}

#[test]
fn absolute_paths_stay_inside() {
    let (out, r) = run(
        Layer::new().file("/abs/file", 0o644, b"x").tar(),
        Mode::Flatten,
        &Limits::default(),
    );
    r.unwrap();
    assert_eq!(fs::read(out.path().join("root/abs/file")).unwrap(), b"x");
    outside_untouched(out.path());
}

#[test]
fn write_through_symlink_is_refused() {
    let out_abs = "/tmp"; // any absolute target: it must never be followed
    refused(
        Layer::new()
            .symlink("link", "../outside")
            .file("link/pwned", 0o644, b"x")
            .tar(),
        "link/pwned",
    );
    refused(
        Layer::new()
            .symlink("link", out_abs)
            .file("link/pwned-by-bulkhead-test", 0o644, b"x")
            .tar(),
        "link/pwned-by-bulkhead-test",
    );
    assert!(!Path::new("/tmp/pwned-by-bulkhead-test").exists());
    refused(
        Layer::new()
            .symlink("link", "../outside")
            .hardlink("link/secret2", "etc/x")
            .tar(),
        "link/secret2",
    );
}

#[test]
fn hard_links_outside_are_refused() {
    refused(Layer::new().hardlink("hl", "../outside/secret").tar(), "hl");
    // Absolute link names resolve inside the root: nothing there to link to.
    refused(Layer::new().hardlink("hl", "/etc/passwd").tar(), "hl");
    // Through a symlink to outside.
    refused(
        Layer::new()
            .symlink("s", "../outside")
            .hardlink("hl", "s/secret")
            .tar(),
        "hl",
    );
}

#[test]
fn directory_replaced_by_symlink_cannot_escape() {
    refused(
        Layer::new()
            .dir("d/", 0o755)
            .file("d/ok", 0o644, b"ok")
            .symlink("d", "../outside")
            .file("d/pwned", 0o644, b"x")
            .tar(),
        "d/pwned",
    );
}

#[test]
fn whiteouts_cannot_delete_outside() {
    for mode in [Mode::Flatten, Mode::Overlay] {
        let (out, r) = run(
            Layer::new()
                .symlink("s", "../outside")
                .file("s/.wh.secret", 0o644, b"")
                .tar(),
            mode,
            &Limits::default(),
        );
        // Flatten ignores a whiteout under a symlink; overlay refuses to create it.
        if mode == Mode::Overlay {
            assert!(matches!(r, Err(Error::HostileEntry { .. })), "{r:?}");
        }
        outside_untouched(out.path());
    }
    refused(
        Layer::new().file("../.wh.outside", 0o644, b"").tar(),
        "../.wh.outside",
    );
}

#[test]
fn decompression_bombs_are_bounded() {
    let big = vec![0u8; 4 << 20];
    let tar = common::compress(
        &Layer::new().file("bomb", 0o644, &big).tar(),
        common::Compression::Gzip,
    );
    assert!(tar.len() < 64 << 10, "a real bomb: small compressed");
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        ..Limits::default()
    };
    let out = tempfile::tempdir().unwrap();
    let r = apply_layer(&tar[..], out.path(), Mode::Flatten, &limits);
    assert!(matches!(r, Err(Error::LimitExceeded { .. })), "{r:?}");
    let written = fs::metadata(out.path().join("bomb"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 1 << 20);

    let mut l = Layer::new();
    for i in 0..100 {
        l = l.file(&format!("f{i}"), 0o644, b"");
    }
    let limits = Limits {
        max_entries: 50,
        ..Limits::default()
    };
    let out = tempfile::tempdir().unwrap();
    let r = apply_layer(&l.tar()[..], out.path(), Mode::Flatten, &limits);
    assert!(matches!(r, Err(Error::LimitExceeded { .. })), "{r:?}");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let out = tempfile::tempdir().unwrap();
    let r = apply_layer(
        &[0x1f, 0x8b, 1, 2, 3][..],
        out.path(),
        Mode::Flatten,
        &Limits::default(),
    );
    assert!(r.is_err());
}

#[test]
fn device_nodes_are_refused() {
    for (kind, name, major, minor) in [
        (EntryType::Char, "dev/null", 1, 3),
        (EntryType::Char, "dev/kmsg", 1, 11),
        (EntryType::Block, "dev/sda", 8, 0),
        // 0:x is not the whiteout either.
        (EntryType::Char, "dev/zero-major", 0, 1),
    ] {
        let tar = Layer::new()
            .dir("dev/", 0o755)
            .node(kind, name, major, minor)
            .tar();
        refused(tar.clone(), name);
        for mode in [Mode::Flatten, Mode::Overlay] {
            let (out, r) = run(tar.clone(), mode, &Limits::default());
            let msg = r.unwrap_err().to_string();
            assert!(
                msg.contains("device") && msg.contains(&format!("{major}:{minor}")),
                "{msg}"
            );
            assert!(!out.path().join("root").join(name).exists(), "{name}");
        }
    }
}

#[test]
fn a_char_0_0_entry_is_a_whiteout() {
    // Flatten: it deletes what a lower layer put there.
    let out = tempfile::tempdir().unwrap();
    let lower = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/gone", 0o644, b"x");
    apply_layer(
        &lower.tar()[..],
        out.path(),
        Mode::Flatten,
        &Limits::default(),
    )
    .unwrap();
    assert!(out.path().join("etc/gone").exists());
    let upper = Layer::new().node(EntryType::Char, "etc/gone", 0, 0).tar();
    apply_layer(&upper[..], out.path(), Mode::Flatten, &Limits::default()).unwrap();
    assert!(!out.path().join("etc/gone").exists());
    // Overlay: it stays the overlay whiteout (mknod needs root).
    if !common::is_root() {
        bulkhead_test_skip::skip("a whiteout device needs root");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    apply_layer(&upper[..], out.path(), Mode::Overlay, &Limits::default()).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = fs::symlink_metadata(out.path().join("etc/gone")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
}

#[test]
fn fifos_and_set_id_bits_are_kept() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let out = tempfile::tempdir().unwrap();
    let tar = Layer::new()
        .node(EntryType::Fifo, "pipe", 0, 0)
        .file("su", 0o4755, b"#!")
        .tar();
    apply_layer(&tar[..], out.path(), Mode::Flatten, &Limits::default()).unwrap();
    let m = fs::symlink_metadata(out.path().join("pipe")).unwrap();
    assert!(m.file_type().is_fifo());
    let m = fs::metadata(out.path().join("su")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
}

/// Unpacks `tar` (plain) with a `limit`-byte layer budget.
fn unpack_limited(tar: &[u8], limit: u64) -> Result<bulkhead_images::unpack::Stats, Error> {
    let out = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_layer_bytes: limit,
        ..Limits::default()
    };
    apply_layer(tar, out.path(), Mode::Flatten, &limits)
}

fn over_limit(r: Result<bulkhead_images::unpack::Stats, Error>, what: &str) {
    match r {
        Err(e @ Error::LimitExceeded { .. }) => {
            assert!(e.to_string().contains(what), "{e}");
        }
        other => panic!("expected the limit ({what}), got {other:?}"),
    }
}

#[test]
fn pax_headers_count_against_the_layer_limit() {
    // 600 KiB of PAX records and 4 bytes of file data: over a 512 KiB budget.
    let mut l = Layer::new();
    let big = vec![b'x'; 600 << 10];
    l.b.append_pax_extensions([("comment", &big[..])]).unwrap();
    let tar = l.file("f", 0o644, b"data").tar();
    over_limit(unpack_limited(&tar, 512 << 10), "decompressed bytes");
    let stats = unpack_limited(&tar, 1 << 20).unwrap();
    assert_eq!(stats.bytes, 4);
    assert_eq!(stats.stream_bytes, tar.len() as u64);
}

#[test]
fn a_huge_pax_header_is_refused_before_it_is_buffered() {
    let mut l = Layer::new();
    let big = vec![b'x'; (MAX_TAR_METADATA_BYTES + 1) as usize];
    l.b.append_pax_extensions([("comment", &big[..])]).unwrap();
    let tar = common::compress(
        &l.file("f", 0o644, b"data").tar(),
        common::Compression::Gzip,
    );
    // Refused under a budget that would let it through: the tar reader keeps PAX
    // records in memory, so they have their own, small cap.
    over_limit(unpack_limited(&tar, 1 << 30), "PAX extended header");
}

#[test]
fn gnu_long_name_chains_count_against_the_layer_limit() {
    // Hundreds of entries whose names need a GNU long-name record each: the names are
    // most of the stream, the file data is nothing.
    let long = format!("{}/", "n".repeat(200)).repeat(15);
    let mut l = Layer::new();
    for i in 0..300 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        l.b.append_data(&mut h, format!("{long}{i}"), &[][..])
            .unwrap();
    }
    let tar = l.tar();
    assert!(tar.len() > 300 * 3000);
    over_limit(unpack_limited(&tar, 256 << 10), "decompressed bytes");
    let stats = unpack_limited(&tar, 4 << 20).unwrap();
    assert_eq!((stats.entries, stats.bytes), (300, 0));
}

#[test]
fn data_after_the_end_of_archive_counts() {
    let mut tar = Layer::new().file("f", 0o644, b"data").tar();
    let clean = tar.len() as u64;
    tar.extend(std::iter::repeat_n(0x5a, 2 << 20));
    over_limit(unpack_limited(&tar, 1 << 20), "decompressed bytes");
    // Within the budget, trailing bytes are read (and would be hashed in the diff_id).
    let stats = unpack_limited(&tar, 4 << 20).unwrap();
    assert_eq!(stats.stream_bytes, clean + (2 << 20));
}
