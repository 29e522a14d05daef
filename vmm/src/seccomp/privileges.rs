//! Dropping privileges after set-up: inherited file descriptors closed at start, then (before
//! the vCPU threads start, so they inherit it) an optional switch to another uid/gid, an empty
//! capability bounding set, no ambient, effective, permitted or inheritable capabilities, and
//! `no_new_privs`.
//!
//! After set-up the VMM needs no privilege: `/dev/kvm`, guest memory, the serial output file
//! and the vsock listener are open, and the unix sockets it connects to at run time
//! (`<uds>_<port>`, vhost-user) belong to the user that started it.

use std::io;
use std::os::fd::RawFd;

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot drop supplementary groups")]
    SetGroups(#[source] io::Error),
    #[error("cannot switch to gid {0}")]
    SetGid(u32, #[source] io::Error),
    #[error("cannot switch to uid {0}")]
    SetUid(u32, #[source] io::Error),
    #[error("cannot drop capability {0} from the bounding set")]
    BoundingSet(u32, #[source] io::Error),
    #[error("cannot clear the ambient capabilities")]
    Ambient(#[source] io::Error),
    #[error("cannot clear the capability sets")]
    Capset(#[source] io::Error),
    #[error("capabilities are still held after dropping them")]
    StillPrivileged,
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
}

/// The identity to switch to after set-up (each part optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    /// Switch to this user ID.
    pub uid: Option<u32>,
    /// Switch to this group ID (and drop supplementary groups).
    pub gid: Option<u32>,
}

/// Close every file descriptor above stderr that the VMM inherited, except those in `keep`
/// (the descriptors named by `--net fd=N`, `--vsock fd=N`, `--fs TAG=fd=N`), which must be
/// open. Call first in `main`, before
/// anything is opened.
pub fn close_inherited_fds(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|fd| *fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    for &fd in &keep {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("inherited fd {fd} (named by --net, --vsock or --fs) is not open: {e}"),
            ));
        }
    }
    // The ranges between the kept descriptors: [3, k0-1], [k0+1, k1-1], ..., [kn+1, MAX].
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    let mut start: u32 = 3;
    for &fd in &keep {
        let fd = fd as u32;
        if fd > start {
            ranges.push((start, fd - 1));
        }
        start = fd + 1;
    }
    ranges.push((start, u32::MAX));
    let mut fallback = false;
    for &(first, last) in &ranges {
        // SAFETY: close_range(2) only closes descriptors; nothing in this process holds one
        // above 2 yet, except those kept.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if rc != 0 {
            fallback = true;
            break;
        }
    }
    if !fallback {
        return Ok(());
    }
    // Kernels before 5.9: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: see above; the directory's own fd is already closed (EBADF, ignored).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// include/uapi/linux/capability.h.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    Ok(data)
}

fn capset_empty() -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })
}

/// Empty the bounding set. Without CAP_SETPCAP (not root) this fails with EPERM, which is
/// fine: such a process has no capabilities to lose, and `no_new_privs` keeps it from gaining
/// any through exec.
fn drop_bounding_set() -> Result<(), PrivilegeError> {
    for cap in 0..64u32 {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Past the last capability this kernel knows.
                Some(libc::EINVAL) => break,
                Some(libc::EPERM) => return Ok(()),
                _ => return Err(PrivilegeError::BoundingSet(cap, e)),
            }
        }
    }
    Ok(())
}

/// Switch identity if asked, then give up every capability and set `no_new_privs`. Affects
/// the calling thread and the threads it starts afterwards: call it on the main thread before
/// the vCPU threads are spawned.
pub fn drop_privileges(identity: Identity) -> Result<(), PrivilegeError> {
    if let Some(gid) = identity.gid {
        // SAFETY: setgroups with an empty list; setresgid with plain integers.
        check(unsafe { libc::setgroups(0, std::ptr::null()) }.into())
            .map_err(PrivilegeError::SetGroups)?;
        check(unsafe { libc::setresgid(gid, gid, gid) }.into())
            .map_err(|e| PrivilegeError::SetGid(gid, e))?;
    }
    drop_bounding_set()?;
    clear_ambient()?;
    if let Some(uid) = identity.uid {
        // SAFETY: setresuid with plain integers.
        check(unsafe { libc::setresuid(uid, uid, uid) }.into())
            .map_err(|e| PrivilegeError::SetUid(uid, e))?;
    }
    clear_capabilities_and_set_no_new_privs()?;
    // Capabilities belong to threads: one started during set-up keeps what it had. The
    // process-wide seccomp filter still confines it; say which threads those are.
    for name in threads_with_capabilities() {
        log::warn!("confinement: thread {name:?} was started before the privilege drop and keeps its capabilities");
    }
    Ok(())
}

/// Give up every capability of the calling thread only (bounding set, ambient, effective,
/// permitted, inheritable) and set its `no_new_privs`, without changing identity. For helper
/// threads started during set-up, before [`drop_privileges`]: capabilities belong to threads,
/// so such a thread would otherwise keep them.
pub fn drop_thread_privileges() -> Result<(), PrivilegeError> {
    drop_bounding_set()?;
    clear_ambient()?;
    clear_capabilities_and_set_no_new_privs()
}

fn clear_ambient() -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(rc.into()).map_err(PrivilegeError::Ambient)
}

fn clear_capabilities_and_set_no_new_privs() -> Result<(), PrivilegeError> {
    capset_empty().map_err(PrivilegeError::Capset)?;
    let left = capget().map_err(PrivilegeError::Capset)?;
    if left
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0)
    {
        return Err(PrivilegeError::StillPrivileged);
    }
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc.into()).map_err(PrivilegeError::NoNewPrivs)
}

/// Names of the process's threads that still hold effective or permitted capabilities.
pub fn threads_with_capabilities() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let holds = |name: &str| field(name).is_some_and(|v| v.chars().any(|c| c != '0'));
        if holds("CapEff:") || holds("CapPrm:") {
            found.push(field("Name:").unwrap_or_default());
        }
    }
    found
}
