//! Shared steps of boot tests: a scratch directory with the test initramfs,
//! and parsing the init's report lines (`nproc=`, `hwrng=`) from serial
//! output.

use std::path::PathBuf;

use crate::initramfs::{InitramfsError, TestInitramfs};

/// A per-test scratch directory holding `test.cpio`; removed on drop.
#[derive(Debug)]
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
    /// The test initramfs inside it.
    pub initrd: PathBuf,
}

impl Scratch {
    /// Creates `$TMPDIR/bulkhead-<name>-<pid>/test.cpio` from the standard image.
    pub fn new(name: &str) -> Result<Self, InitramfsError> {
        let dir = std::env::temp_dir().join(format!("bulkhead-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| InitramfsError::Write {
            path: dir.clone(),
            source,
        })?;
        let initrd = dir.join("test.cpio");
        TestInitramfs::new().write_to(&initrd)?;
        Ok(Self { dir, initrd })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the first `key=value` line of `output` (serial lines may
/// carry a `\r`).
pub fn report_value<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(key)?
            .strip_prefix('=')
    })
}

/// The last `n` lines of `output`, with a note of how many came before: what a failure
/// message should show of a long serial log (CI output keeps only part of it).
pub fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let skipped = lines.len().saturating_sub(n);
    let mut text = if skipped > 0 {
        format!("[... {skipped} earlier lines ...]\n")
    } else {
        String::new()
    };
    text.push_str(&lines[skipped..].join("\n"));
    text
}

/// Whether `hwrng=` reported 16 bytes as 32 hex digits.
pub fn hwrng_ok(output: &str) -> bool {
    report_value(output, "hwrng")
        .is_some_and(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_counts_the_rest() {
        assert_eq!(tail("a\nb\nc", 2), "[... 1 earlier lines ...]\nb\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
    }

    #[test]
    fn parses_report_lines() {
        let out = "[    0.1] boot\r\nBULKHEAD-INIT-READY\r\nnproc=2\r\nhwrng=00112233445566778899aabbccddeeff\r\n";
        assert_eq!(report_value(out, "nproc"), Some("2"));
        assert!(hwrng_ok(out));
        assert!(!hwrng_ok("hwrng=unavailable\n"));
        assert!(!hwrng_ok("hwrng=0011\n"));
        assert_eq!(report_value(out, "missing"), None);
    }

    #[test]
    fn scratch_holds_an_initramfs_and_is_removed() {
        if !std::path::Path::new(crate::initramfs::DEFAULT_BUSYBOX).exists() {
            crate::skip(format!("no {}", crate::initramfs::DEFAULT_BUSYBOX));
            return;
        }
        let s = Scratch::new("scratch-test").unwrap();
        let dir = s.dir.clone();
        assert!(std::fs::metadata(&s.initrd).unwrap().len() > 100_000);
        drop(s);
        assert!(!dir.exists());
    }
}
