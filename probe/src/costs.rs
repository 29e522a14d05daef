//! What basic operations cost inside the workload: `getpid`, `open`+`close`, `mmap`+
//! `munmap` (nanoseconds per call, median of five rounds), and sequential file I/O on the
//! root filesystem and on a volume (MiB/s, written with `fsync`, read back after dropping
//! nothing: a warm read, which is what a rootfs over virtio-fs serves from the guest's
//! page cache).

use std::io::{Read, Write};
use std::time::Instant;

use crate::report::Costs;
use crate::HostHints;

fn median_ns(rounds: usize, iterations: u32, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iterations {
                f();
            }
            t.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// Write then read `mib` MiB at `path`; (write, read) MiB/s.
fn file_io(path: &str, mib: usize) -> Option<(f64, f64)> {
    let block = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(path).ok()?;
    for _ in 0..mib {
        f.write_all(&block).ok()?;
    }
    f.sync_all().ok()?;
    let write = mib as f64 / t.elapsed().as_secs_f64();
    drop(f);
    let t = Instant::now();
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(_) => return None,
        }
    }
    let read = (total >> 20) as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    Some((write, read))
}

pub fn probe(hints: &HostHints) -> Costs {
    // SAFETY: getpid has no preconditions; called directly, not through a libc cache.
    let getpid_ns = median_ns(5, 100_000, || unsafe {
        libc::syscall(libc::SYS_getpid);
    });
    let null = c"/dev/null";
    let open_close_ns = median_ns(5, 10_000, || {
        // SAFETY: a NUL-terminated path; the descriptor is closed at once.
        unsafe {
            let fd = libc::open(null.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    });
    let mmap_munmap_ns = median_ns(5, 10_000, || {
        // SAFETY: an anonymous private page, touched and unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p != libc::MAP_FAILED {
                *(p as *mut u8) = 1;
                libc::munmap(p, 4096);
            }
        }
    });
    let (rootfs_write_mib_s, rootfs_read_mib_s) =
        file_io("/tmp/.bulkhead-probe-io", 32).unwrap_or((0.0, 0.0));
    let volume = hints
        .rw_dir
        .as_ref()
        .and_then(|d| file_io(&format!("{d}/.bulkhead-probe-io"), 32));
    Costs {
        getpid_ns,
        open_close_ns,
        mmap_munmap_ns,
        rootfs_write_mib_s,
        rootfs_read_mib_s,
        volume_write_mib_s: volume.map(|v| v.0),
        volume_read_mib_s: volume.map(|v| v.1),
    }
}
