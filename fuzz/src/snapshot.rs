//! A recursive listing of a directory (path, type, mode, owner, size, content hash, symlink
//! target) without following symlinks, to prove that an operation left it untouched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What is recorded for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: Option<String>,
    pub link: Option<PathBuf>,
}

/// Path (relative to the root) to entry; the root itself is "".
pub type Snapshot = BTreeMap<PathBuf, Entry>;

/// Snapshot `root` (which must exist).
pub fn take(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut Snapshot) {
    let p = root.join(rel);
    let Ok(md) = fs::symlink_metadata(&p) else {
        return;
    };
    let ft = md.file_type();
    let content = ft.is_file().then(|| {
        fs::read(&p)
            .map(|d| hex::encode(Sha256::digest(d)))
            .unwrap_or_default()
    });
    let link = ft
        .is_symlink()
        .then(|| fs::read_link(&p).unwrap_or_default());
    out.insert(
        rel.to_path_buf(),
        Entry {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: if ft.is_dir() { 0 } else { md.size() },
            content,
            link,
        },
    );
    if ft.is_dir() {
        if let Ok(rd) = fs::read_dir(&p) {
            let mut names: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
}

/// A sentinel tree: a directory with a file, a subdirectory and a symlink, all of which an
/// escaping operation would be likely to hit.
pub fn plant_sentinel(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).expect("sentinel dir");
    fs::write(dir.join("file"), b"sentinel\n").expect("sentinel file");
    fs::write(dir.join("sub/etc-passwd"), b"root:x:0:0::/root:/bin/sh\n").expect("sentinel");
    let _ = std::os::unix::fs::symlink("file", dir.join("link"));
}
