//! Test helpers: a real `docker-registry` started on a free port, OCI
//! layouts written from Rust-built layers, and tar builders for odd entries.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_images::Digest;

pub fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the test (returns after `bulkhead_test_skip::skip` said why) unless every binary
/// exists.
#[macro_export]
macro_rules! require {
    ($($bin:expr),*) => {
        $( if !common::have($bin) {
            bulkhead_test_skip::skip(format!("{} not installed", $bin));
            return;
        } )*
    };
}

pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Registry {
    /// Starts `docker-registry` with its own config; `extra` is appended to
    /// the YAML (e.g. an `auth:` section).
    pub fn start(extra: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let reg = Registry { child, dir, addr };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(mut s) = TcpStream::connect(&reg.addr) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut b = [0u8; 12];
                if s.read_exact(&mut b).is_ok() && b.starts_with(b"HTTP/1.") {
                    return reg;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry did not come up");
    }

    /// Path of a blob in the registry's storage.
    pub fn blob_data(&self, d: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `layout:tag` to `docker://dest` with skopeo.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str, all: bool) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if all {
        cmd.arg("--all");
    }
    let out = cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Tar builder with helpers for every entry type, including raw names.
pub struct Layer {
    pub b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn hdr(kind: tar::EntryType, name: &[u8], mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    pub fn dir(mut self, name: &str, mode: u32) -> Self {
        let mut h = Self::hdr(tar::EntryType::Directory, name.as_bytes(), mode, 0, 0);
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn file(self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.file_owned(name, mode, 0, data)
    }

    pub fn file_owned(mut self, name: &str, mode: u32, uid: u64, data: &[u8]) -> Self {
        let mut h = Self::hdr(
            tar::EntryType::Regular,
            name.as_bytes(),
            mode,
            uid,
            data.len() as u64,
        );
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Self {
        let mut h = Self::hdr(kind, name.as_bytes(), 0o777, 0, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.link(tar::EntryType::Symlink, name, target)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.link(tar::EntryType::Link, name, target)
    }

    pub fn node(mut self, kind: tar::EntryType, name: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::hdr(kind, name.as_bytes(), 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

fn put_blob(layout: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let p = layout.join("blobs/sha256");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(d.hex()), data).unwrap();
    d
}

fn media(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// Writes an image manifest (and its blobs) into `layout`; returns the
/// manifest descriptor JSON.
pub fn write_manifest(
    layout: &Path,
    layers: &[(Vec<u8>, Compression)],
    arch: &str,
) -> serde_json::Value {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, c) in layers {
        let blob = compress(tar, *c);
        let d = put_blob(layout, &blob);
        descs.push(serde_json::json!({"mediaType": media(*c), "digest": d.to_string(), "size": blob.len()}));
        diff_ids.push(Digest::of(tar).to_string());
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let craw = serde_json::to_vec(&config).unwrap();
    let cd = put_blob(layout, &craw);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": craw.len()},
        "layers": descs,
    });
    let mraw = serde_json::to_vec(&manifest).unwrap();
    let md = put_blob(layout, &mraw);
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md.to_string(), "size": mraw.len(),
        "platform": {"architecture": arch, "os": "linux"},
    })
}

/// Writes `index.json` with one entry per (tag, descriptor).
pub fn write_index(layout: &Path, entries: Vec<(&str, serde_json::Value)>) {
    let manifests: Vec<_> = entries
        .into_iter()
        .map(|(tag, mut d)| {
            d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
            d
        })
        .collect();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap(),
    )
    .unwrap();
}

/// Wraps manifest descriptors into an image index blob; returns its descriptor.
pub fn write_image_index(layout: &Path, manifests: Vec<serde_json::Value>) -> serde_json::Value {
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let raw = serde_json::to_vec(&idx).unwrap();
    let d = put_blob(layout, &raw);
    serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d.to_string(), "size": raw.len()})
}

/// Layers of the main test image: busybox base, then changes with
/// whiteouts, an opaque directory, hard links and symlinks.
pub fn test_layers() -> Vec<Vec<u8>> {
    let busybox = fs::read("/bin/busybox").unwrap_or_else(|_| b"#!fake busybox\n".to_vec());
    let base = Layer::new()
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .symlink("bin/ls", "/bin/busybox")
        .hardlink("bin/bb-hard", "bin/busybox")
        .dir("etc/", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/removed", 0o644, b"gone soon\n")
        .dir("etc/sub/", 0o750)
        .file("etc/sub/f", 0o600, b"sub")
        .dir("opt/", 0o755)
        .file("opt/old", 0o644, b"old")
        .dir("opt/olddir/", 0o755)
        .file("opt/olddir/x", 0o644, b"x")
        .file_owned("home/user/owned", 0o640, 1000, b"mine")
        .file("usr/bin/suid", 0o4755, b"suid")
        .dir("tmp/", 0o1777)
        // No device node: layers with one are refused (only the 0:0 whiteout passes).
        .dir("dev/", 0o755)
        .node(tar::EntryType::Fifo, "run/fifo", 0, 0)
        .tar();
    let upper = Layer::new()
        .file("etc/.wh.removed", 0o644, b"")
        .dir("opt/", 0o755)
        .file("opt/.wh..wh..opq", 0o644, b"")
        .file("opt/new", 0o644, b"new")
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .hardlink("etc/passwd-link", "etc/passwd")
        .symlink("etc/sub", "/opt")
        .tar();
    let top = Layer::new()
        .file("etc/.wh.passwd-link", 0o644, b"")
        .file("srv/data", 0o644, &vec![42u8; 300_000])
        .tar();
    vec![base, upper, top]
}
