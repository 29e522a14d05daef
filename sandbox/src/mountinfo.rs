//! The kernel's mount table as typed entries: the one parser of `/proc/<pid>/mountinfo`
//! on the host side (run-dir removal, run-root propagation, the front ends' checks).
//!
//! A line is `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
//! SUPER_OPTIONS`; paths escape space, tab, newline and backslash as `\ooo`
//! ([`unescape`]). Lines that do not have that shape are skipped, never trusted.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the calling process's mount table is read from.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// How mount events propagate to and from a mount (mountinfo's optional fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Propagation {
    /// `shared:N`: the mount's peer group.
    pub shared: Option<u64>,
    /// `master:N`: the peer group this mount is a slave of.
    pub master: Option<u64>,
    /// `unbindable`.
    pub unbindable: bool,
}

impl Propagation {
    /// Neither shared, nor a slave, nor unbindable.
    pub fn is_private(&self) -> bool {
        *self == Propagation::default()
    }
}

/// One line of a mountinfo table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    pub parent_id: u64,
    /// The directory of the source filesystem that is mounted (`/` for a whole filesystem;
    /// a subdirectory for a bind mount).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    pub propagation: Propagation,
    pub fs_type: String,
    /// Filesystem-specific source (`/dev/sda1`, `tmpfs`, `overlay`, ...), unescaped.
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountEntry {
    /// Parses one line; `None` when it does not have mountinfo's shape.
    pub fn parse(line: &[u8]) -> Option<MountEntry> {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        // Six fixed fields before the optional ones, then "-" and at least two more.
        let sep = 6 + fields.iter().skip(6).position(|f| *f == b"-")?;
        if fields.len() < sep + 3 {
            return None;
        }
        let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
        let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
        let path = |f: &[u8]| PathBuf::from(OsStr::from_bytes(&unescape(f)));
        let mut propagation = Propagation::default();
        for field in &fields[6..sep] {
            let field = std::str::from_utf8(field).ok()?;
            if let Some(n) = field.strip_prefix("shared:") {
                propagation.shared = n.parse().ok();
            } else if let Some(n) = field.strip_prefix("master:") {
                propagation.master = n.parse().ok();
            } else if field == "unbindable" {
                propagation.unbindable = true;
            }
        }
        Some(MountEntry {
            mount_id: num(fields[0])?,
            parent_id: num(fields[1])?,
            root: path(fields[3]),
            mount_point: path(fields[4]),
            options: text(fields[5]),
            propagation,
            fs_type: text(fields[sep + 1]),
            source: text(fields[sep + 2]),
            super_options: fields.get(sep + 3).map(|f| text(f)).unwrap_or_default(),
        })
    }
}

/// The entries of a mountinfo text, in its order (a mount stacked on another comes after
/// it); malformed lines are skipped.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(MountEntry::parse)
        .collect()
}

/// The calling process's mount table.
pub fn read_self() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read(SELF_MOUNTINFO)?))
}

/// The topmost mount at `dir` (the last one listed there), if `dir` is a mount point.
pub fn topmost<'a>(entries: &'a [MountEntry], dir: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == dir)
}

/// Mount points strictly below `dir`, as listed (a stacked mount point appears as often
/// as it is mounted).
pub fn mount_points_below(entries: &[MountEntry], dir: &Path) -> Vec<PathBuf> {
    entries
        .iter()
        .filter(|e| e.mount_point.starts_with(dir) && e.mount_point != dir)
        .map(|e| e.mount_point.clone())
        .collect()
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash); anything that is
/// not a complete escape of a byte stays as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let escape = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| {
                u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0')
            })
            .and_then(|v| u8::try_from(v).ok());
        match escape {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A mount table with escapes, propagation of every kind, stacked mounts and garbage
    /// (also used by the propagation tests).
    pub(crate) const TABLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
30 22 0:40 / /run rw - tmpfs tmpfs rw\n\
31 30 0:40 /bulkhead /run/bulkhead rw master:3 - tmpfs tmpfs rw\n\
32 30 0:41 / /run/a\\040b rw shared:7 master:2 - tmpfs my\\040src rw\n\
33 30 0:42 / /run/stack rw shared:8 - tmpfs tmpfs rw\n\
34 33 0:43 / /run/stack rw unbindable - tmpfs tmpfs rw\n\
36 35 98:0 /mnt1 /run/bulkhead/p\\040q/shared/c1 rw - ext3 /dev/root rw\n\
37 35 98:0 / /a\\134b\\011c rw - ext3 /dev/root\n\
garbage\n\
1 2 3\n\
x 1 0:1 / /bad rw - tmpfs tmpfs rw\n\
\n";

    #[test]
    fn parses_typed_entries_and_skips_garbage() {
        let e = parse(TABLE);
        assert_eq!(e.len(), 8);
        assert_eq!(e[0].mount_id, 22);
        assert_eq!(e[0].parent_id, 1);
        assert_eq!(e[0].mount_point, Path::new("/"));
        assert_eq!(e[0].fs_type, "ext4");
        assert_eq!(e[0].source, "/dev/sda1");
        assert_eq!(e[0].options, "rw,relatime");
        assert_eq!(e[0].propagation.shared, Some(1));
        assert!(e[1].propagation.is_private());
        assert_eq!(e[2].root, Path::new("/bulkhead"));
        assert_eq!(e[2].propagation.master, Some(3));
        assert_eq!(e[2].propagation.shared, None);
        assert_eq!(e[3].mount_point, Path::new("/run/a b"));
        assert_eq!(e[3].source, "my src");
        assert_eq!(
            e[3].propagation,
            Propagation {
                shared: Some(7),
                master: Some(2),
                unbindable: false
            }
        );
        assert!(e[5].propagation.unbindable);
        assert_eq!(e[6].mount_point, Path::new("/run/bulkhead/p q/shared/c1"));
        assert_eq!(e[7].mount_point, Path::new("/a\\b\tc"));
        // Super options are optional at the end of the line.
        assert_eq!(e[7].super_options, "");
    }

    #[test]
    fn topmost_and_below() {
        let e = parse(TABLE);
        assert_eq!(
            topmost(&e, Path::new("/run/stack")).map(|m| m.mount_id),
            Some(34)
        );
        assert!(topmost(&e, Path::new("/run/nothing")).is_none());
        assert_eq!(
            mount_points_below(&e, Path::new("/run")),
            [
                PathBuf::from("/run/bulkhead"),
                PathBuf::from("/run/a b"),
                PathBuf::from("/run/stack"),
                PathBuf::from("/run/stack"),
                PathBuf::from("/run/bulkhead/p q/shared/c1"),
            ]
        );
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape(b"a\\040b"), b"a b");
        assert_eq!(unescape(b"a\\134b"), b"a\\b");
        assert_eq!(unescape(b"x\\04"), b"x\\04");
        assert_eq!(unescape(b"\\999"), b"\\999");
        // \777 is more than a byte.
        assert_eq!(unescape(b"\\777"), b"\\777");
        assert_eq!(unescape(b"\\"), b"\\");
    }

    #[test]
    fn this_process_has_a_root_mount() {
        let e = read_self().unwrap();
        assert!(e.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
