//! File descriptors a helper process (VMM, virtiofsd) must not inherit.
//!
//! The runtime that spawns them (the containerd shim above all) holds descriptors that
//! were not opened by Rust's std and may lack `O_CLOEXEC`: the ttrpc listener containerd
//! passes to the shim, connections accepted by third-party crates. A VMM that inherits
//! one keeps it open after the shim dies, and containerd, which watches that socket to
//! learn of a dead shim, would wait forever. So every descriptor above stderr is marked
//! close-on-exec in the child just before `exec`, except the ones passed on purpose
//! ([`pass_fds`]: the taps of the VMM), which get fixed numbers from
//! [`FIRST_PASSED_FD`] on.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use tokio::process::Command;

/// `CLOSE_RANGE_CLOEXEC` from `<linux/close_range.h>` (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// The number the first descriptor given to [`pass_fds`] has in the child; the others
/// follow in order (`FIRST_PASSED_FD + i`).
pub const FIRST_PASSED_FD: RawFd = 3;

/// Makes `cmd`'s child close every inherited descriptor above 2 when it calls `exec`.
pub fn close_inherited_fds(cmd: &mut Command) -> &mut Command {
    pass_fds(cmd, &[])
}

/// Makes `cmd`'s child inherit `fds` as descriptors [`FIRST_PASSED_FD`] + i, in order, and
/// nothing else above stderr (as [`close_inherited_fds`]). The descriptors must stay open
/// until the command is spawned. In the child each is first moved above the target range,
/// then `dup2`ed into place, so a source that already sits in the range is not clobbered.
///
/// One limit, of std's process spawning: std reports an `exec` failure through a
/// close-on-exec pipe that the child inherits; if that pipe's write end were one of the
/// target numbers, `dup2` would replace it and a failed `exec` would look like a child that
/// exited with status 1. The targets are the lowest numbers, which a process that holds the
/// descriptors to pass (and a tokio runtime) has long used, so this does not happen in
/// practice.
pub fn pass_fds<'a>(cmd: &'a mut Command, fds: &[BorrowedFd<'_>]) -> &'a mut Command {
    let mut sources: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let count = RawFd::try_from(sources.len()).unwrap_or(RawFd::MAX - FIRST_PASSED_FD);
    let above = FIRST_PASSED_FD.saturating_add(count);
    // SAFETY: the closure runs in the forked child before exec and makes only raw
    // syscalls (fcntl, dup2, close_range), which are async-signal-safe; it mutates only
    // its own copy of `sources` and allocates nothing (`last_os_error` does not).
    unsafe {
        cmd.pre_exec(move || {
            for fd in sources.iter_mut() {
                let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above);
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *fd = moved;
            }
            for (target, fd) in (FIRST_PASSED_FD..).zip(sources.iter()) {
                // dup2 clears close-on-exec on the target.
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Marking instead of closing keeps std's own exec-error pipe working. Older
            // kernels (ENOSYS/EINVAL) just keep the old behaviour.
            libc::syscall(
                libc::SYS_close_range,
                above as libc::c_uint,
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
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    /// A descriptor without close-on-exec (as one handed over by another process would be),
    /// numbered 300 or above: low numbers can collide with descriptors the shell opens for
    /// itself (dash keeps fd 10), which would read as a leak.
    fn inheritable_high_fd() -> OwnedFd {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: F_DUPFD makes a new descriptor (close-on-exec clear) we then own.
        let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 300) };
        assert!(fd >= 300, "F_DUPFD: {}", std::io::Error::last_os_error());
        // SAFETY: the descriptor was just made and is owned by nothing else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[tokio::test]
    async fn a_descriptor_without_cloexec_does_not_reach_the_child() {
        let file = inheritable_high_fd();
        let fd = file.as_raw_fd();
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

    /// Two descriptors passed in reverse order of their numbers arrive as 3 and 4, in the
    /// given order; a third one without close-on-exec does not arrive at all.
    #[tokio::test]
    async fn passed_descriptors_get_fixed_numbers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::File::create(dir.path().join("a")).unwrap();
        let b = std::fs::File::create(dir.path().join("b")).unwrap();
        let stray = inheritable_high_fd();
        let probe = format!(
            "readlink /proc/$$/fd/3; readlink /proc/$$/fd/4; \
             test -e /proc/$$/fd/{} && echo leaked; test -e /proc/$$/fd/5 && echo extra; true",
            stray.as_raw_fd()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &probe]);
        let out = pass_fds(&mut cmd, &[b.as_fd(), a.as_fd()])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let b_path = dir.path().join("b");
        let a_path = dir.path().join("a");
        assert_eq!(
            lines,
            [b_path.to_str().unwrap(), a_path.to_str().unwrap()],
            "{text}"
        );
    }
}
