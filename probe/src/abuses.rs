//! The classic escapes and abuses, each attempted only as far as proving access: a
//! `tmpfs` mount, a host disk mounted read-only, `/proc/sysrq-trigger` opened for writing
//! (never written), a module image the kernel rejects after its permission check, a
//! cgroup v1 hierarchy whose `release_agent` is opened (never written), a user namespace
//! in a child, `ptrace` of the host's marker process, a raw socket, the kernel keyring,
//! a BPF map, a perf event, and a file written through a read-write volume.

use std::ffi::CString;
use std::io;

use crate::report::{Group, Outcome, ProbeResult};
use crate::HostHints;

fn result(id: &str, title: &str, outcome: Outcome, detail: String, host: bool) -> ProbeResult {
    ProbeResult {
        id: id.into(),
        group: Group::Abuse,
        title: title.into(),
        outcome,
        detail,
        host_evidence: host,
    }
}

/// `Allowed` when `ret` is not -1, else `Refused` with the errno.
fn by_return(id: &str, title: &str, ret: i64, ok_detail: &str) -> ProbeResult {
    if ret == -1 {
        let e = io::Error::last_os_error();
        result(id, title, Outcome::Refused, e.to_string(), false)
    } else {
        result(id, title, Outcome::Allowed, ok_detail.into(), false)
    }
}

pub fn probe(hints: &HostHints) -> Vec<ProbeResult> {
    vec![
        mount_tmpfs(),
        host_disk(hints),
        sysrq(),
        kernel_module(),
        release_agent(),
        user_namespace(),
        ptrace_outside(hints),
        raw_socket(),
        keyring(),
        bpf_map(),
        perf_event(),
        volume_write(hints),
    ]
}

fn scratch_dir(name: &str) -> Option<CString> {
    let dir = format!("/tmp/.bulkhead-probe-{name}-{}", std::process::id());
    std::fs::create_dir_all(&dir).ok()?;
    CString::new(dir).ok()
}

fn mount(source: &str, target: &CString, fstype: &str, flags: libc::c_ulong, data: &str) -> i64 {
    let (Ok(src), Ok(fs), Ok(d)) = (
        CString::new(source),
        CString::new(fstype),
        CString::new(data),
    ) else {
        return -1;
    };
    // SAFETY: NUL-terminated strings that outlive the call.
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            flags,
            d.as_ptr().cast(),
        ) as i64
    }
}

fn unmount(target: &CString) {
    // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(target.to_string_lossy().as_ref());
}

fn mount_tmpfs() -> ProbeResult {
    let title = "mount a filesystem";
    let Some(dir) = scratch_dir("mnt") else {
        return result(
            "mount",
            title,
            Outcome::Unavailable,
            "no writable /tmp".into(),
            false,
        );
    };
    let r = by_return(
        "mount",
        title,
        mount("none", &dir, "tmpfs", 0, "size=64k"),
        "tmpfs mounted",
    );
    unmount(&dir);
    r
}

fn host_disk(hints: &HostHints) -> ProbeResult {
    use std::os::unix::fs::FileTypeExt;
    let title = "mount a host block device";
    let disks: Vec<String> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_block_device()).unwrap_or(false))
        .map(|e| e.path().display().to_string())
        .filter(|p| !p.contains("/loop") && !p.contains("/ram"))
        .collect();
    if disks.is_empty() {
        return result(
            "host_disk",
            title,
            Outcome::Refused,
            "no block device in /dev".into(),
            false,
        );
    }
    let Some(dir) = scratch_dir("disk") else {
        return result(
            "host_disk",
            title,
            Outcome::Unavailable,
            "no writable /tmp".into(),
            false,
        );
    };
    let mut last_error = String::new();
    for disk in &disks {
        for fs in ["ext4", "xfs", "btrfs", "vfat"] {
            let data = if fs == "ext4" { "noload" } else { "" };
            if mount(
                disk,
                &dir,
                fs,
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                data,
            ) != 0
            {
                last_error = io::Error::last_os_error().to_string();
                continue;
            }
            let found = hints.host_file.as_ref().is_some_and(|f| {
                let p = format!("{}/{}", dir.to_string_lossy(), f.trim_start_matches('/'));
                std::fs::read_to_string(p)
                    .is_ok_and(|t| !hints.nonce.is_empty() && t.contains(&hints.nonce))
            });
            unmount(&dir);
            let detail = if found {
                format!("{disk} ({fs}) mounted read-only: the host's file is readable")
            } else {
                format!("{disk} ({fs}) mounted read-only")
            };
            return result("host_disk", title, Outcome::Allowed, detail, found);
        }
    }
    unmount(&dir);
    result(
        "host_disk",
        title,
        Outcome::Refused,
        format!("{} devices, none mounted: {last_error}", disks.len()),
        false,
    )
}

