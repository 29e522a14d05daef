//! Hostile layers: every one is refused with an error naming the entry and
//! nothing appears outside the target, in both unpack modes.

mod common;

use std::fs;
use std::path::Path;

use bulkhead_images::{apply_layer, Error, Limits, Mode};
use common::Layer;

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
            Err(Error::HostileEntry { entry: e, reason }) => {
                assert_eq!(e, entry, "{mode:?}: wrong entry named ({reason})");
                assert!(format!("{}", Error::HostileEntry { entry: e, reason }).contains(entry));
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
