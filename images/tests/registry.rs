//! Pull from a real `docker-registry` (started here), store, unpack and
//! compare with `umoci unpack`. Skips with a reason when tools are missing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use bulkhead_images::pull::{Progress, PullOptions};
use bulkhead_images::{pull, unpack_image, Digest, Limits, Store};
use common::{Compression::*, Registry};

fn plain() -> PullOptions {
    PullOptions {
        plain_http: true,
        ..Default::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// path -> "type mode uid:gid extra" for every entry under `root`.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut ents: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let extra = if ft.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("{} nlink={}", Digest::of(&fs::read(&p).unwrap()), m.nlink())
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("rdev={:x}", m.rdev())
            } else {
                String::new()
            };
            let kind = if ft.is_dir() {
                "d"
            } else if ft.is_symlink() {
                "l"
            } else if ft.is_file() {
                "f"
            } else if ft.is_fifo() {
                "p"
            } else {
                "c"
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{kind} {mode:o} {}:{} {extra}", m.uid(), m.gid()),
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn push_test_image(reg: &Registry, tmp: &Path, name: &str) -> std::path::PathBuf {
    let layout = tmp.join(format!("layout-{name}"));
    let l = common::test_layers();
    let desc = common::write_manifest(
        &layout,
        &[
            (l[0].clone(), None),
            (l[1].clone(), Gzip),
            (l[2].clone(), Gzip),
        ],
        "amd64",
    );
    common::write_index(&layout, vec![("v1", desc)]);
    common::skopeo_push(&layout, "v1", &format!("{}/{name}:v1", reg.addr), false);
    layout
}

#[test]
fn pull_store_unpack_and_match_umoci() {
    require!("docker-registry", "skopeo");
    let reg = Registry::start("");
    let tmp = tempfile::tempdir().unwrap();
    let layout = push_test_image(&reg, tmp.path(), "app");
    let store = Store::open(tmp.path().join("store")).unwrap();
    let reference = format!("{}/app:v1", reg.addr);

    let rec = rt().block_on(pull(&store, &reference, &plain())).unwrap();
    assert_eq!(rec.layers.len(), 3);
    assert_eq!(store.list_images().unwrap().len(), 1);
    for l in &rec.layers {
        assert!(store.has_blob(&l.digest));
    }

    // Flattened unpack applies whiteouts, opaque dirs, links.
    let out = tmp.path().join("rootfs");
    let stats = unpack_image(&store, &rec, &out, &Limits::default()).unwrap();
    assert!(stats.entries > 20);
    assert!(!out.join("etc/removed").exists());
    assert!(!out.join("opt/old").exists() && !out.join("opt/olddir").exists());
    assert_eq!(fs::read(out.join("opt/new")).unwrap(), b"new");
    assert_eq!(
        fs::read_link(out.join("etc/sub")).unwrap(),
        Path::new("/opt")
    );
    assert!(!out.join("etc/passwd-link").exists());
    let bb = fs::metadata(out.join("bin/busybox")).unwrap();
    assert_eq!(
        bb.ino(),
        fs::metadata(out.join("bin/bb-hard")).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(out.join("usr/bin/suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(out.join("home/user/owned")).unwrap().uid(),
        if common::is_root() { 1000 } else { bb.uid() }
    );

    // Same tree as umoci.
    if common::have("umoci") && common::is_root() {
        let bundle = tmp.path().join("bundle");
        let st = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let ours = tree(&out);
        let theirs = tree(&bundle.join("rootfs"));
        let diff: Vec<_> = ours
            .iter()
            .filter(|(k, v)| theirs.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: ours {v:?} umoci {:?}", theirs.get(k)))
            .chain(
                theirs
                    .keys()
                    .filter(|k| !ours.contains_key(*k))
                    .map(|k| format!("{k}: only in umoci")),
            )
            .collect();
        assert!(
            diff.is_empty(),
            "differences from umoci:\n{}",
            diff.join("\n")
        );
    } else {
        bulkhead_test_skip::skip("the umoci comparison needs umoci and root");
    }

    // Per-layer overlay dirs: whiteout devices and the opaque xattr.
    let lowers = bulkhead_images::rootfs_layers(&store, &rec, &Limits::default()).unwrap();
    assert_eq!(lowers.len(), 3);
    assert_eq!(
        lowers[2],
        store.layer_dir(&rec.layers[0].diff_id),
        "topmost first"
    );
    if common::is_root() {
        let wh = fs::symlink_metadata(lowers[1].join("etc/removed")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        let mut v = [0u8; 4];
        let p = std::ffi::CString::new(lowers[1].join("opt").into_os_string().into_encoded_bytes())
            .unwrap();
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                v.as_mut_ptr().cast(),
                4,
            )
        };
        assert_eq!(&v[..n.max(0) as usize], b"y");
    }

    // A second pull fetches nothing; rmi + gc free everything.
    struct Count(std::sync::atomic::AtomicUsize);
    impl Progress for Count {
        fn layer_start(&self, _: &Digest, _: u64, cached: bool) {
            if !cached {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    let count = std::sync::Arc::new(Count(Default::default()));
    let opts = PullOptions {
        progress: Some(count.clone()),
        ..plain()
    };
    rt().block_on(pull(&store, &reference, &opts)).unwrap();
    assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    store.remove_image(&reference).unwrap();
    let r = store.gc().unwrap();
    assert_eq!(r.layers_removed, 3);
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn zstd_layers_and_index_resolve_to_amd64() {
    require!("docker-registry", "skopeo");
    let reg = Registry::start("");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let amd = common::Layer::new()
        .file("arch", 0o644, b"amd64")
        .file("z/zstd-file", 0o600, &vec![1u8; 100_000])
        .tar();
    let arm = common::Layer::new().file("arch", 0o644, b"arm64").tar();
    let base = common::test_layers().remove(0);
    let d_amd = common::write_manifest(&layout, &[(base.clone(), Gzip), (amd, Zstd)], "amd64");
    let d_arm = common::write_manifest(&layout, &[(base, Gzip), (arm, Gzip)], "arm64");
    let idx = common::write_image_index(&layout, vec![d_arm, d_amd.clone()]);
    common::write_index(&layout, vec![("multi", idx)]);
    common::skopeo_push(&layout, "multi", &format!("{}/multi:1", reg.addr), true);

    let store = Store::open(tmp.path().join("store")).unwrap();
    let rec = rt()
        .block_on(pull(&store, &format!("{}/multi:1", reg.addr), &plain()))
        .unwrap();
    assert!(rec.index_digest.is_some());
    assert_eq!(
        rec.manifest_digest.to_string(),
        d_amd["digest"].as_str().unwrap()
    );
    assert!(rec.layers[1].media_type.ends_with("zstd"));
    let out = tmp.path().join("rootfs");
    unpack_image(&store, &rec, &out, &Limits::default()).unwrap();
    assert_eq!(fs::read(out.join("arch")).unwrap(), b"amd64");
    assert_eq!(fs::read(out.join("z/zstd-file")).unwrap().len(), 100_000);

    // Pull by digest too, and import the same layout offline.
    let by_digest = format!("{}/multi@{}", reg.addr, rec.index_digest.as_ref().unwrap());
    let rec2 = rt().block_on(pull(&store, &by_digest, &plain())).unwrap();
    assert_eq!(rec2.manifest_digest, rec.manifest_digest);
    let imported =
        bulkhead_images::import::oci_layout(&store, &layout, Some("local/multi:1"), false).unwrap();
    assert_eq!(imported[0].manifest_digest, rec.manifest_digest);
    assert_eq!(store.list_images().unwrap().len(), 3);
}

#[test]
fn digest_mismatch_names_the_blob_and_stores_nothing() {
    require!("docker-registry", "skopeo");
    let reg = Registry::start("");
    let tmp = tempfile::tempdir().unwrap();
    push_test_image(&reg, tmp.path(), "bad");
    let store = Store::open(tmp.path().join("store")).unwrap();
    let reference = format!("{}/bad:v1", reg.addr);
    // Learn the layer digests with a first pull into a scratch store.
    let scratch = Store::open(tmp.path().join("scratch")).unwrap();
    let rec = rt().block_on(pull(&scratch, &reference, &plain())).unwrap();
    let victim = &rec.layers[2].digest;
    let p = reg.blob_data(victim);
    let mut data = fs::read(&p).unwrap();
    let last = data.len() - 10;
    data[last] ^= 0xff;
    fs::write(&p, &data).unwrap();

    let err = rt()
        .block_on(pull(&store, &reference, &plain()))
        .unwrap_err();
    let msg = format!("{err}");
    assert!(msg.contains(&victim.to_string()), "{msg}");
    assert!(!store.has_blob(victim));
    assert!(store.list_images().unwrap().is_empty());
}

#[test]
fn concurrent_pulls_sharing_layers() {
    require!("docker-registry", "skopeo");
    let reg = Registry::start("");
    let tmp = tempfile::tempdir().unwrap();
    push_test_image(&reg, tmp.path(), "one");
    push_test_image(&reg, tmp.path(), "two");
    let store = Store::open(tmp.path().join("store")).unwrap();
    let (a, b) = rt().block_on(async {
        let ra = format!("{}/one:v1", reg.addr);
        let rb = format!("{}/two:v1", reg.addr);
        let o = plain();
        tokio::join!(pull(&store, &ra, &o), pull(&store, &rb, &o))
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.layers, b.layers);
    for l in &a.layers {
        assert!(store.read_blob(&l.digest).is_ok());
    }
    // Two processes' worth of layer unpacking at once.
    let (s1, s2) = (store.clone(), store.clone());
    let (a2, b2) = (a.clone(), b.clone());
    let t1 = std::thread::spawn(move || {
        bulkhead_images::rootfs_layers(&s1, &a2, &Limits::default()).unwrap()
    });
    let t2 = std::thread::spawn(move || {
        bulkhead_images::rootfs_layers(&s2, &b2, &Limits::default()).unwrap()
    });
    assert_eq!(t1.join().unwrap(), t2.join().unwrap());
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn an_oversized_config_is_refused_before_it_is_buffered() {
    require!("docker-registry", "skopeo");
    let reg = Registry::start("");
    let tmp = tempfile::tempdir().unwrap();
    push_test_image(&reg, tmp.path(), "bigconfig");
    let reference = format!("{}/bigconfig:v1", reg.addr);
    let scratch = Store::open(tmp.path().join("scratch")).unwrap();
    let rec = rt().block_on(pull(&scratch, &reference, &plain())).unwrap();
    // skopeo (like Docker) refuses to push a config above 4 MiB: grow it in the
    // registry's storage, which serves it as it is (a hostile registry).
    let cap = bulkhead_images::MAX_DOCUMENT_BYTES;
    let huge = vec![b' '; cap as usize + 1];
    fs::write(reg.blob_data(&rec.config_digest), &huge).unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let err = rt()
        .block_on(pull(&store, &reference, &plain()))
        .unwrap_err();
    assert!(
        matches!(&err, bulkhead_images::Error::TooLarge { what, .. } if what.contains("image config")),
        "{err:?}"
    );
    assert!(err.to_string().contains(&cap.to_string()), "{err}");
    assert!(!store.has_blob(&rec.config_digest));
    assert!(store.list_images().unwrap().is_empty());
}