fn sysrq() -> ProbeResult {
    let title = "open /proc/sysrq-trigger for writing";
    match std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sysrq-trigger")
    {
        Ok(_) => result(
            "sysrq",
            title,
            Outcome::Allowed,
            "opened (nothing written)".into(),
            false,
        ),
        Err(e) => result("sysrq", title, Outcome::Refused, e.to_string(), false),
    }
}

fn kernel_module() -> ProbeResult {
    let title = "load a kernel module";
    // Not an ELF image: past the permission checks the kernel rejects it (ENOEXEC).
    let image = [0u8; 64];
    let params = c"";
    // SAFETY: init_module reads `image.len()` bytes from our buffer and a NUL-terminated
    // parameter string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            params.as_ptr(),
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                result("kernel_module", title, Outcome::Refused, e.to_string(), false)
            }
            // No module support at all: nothing can be loaded, which is a refusal.
            Some(libc::ENOSYS) => result(
                "kernel_module",
                title,
                Outcome::Refused,
                "this kernel has no module support (ENOSYS)".into(),
                false,
            ),
            _ => result(
                "kernel_module",
                title,
                Outcome::Allowed,
                format!("the kernel read the image and rejected its contents ({e}): a real module would load"),
                false,
            ),
        }
    } else {
        result(
            "kernel_module",
            title,
            Outcome::Allowed,
            "accepted".into(),
            false,
        )
    }
}

fn release_agent() -> ProbeResult {
    let title = "cgroup v1 release_agent";
    let Some(dir) = scratch_dir("cg") else {
        return result(
            "release_agent",
            title,
            Outcome::Unavailable,
            "no writable /tmp".into(),
            false,
        );
    };
    if mount("cgroup", &dir, "cgroup", 0, "none,name=bulkhead-probe") != 0 {
        let e = io::Error::last_os_error();
        unmount(&dir);
        return result(
            "release_agent",
            title,
            Outcome::Refused,
            format!("mount cgroup v1: {e}"),
            false,
        );
    }
    let agent = format!("{}/release_agent", dir.to_string_lossy());
    let r = match std::fs::OpenOptions::new().write(true).open(&agent) {
        Ok(_) => result(
            "release_agent",
            title,
            Outcome::Allowed,
            "a v1 hierarchy mounted and its release_agent opened for writing (nothing written)"
                .into(),
            false,
        ),
        Err(e) => result(
            "release_agent",
            title,
            Outcome::Refused,
            format!("mounted, release_agent: {e}"),
            false,
        ),
    };
    unmount(&dir);
    r
}

/// Runs `f` in a forked child and returns its exit status (0..=255), or -1.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only makes system calls and exits with _exit.
    match unsafe { libc::fork() } {
        -1 => -1,
        0 => {
            let code = f();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            }
        }
    }
}

