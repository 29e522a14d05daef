//! A VMM process's own memory use, read from /proc: resident memory outside
//! the guest RAM mapping (from smaps) and peak RSS (VmHWM).

use std::path::Path;

/// Errors from reading /proc.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// /proc/<pid>/{smaps,status} could not be read.
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    /// No mapping looked like guest RAM.
    #[error("no anonymous or memfd mapping of {0} KiB (the guest RAM) in smaps")]
    NoGuestRam(u64),
    /// status had no VmHWM line.
    #[error("no VmHWM in {0}")]
    NoHwm(String),
}

/// Memory figures of a VMM process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmMemory {
    /// Sum of Rss over every mapping except the guest RAM mapping.
    pub overhead_rss_kib: u64,
    /// Rss of the guest RAM mapping.
    pub guest_rss_kib: u64,
    /// Peak resident set size (VmHWM), guest RAM included.
    pub peak_rss_kib: u64,
}

/// Reads /proc/<pid>/smaps and /proc/<pid>/status. Guest RAM is the largest
/// anonymous or memfd mapping whose size is `guest_mib`.
pub fn vmm_memory(pid: u32, guest_mib: u64) -> Result<VmmMemory, MemoryError> {
    let smaps = read(&format!("/proc/{pid}/smaps"))?;
    let status_path = format!("/proc/{pid}/status");
    let status = read(&status_path)?;
    let (overhead_rss_kib, guest_rss_kib) = split_smaps(&smaps, guest_mib * 1024)?;
    let peak_rss_kib = status_kib(&status, "VmHWM:").ok_or(MemoryError::NoHwm(status_path))?;
    Ok(VmmMemory {
        overhead_rss_kib,
        guest_rss_kib,
        peak_rss_kib,
    })
}

fn read(path: &str) -> Result<String, MemoryError> {
    std::fs::read_to_string(Path::new(path)).map_err(|e| MemoryError::Read(path.to_string(), e))
}

/// One smaps mapping: size from the header's address range, and its Rss.
#[derive(Debug)]
struct Mapping {
    size_kib: u64,
    anon_or_memfd: bool,
    rss_kib: u64,
}

/// Returns (Rss outside guest RAM, Rss of guest RAM). The guest RAM mapping
/// is the anonymous/memfd mapping of exactly `guest_kib`; if several match,
/// the one with most Rss.
pub fn split_smaps(smaps: &str, guest_kib: u64) -> Result<(u64, u64), MemoryError> {
    let maps = parse_smaps(smaps);
    let guest = maps
        .iter()
        .enumerate()
        .filter(|(_, m)| m.anon_or_memfd && m.size_kib == guest_kib)
        .max_by_key(|(_, m)| m.rss_kib)
        .map(|(i, _)| i)
        .ok_or(MemoryError::NoGuestRam(guest_kib))?;
    let total: u64 = maps.iter().map(|m| m.rss_kib).sum();
    let guest_rss = maps.get(guest).map_or(0, |m| m.rss_kib);
    Ok((total - guest_rss, guest_rss))
}

fn parse_smaps(smaps: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(s), Ok(e)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                // Header: range perms offset dev inode [path]
                let path: Vec<&str> = fields.skip(4).collect();
                let path = path.join(" ");
                let anon_or_memfd = path.is_empty()
                    || path.starts_with("/memfd:")
                    || path.starts_with("[anon")
                    || path.starts_with("/dev/zero");
                maps.push(Mapping {
                    size_kib: e.saturating_sub(s) / 1024,
                    anon_or_memfd,
                    rss_kib: 0,
                });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(m), Some(v)) =
                (maps.last_mut(), fields.next().and_then(|v| v.parse().ok()))
            {
                m.rss_kib = v;
            }
        }
    }
    maps
}

/// Value in KiB of a `Key:   123 kB` line of /proc/<pid>/status.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 600 kB
Pss:                 600 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:               20000 kB
7f0010000000-7f0010200000 rw-p 00000000 00:00 0 
Size:               2048 kB
Rss:                 300 kB
7f0020000000-7f0028000000 rw-s 00000000 00:01 77 /memfd:other (deleted)
Size:             131072 kB
Rss:                  50 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn excludes_only_the_guest_ram_mapping() {
        // Two 128 MiB candidates: the one with most Rss is guest RAM.
        let (overhead, guest) = split_smaps(SMAPS, 128 * 1024).unwrap();
        assert_eq!(guest, 20000);
        assert_eq!(overhead, 600 + 300 + 50 + 12);
    }

    #[test]
    fn file_mappings_are_never_guest_ram() {
        assert!(matches!(
            split_smaps(SMAPS, 1024),
            Err(MemoryError::NoGuestRam(1024))
        ));
        assert!(matches!(split_smaps(SMAPS, 2048), Ok((20662, 300))));
    }

    #[test]
    fn reads_status_fields_and_own_process() {
        assert_eq!(
            status_kib("Name:\tx\nVmHWM:\t  4321 kB\n", "VmHWM:"),
            Some(4321)
        );
        assert_eq!(status_kib("Name:\tx\n", "VmHWM:"), None);
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status_kib(&me, "VmHWM:").unwrap() > 0);
    }
}
