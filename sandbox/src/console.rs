//! The last lines of a log file (guest console, VMM log) for error messages. The guest
//! writes the console, so its bytes are untrusted: control characters are escaped before
//! the text can reach a terminal, and only the end of the file is read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read from the end of the file at most.
const TAIL_WINDOW: u64 = 64 * 1024;
/// Longest line kept (longer lines are cut with a marker).
const MAX_LINE: usize = 400;

/// The last `lines` lines of `path`, or an empty string when it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    if lines == 0 {
        return String::new();
    }
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.take(TAIL_WINDOW).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    tail_of(&buf, lines, start > 0)
}

/// The last `lines` non-empty lines of `bytes`; `cut` says the first line may be partial.
pub fn tail_of(bytes: &[u8], lines: usize, cut: bool) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut all: Vec<&str> = text.split('\n').collect();
    if cut && all.len() > 1 {
        all.remove(0);
    }
    let kept: Vec<String> = all
        .iter()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(sanitize)
        .collect();
    let from = kept.len().saturating_sub(lines);
    kept[from..].join("\n")
}

fn sanitize(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(MAX_LINE));
    for c in line.chars() {
        if out.len() >= MAX_LINE {
            out.push_str(" [...]");
            break;
        }
        if c.is_control() && c != '\t' {
            out.push_str(&c.escape_default().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_escapes_control_characters() {
        let log = b"[    0.000000] Linux version 6.1\r\n\n[    0.5] x\x1b[2Jy\r\n[    1.0] Kernel panic - not syncing: VFS\r\n";
        assert_eq!(
            tail_of(log, 2, false),
            "[    0.5] x\\u{1b}[2Jy\n[    1.0] Kernel panic - not syncing: VFS"
        );
        assert_eq!(tail_of(log, 10, false).lines().count(), 3);
        assert_eq!(tail_of(b"", 3, false), "");
        assert_eq!(tail_of(b"partial\nwhole\n", 5, true), "whole");
        let long = "a".repeat(5000);
        assert!(tail_of(long.as_bytes(), 1, false).ends_with("[...]"));
    }

    #[test]
    fn reads_only_the_end_of_a_big_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail(&path, 2), "line 19998\nline 19999");
        assert_eq!(tail(&dir.path().join("absent"), 2), "");
        assert_eq!(tail(&path, 0), "");
    }
}