fn user_namespace() -> ProbeResult {
    let title = "unshare a user namespace and regain capabilities";
    // Exit 0: unshared and holding every capability inside; 10 + errno: refused.
    let code = in_child(|| {
        // SAFETY: unshare of this (single-threaded) child.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return 10
                + io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(0)
                    .min(200);
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap_or("0")
            .trim()
            .to_owned();
        if u64::from_str_radix(&eff, 16).unwrap_or(0).count_ones() > 30 {
            0
        } else {
            1
        }
    });
    match code {
        0 => result(
            "userns",
            title,
            Outcome::Allowed,
            "unshared; full capabilities inside".into(),
            false,
        ),
        1 => result(
            "userns",
            title,
            Outcome::Allowed,
            "unshared; capabilities not regained".into(),
            false,
        ),
        c if c >= 10 => result(
            "userns",
            title,
            Outcome::Refused,
            io::Error::from_raw_os_error(c - 10).to_string(),
            false,
        ),
        _ => result(
            "userns",
            title,
            Outcome::Unavailable,
            "the child failed".into(),
            false,
        ),
    }
}

fn ptrace_outside(hints: &HostHints) -> ProbeResult {
    let title = "ptrace a process outside";
    let Some(pid) = hints.marker_pid else {
        return result(
            "ptrace",
            title,
            Outcome::Unavailable,
            "no marker".into(),
            false,
        );
    };
    // Attach from a child (it detaches by exiting); 0: attached.
    let code = in_child(|| {
        // SAFETY: PTRACE_ATTACH to a pid; no memory is passed.
        let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid as libc::pid_t, 0, 0) };
        if r == 0 {
            0
        } else {
            10 + io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(0)
                .min(200)
        }
    });
    match code {
        0 => result(
            "ptrace",
            title,
            Outcome::Allowed,
            format!("attached to the host's marker {pid}"),
            true,
        ),
        c if c >= 10 => {
            let e = io::Error::from_raw_os_error(c - 10);
            let why = if c - 10 == libc::ESRCH {
                format!("pid {pid} does not exist here")
            } else {
                e.to_string()
            };
            result("ptrace", title, Outcome::Refused, why, false)
        }
        _ => result(
            "ptrace",
            title,
            Outcome::Unavailable,
            "the child failed".into(),
            false,
        ),
    }
}

fn raw_socket() -> ProbeResult {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    let r = by_return(
        "raw_socket",
        "open a raw socket",
        fd as i64,
        "raw ICMP socket opened",
    );
    if fd >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    }
    r
}

fn keyring() -> ProbeResult {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl(JOIN_SESSION_KEYRING, NULL): a new anonymous session keyring.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0usize) };
    by_return(
        "keyctl",
        "use the kernel keyring (keyctl)",
        r,
        "joined a new session keyring",
    )
}

fn bpf_map() -> ProbeResult {
    // union bpf_attr for BPF_MAP_CREATE: type, key size, value size, max entries.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf(BPF_MAP_CREATE = 0) reads `size` bytes of our zero-padded attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let r = by_return("bpf", "create a BPF map", fd, "array map created");
    if fd >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(fd as i32) };
    }
    r
}

fn perf_event() -> ProbeResult {
    // struct perf_event_attr: type SOFTWARE (1), size, config CPU_CLOCK (0), disabled.
    let mut attr = [0u64; 16];
    let size = std::mem::size_of_val(&attr) as u64;
    attr[0] = 1 | (size << 32);
    attr[1] = 0;
    attr[5] = 1; // flags: disabled
                 // SAFETY: perf_event_open reads `size` bytes of our attr; this process, any CPU.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) };
    let r = by_return(
        "perf_event",
        "open a perf event",
        fd,
        "software event opened",
    );
    if fd >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(fd as i32) };
    }
    r
}

fn volume_write(hints: &HostHints) -> ProbeResult {
    let title = "write through a bind-mounted host path";
    let Some(dir) = &hints.rw_dir else {
        return result(
            "volume_write",
            title,
            Outcome::Unavailable,
            "no volume".into(),
            false,
        );
    };
    let path = format!("{dir}/written-by-probe");
    match std::fs::write(&path, &hints.nonce) {
        Ok(()) => result(
            "volume_write",
            title,
            Outcome::Allowed,
            format!("wrote {path}"),
            false,
        ),
        Err(e) => result(
            "volume_write",
            title,
            Outcome::Refused,
            e.to_string(),
            false,
        ),
    }
}
