//! Writer for the "newc" cpio format (SVR4 without CRC) that the Linux kernel
//! unpacks as an initramfs: directories, regular files, symlinks and device
//! nodes, built in memory.

use std::collections::BTreeSet;

/// Errors from building a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The path is empty, absolute after normalisation, or has `.`/`..` parts.
    #[error("invalid archive path {0:?}")]
    InvalidPath(String),
    /// The same path was added twice.
    #[error("duplicate archive path {0:?}")]
    Duplicate(String),
    /// A file is larger than the 32-bit size field allows.
    #[error("file {0:?} is too large for newc ({1} bytes)")]
    TooLarge(String, usize),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// An in-memory newc archive. Parent directories are created on demand
/// (mode 0755), so entries can be added in any order.
#[derive(Debug, Default)]
pub struct CpioBuilder {
    out: Vec<u8>,
    paths: BTreeSet<String>,
    next_ino: u32,
}

impl CpioBuilder {
    /// Creates an empty archive.
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            paths: BTreeSet::new(),
            next_ino: 1,
        }
    }

    /// Adds a directory (and its missing parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, CpioError> {
        let path = normalise(path)?;
        self.parents(&path)?;
        if self.paths.contains(&path) {
            return Err(CpioError::Duplicate(path));
        }
        self.entry(&path, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])?;
        Ok(self)
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<&mut Self, CpioError> {
        let path = normalise(path)?;
        self.parents(&path)?;
        self.new_entry(&path, S_IFREG | (perm & 0o7777), 1, (0, 0), data)?;
        Ok(self)
    }

    /// Adds a symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, CpioError> {
        let path = normalise(path)?;
        self.parents(&path)?;
        self.new_entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())?;
        Ok(self)
    }

    /// Adds a character device node.
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        let path = normalise(path)?;
        self.parents(&path)?;
        self.new_entry(&path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])?;
        Ok(self)
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, (0, 0), 0, "TRAILER!!!");
        self.out
    }

    fn parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !self.paths.contains(&prefix) {
                let dir = prefix.clone();
                self.entry(&dir, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
        }
        Ok(())
    }

    fn new_entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        if self.paths.contains(path) {
            return Err(CpioError::Duplicate(path.to_string()));
        }
        self.entry(path, mode, nlink, rdev, data)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let size =
            u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(path.into(), data.len()))?;
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        self.header(ino, mode, nlink, rdev, size, path);
        self.out.extend_from_slice(data);
        self.pad();
        self.paths.insert(path.to_string());
        Ok(())
    }

    fn header(&mut self, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), size: u32, name: &str) {
        // The name length counts the terminating NUL; names are checked to
        // hold no NUL and to be far shorter than u32::MAX.
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        let padded = self.out.len().next_multiple_of(4);
        self.out.resize(padded, 0);
    }
}

/// Strips leading `/` and rejects empty, `.`, `..` and NUL-containing paths.
fn normalise(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let bad = trimmed.is_empty()
        || trimmed.contains('\0')
        || trimmed
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        || trimmed.len() > 4096;
    if bad {
        return Err(CpioError::InvalidPath(path.to_string()));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn header_layout_and_padding() {
        let mut b = CpioBuilder::new();
        b.file("a", 0o644, b"xyz").unwrap();
        let out = b.finish();
        // Entry: 110-byte header + "a\0" = 112 (aligned), 3 data bytes + 1 pad.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000001"); // ino
        assert_eq!(&out[14..22], b"000081a4"); // S_IFREG | 0644
        assert_eq!(&out[54..62], b"00000003"); // filesize
        assert_eq!(&out[94..102], b"00000002"); // namesize
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        assert_eq!(&out[116..122], b"070701");
        assert!(out.ends_with(b"TRAILER!!!\0\0\0\0") || out.ends_with(b"TRAILER!!!\0"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn rejects_bad_paths_and_duplicates() {
        let mut b = CpioBuilder::new();
        assert!(matches!(
            b.file("", 0o644, b""),
            Err(CpioError::InvalidPath(_))
        ));
        assert!(matches!(
            b.file("a/../b", 0o644, b""),
            Err(CpioError::InvalidPath(_))
        ));
        assert!(matches!(
            b.file("a\0b", 0o644, b""),
            Err(CpioError::InvalidPath(_))
        ));
        b.file("/bin/x", 0o755, b"1").unwrap();
        assert!(matches!(
            b.file("bin/x", 0o755, b"2"),
            Err(CpioError::Duplicate(_))
        ));
        assert!(matches!(b.dir("bin", 0o755), Err(CpioError::Duplicate(_))));
    }

    /// Cross-checks the archive with GNU cpio when it is installed.
    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        if Command::new("cpio").arg("--version").output().is_err() {
            crate::skip("cpio not installed");
            return;
        }
        let mut b = CpioBuilder::new();
        b.file("/bin/tool", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        b.symlink("/bin/sh", "tool").unwrap();
        b.char_device("/dev/console", 0o600, 5, 1).unwrap();
        b.dir("/proc", 0o555).unwrap();
        let data = b.finish();

        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = listing.lines().collect();
        // `dev` is created on demand as the parent of dev/console.
        assert_eq!(lines.len(), 6, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"));
        assert!(lines[1].starts_with("-rwxr-xr-x") && lines[1].ends_with(" bin/tool"));
        assert!(lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with("bin/sh -> tool"));
        assert!(lines[3].starts_with("drwxr-xr-x") && lines[3].ends_with(" dev"));
        assert!(lines[4].starts_with("crw-------") && lines[4].contains(" 5,   1 "));
        assert!(lines[4].ends_with(" dev/console"));
        assert!(lines[5].starts_with("dr-xr-xr-x") && lines[5].ends_with(" proc"));
    }
}
