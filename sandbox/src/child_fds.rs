//! File descriptors a helper process (VMM, virtiofsd) must not inherit.
//!
//! The runtime that spawns them (the containerd shim above all) holds descriptors that
//! were not opened by Rust's std and may lack `O_CLOEXEC`: the ttrpc listener containerd
//! passes to the shim, connections accepted by third-party crates. A VMM that inherits
//! one keeps it open after the shim dies, and containerd, which watches that socket to
//! learn of a dead shim, would wait forever. So every descriptor above stderr is marked
//! close-on-exec in the child just before `exec`.

use tokio::process::Command;

/// `CLOSE_RANGE_CLOEXEC` from `<linux/close_range.h>` (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Makes `cmd`'s child close every inherited descriptor above 2 when it calls `exec`.
pub fn close_inherited_fds(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and makes one raw
    // syscall, which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // Marking instead of closing keeps std's own exec-error pipe working. Older
            // kernels (ENOSYS/EINVAL) just keep the old behaviour.
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn a_descriptor_without_cloexec_does_not_reach_the_child() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_raw_fd();
        // Clear O_CLOEXEC, as a descriptor handed over by another process would be.
        // SAFETY: fcntl on a descriptor we own.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        let probe = format!("test -e /proc/self/fd/{fd} && echo leaked || echo closed");
        let mut plain = Command::new("sh");
        plain.args(["-c", &probe]);
        let out = plain.output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "leaked");
        let mut guarded = Command::new("sh");
        guarded.args(["-c", &probe]);
        let out = close_inherited_fds(&mut guarded).output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
        drop(file);
    }
}
