//! The host's mountinfo parser (mount points can contain whatever a container or guest-driven
//! path put there). Checks: any text parses without panic, and a line written the way the
//! kernel writes it (space, tab, newline, backslash escaped as `\ooo`) parses back to exactly
//! the fields it was written from.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use arbitrary::Arbitrary;
use bulkhead_sandbox::mountinfo::{self, MountEntry};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Line<'a> {
    id: u64,
    parent: u64,
    root: &'a [u8],
    mount_point: &'a [u8],
    options: &'a [u8],
    shared: Option<u64>,
    master: Option<u64>,
    unbindable: bool,
    fs_type: &'a [u8],
    source: &'a [u8],
    super_options: &'a [u8],
}

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Text(&'a [u8]),
    Line(Line<'a>),
}

/// The kernel's escaping (fs/proc_namespace.c, `mangle`).
fn escape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &c in b {
        if matches!(c, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend(format!("\\{c:03o}").bytes());
        } else {
            out.push(c);
        }
    }
    out
}

fn word(b: &[u8]) -> Option<String> {
    // Fields the kernel prints unescaped (options, fs type) never contain separators.
    let s = std::str::from_utf8(b).ok()?;
    (!s.is_empty() && !s.contains([' ', '\t', '\n', '\\'])).then(|| s.to_string())
}

fuzz_target!(|input: Input| {
    match input {
        Input::Text(t) => {
            let entries = mountinfo::parse(t);
            for e in &entries {
                let _ = mountinfo::topmost(&entries, &e.mount_point);
                let _ = mountinfo::mount_points_below(&entries, &e.mount_point);
            }
        }
        Input::Line(l) => {
            let (Some(options), Some(fs_type), Some(super_options)) =
                (word(l.options), word(l.fs_type), word(l.super_options))
            else {
                return;
            };
            if l.root.is_empty() || l.mount_point.is_empty() || l.source.is_empty() {
                return;
            }
            let Ok(source) = std::str::from_utf8(l.source) else {
                return;
            };
            let mut line = format!("{} {} 0:1 ", l.id, l.parent).into_bytes();
            line.extend(escape(l.root));
            line.push(b' ');
            line.extend(escape(l.mount_point));
            line.extend(format!(" {options}").bytes());
            if let Some(s) = l.shared {
                line.extend(format!(" shared:{s}").bytes());
            }
            if let Some(m) = l.master {
                line.extend(format!(" master:{m}").bytes());
            }
            if l.unbindable {
                line.extend(b" unbindable");
            }
            line.extend(format!(" - {fs_type} ").bytes());
            line.extend(escape(source.as_bytes()));
            line.extend(format!(" {super_options}").bytes());
            let e = MountEntry::parse(&line).expect("a kernel-style line parses");
            assert_eq!(e.mount_id, l.id);
            assert_eq!(e.parent_id, l.parent);
            assert_eq!(e.root, Path::new(OsStr::from_bytes(l.root)));
            assert_eq!(e.mount_point, Path::new(OsStr::from_bytes(l.mount_point)));
            assert_eq!(e.options, options);
            assert_eq!(e.propagation.shared, l.shared);
            assert_eq!(e.propagation.master, l.master);
            assert_eq!(e.propagation.unbindable, l.unbindable);
            assert_eq!(e.fs_type, fs_type);
            assert_eq!(e.source, source);
            assert_eq!(e.super_options, super_options);
            assert_eq!(mountinfo::unescape(&escape(l.root)), l.root);
            let mut text = line.clone();
            text.push(b'\n');
            text.extend(&line);
            assert_eq!(mountinfo::parse(&text).len(), 2);
        }
    }
});
