//! Hostile images for the import targets: a structured description (layers, config, names)
//! that builds a well-formed docker-archive or OCI layout, then the damage a hostile image
//! can do to it (wrong digests, missing or extra files, symlinks out of the input, raw JSON,
//! escaping paths). Well-formed inputs get deep into the importer; damage tests its checks.

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use sha2::{Digest, Sha256};

/// What goes into the input: regular files, or symlinks.
#[derive(Debug, Clone)]
pub enum Node {
    File(Vec<u8>),
    Symlink(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<Vec<u8>>,
    /// Diff ids: the layer's own digest, or a wrong one.
    pub diff_ids_right: bool,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub ref_name: Option<String>,
    pub damage: Vec<Damage>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Damage {
    /// Replace a file's content (index into the sorted file list).
    Rewrite(u8, Vec<u8>),
    Remove(u8),
    /// Turn a file into a symlink to this target (`../sentinel/file`, `/etc/shadow`...).
    Symlink(u8, u8),
    Add(String, Vec<u8>),
    /// Append bytes to a file (digest mismatch, trailing JSON).
    Append(u8, Vec<u8>),
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn link_target(sel: u8) -> String {
    [
        "../sentinel/file",
        "../../sentinel/file",
        "/etc/hostname",
        "/proc/self/environ",
        "/etc/os-release",
        ".",
        "..",
        "manifest.json",
    ][usize::from(sel) % 8]
        .to_string()
}

fn config(spec: &ImageSpec, diff_ids: &[String]) -> Vec<u8> {
    let os = spec.os.clone().unwrap_or_else(|| "linux".into());
    let arch = spec.architecture.clone().unwrap_or_else(|| "amd64".into());
    let v = serde_json_lite(&os, &arch, diff_ids);
    v.into_bytes()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn serde_json_lite(os: &str, arch: &str, diff_ids: &[String]) -> String {
    let ids: Vec<String> = diff_ids
        .iter()
        .map(|d| json_str(&format!("sha256:{d}")))
        .collect();
    format!(
        "{{\"architecture\":{},\"os\":{},\"config\":{{\"Cmd\":[\"/bin/sh\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        json_str(arch),
        json_str(os),
        ids.join(",")
    )
}

fn damage(files: &mut BTreeMap<String, Node>, damage: &[Damage]) {
    for d in damage.iter().take(8) {
        let keys: Vec<String> = files.keys().cloned().collect();
        let pick = |i: u8| keys.get(usize::from(i) % keys.len().max(1)).cloned();
        match d {
            Damage::Rewrite(i, b) => {
                if let Some(k) = pick(*i) {
                    files.insert(k, Node::File(b.clone()));
                }
            }
            Damage::Remove(i) => {
                if let Some(k) = pick(*i) {
                    files.remove(&k);
                }
            }
            Damage::Symlink(i, t) => {
                if let Some(k) = pick(*i) {
                    files.insert(k, Node::Symlink(link_target(*t)));
                }
            }
            Damage::Add(p, b) => {
                files.insert(p.clone(), Node::File(b.clone()));
            }
            Damage::Append(i, b) => {
                if let Some(k) = pick(*i) {
                    if let Some(Node::File(f)) = files.get_mut(&k) {
                        f.extend(b);
                    }
                }
            }
        }
    }
}

fn diff_ids(spec: &ImageSpec) -> Vec<String> {
    spec.layers
        .iter()
        .take(4)
        .map(|l| {
            if spec.diff_ids_right {
                sha256_hex(l)
            } else {
                sha256_hex(b"wrong")
            }
        })
        .collect()
}

/// The files of a `docker save` archive (legacy layout: `<hex>/layer.tar`, `<hex>.json`).
pub fn docker_archive(spec: &ImageSpec) -> BTreeMap<String, Node> {
    let mut files = BTreeMap::new();
    let mut layer_paths = Vec::new();
    for l in spec.layers.iter().take(4) {
        let p = format!("{}/layer.tar", sha256_hex(l));
        files.insert(p.clone(), Node::File(l.clone()));
        layer_paths.push(json_str(&p));
    }
    let cfg = config(spec, &diff_ids(spec));
    let cpath = format!("{}.json", sha256_hex(&cfg));
    files.insert(cpath.clone(), Node::File(cfg));
    let tags = match &spec.ref_name {
        Some(n) => format!("[{}]", json_str(n)),
        None => "null".into(),
    };
    let manifest = format!(
        "[{{\"Config\":{},\"RepoTags\":{},\"Layers\":[{}]}}]",
        json_str(&cpath),
        tags,
        layer_paths.join(",")
    );
    files.insert("manifest.json".into(), Node::File(manifest.into_bytes()));
    damage(&mut files, &spec.damage);
    files
}

/// The files of an OCI image layout.
pub fn oci_layout(spec: &ImageSpec) -> BTreeMap<String, Node> {
    let mut files = BTreeMap::new();
    let blob = |files: &mut BTreeMap<String, Node>, b: Vec<u8>| -> (String, usize) {
        let h = sha256_hex(&b);
        let n = b.len();
        files.insert(format!("blobs/sha256/{h}"), Node::File(b));
        (h, n)
    };
    let mut layers = Vec::new();
    for l in spec.layers.iter().take(4) {
        let (h, n) = blob(&mut files, l.clone());
        layers.push(format!(
            "{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:{h}\",\"size\":{n}}}"
        ));
    }
    let (ch, cn) = blob(&mut files, config(spec, &diff_ids(spec)));
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:{ch}\",\"size\":{cn}}},\"layers\":[{}]}}",
        layers.join(",")
    );
    let (mh, mn) = blob(&mut files, manifest.into_bytes());
    let ann = match &spec.ref_name {
        Some(n) => format!(
            ",\"annotations\":{{\"org.opencontainers.image.ref.name\":{}}}",
            json_str(n)
        ),
        None => String::new(),
    };
    let index = format!(
        "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:{mh}\",\"size\":{mn}{ann}}}]}}"
    );
    files.insert("index.json".into(), Node::File(index.into_bytes()));
    files.insert(
        "oci-layout".into(),
        Node::File(b"{\"imageLayoutVersion\":\"1.0.0\"}".to_vec()),
    );
    damage(&mut files, &spec.damage);
    files
}

/// Whether `p` is a relative path of plain components (safe to create under a temp dir).
pub fn safe_rel(p: &str) -> bool {
    !p.is_empty()
        && p.len() < 200
        && p.split('/').count() <= 6
        && p.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}
