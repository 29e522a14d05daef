//! Reading a container's cgroup v2 files into [`ContainerStats`]. Files of
//! controllers that are not enabled read as zero.

use std::fs;
use std::path::{Path, PathBuf};

use bulkhead_protocol::types::{ContainerStats, CpuStats, IoDeviceStats, MemoryStats, PidsStats};

/// Where cgroup2 is mounted in the guest (and in the host tests' mount
/// namespace).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Absolute directory of a cgroup given as an OCI `cgroupsPath`.
pub fn cgroup_dir(cgroup_path: &Path) -> PathBuf {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    Path::new(CGROUP_ROOT).join(rel)
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// Value of `key` in a flat-keyed file (`key value` lines).
pub fn flat_key(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A single-value file: a number, or `max` (unlimited) as `None`.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

pub fn parse_io_stat(text: &str) -> Vec<IoDeviceStats> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut d = IoDeviceStats {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for kv in fields {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => d.read_bytes = v,
                    "wbytes" => d.write_bytes = v,
                    "rios" => d.read_ios = v,
                    "wios" => d.write_ios = v,
                    _ => {}
                }
            }
            Some(d)
        })
        .collect()
}

pub fn read_stats(dir: &Path) -> ContainerStats {
    let cpu = read(dir, "cpu.stat");
    let mem_stat = read(dir, "memory.stat");
    let mem_events = read(dir, "memory.events");
    ContainerStats {
        cpu: CpuStats {
            usage_usec: flat_key(&cpu, "usage_usec"),
            user_usec: flat_key(&cpu, "user_usec"),
            system_usec: flat_key(&cpu, "system_usec"),
            nr_periods: flat_key(&cpu, "nr_periods"),
            nr_throttled: flat_key(&cpu, "nr_throttled"),
            throttled_usec: flat_key(&cpu, "throttled_usec"),
        },
        memory: MemoryStats {
            usage_bytes: read(dir, "memory.current").trim().parse().unwrap_or(0),
            limit_bytes: limit(&read(dir, "memory.max")),
            anon_bytes: flat_key(&mem_stat, "anon"),
            file_bytes: flat_key(&mem_stat, "file"),
            oom_events: flat_key(&mem_events, "oom"),
            oom_kill_events: flat_key(&mem_events, "oom_kill"),
        },
        pids: PidsStats {
            current: read(dir, "pids.current").trim().parse().unwrap_or(0),
            limit: limit(&read(dir, "pids.max")),
        },
        io: parse_io_stat(&read(dir, "io.stat")),
    }
}

/// The `oom_kill` counter of a cgroup's `memory.events`.
pub fn oom_kills(dir: &Path) -> u64 {
    flat_key(&read(dir, "memory.events"), "oom_kill")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cgroup_directory() {
        let dir = tempfile::tempdir().unwrap();
        let w = |f: &str, s: &str| fs::write(dir.path().join(f), s).unwrap();
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
        );
        w("memory.current", "8192\n");
        w("memory.max", "max\n");
        w("memory.stat", "anon 4096\nfile 2048\nkernel 100\n");
        w(
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        w("pids.current", "3\n");
        w("pids.max", "100\n");
        w(
            "io.stat",
            "254:0 rbytes=4096 wbytes=512 rios=2 wios=1 dbytes=0 dios=0\n8:16 rbytes=1\n",
        );
        let s = read_stats(dir.path());
        assert_eq!(s.cpu.usage_usec, 1500);
        assert_eq!(s.cpu.throttled_usec, 20);
        assert_eq!(s.memory.usage_bytes, 8192);
        assert_eq!(s.memory.limit_bytes, None);
        assert_eq!(s.memory.anon_bytes, 4096);
        assert_eq!(s.memory.oom_events, 2);
        assert_eq!(s.memory.oom_kill_events, 1);
        assert_eq!(s.pids.current, 3);
        assert_eq!(s.pids.limit, Some(100));
        assert_eq!(s.io.len(), 2);
        assert_eq!(
            (
                s.io[0].major,
                s.io[0].minor,
                s.io[0].read_bytes,
                s.io[0].write_ios
            ),
            (254, 0, 4096, 1)
        );
        assert_eq!(oom_kills(dir.path()), 1);
    }

    #[test]
    fn missing_files_read_as_zero() {
        let s = read_stats(Path::new("/nonexistent/cgroup"));
        assert_eq!(s, ContainerStats::default());
    }

    #[test]
    fn cgroup_dir_joins_under_the_root() {
        assert_eq!(
            cgroup_dir(Path::new("/bulkhead/c1")),
            Path::new("/sys/fs/cgroup/bulkhead/c1")
        );
        assert_eq!(
            cgroup_dir(Path::new("kubepods/x")),
            Path::new("/sys/fs/cgroup/kubepods/x")
        );
    }
}
