//! What the workload can see of the host: its processes, mounts, kernel symbols, kernel
//! log, network interfaces, devices and cgroup tree. "Allowed" means seen; `host_evidence`
//! marks what is certainly the host's (the comparer's marker process or nonce).

use std::path::Path;

use crate::report::{Group, Outcome, ProbeResult};
use crate::HostHints;

fn result(id: &str, title: &str, outcome: Outcome, detail: String, host: bool) -> ProbeResult {
    ProbeResult {
        id: id.into(),
        group: Group::Visibility,
        title: title.into(),
        outcome,
        detail,
        host_evidence: host,
    }
}

pub fn probe(hints: &HostHints) -> Vec<ProbeResult> {
    vec![
        host_processes(hints),
        host_mounts(hints),
        kallsyms(),
        kernel_log(),
        host_network(hints),
        devices(),
        cgroup_tree(),
    ]
}

fn pids_in_proc() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// A cgroup below `dir` holding the host's marker: named with the nonce (the comparer puts
/// the marker in a cgroup of that name) or listing `pid` (pids outside the reader's pid
/// namespace read as 0, so the name is what shows through). At most `budget` directories.
fn in_cgroup_tree(dir: &Path, pid: u32, nonce: &str, budget: &mut u32) -> Option<String> {
    if *budget == 0 {
        return None;
    }
    *budget -= 1;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let named = !nonce.is_empty()
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(nonce));
    if (named && !procs.trim().is_empty()) || procs.lines().any(|l| l.trim().parse() == Ok(pid)) {
        return Some(dir.display().to_string());
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(found) = in_cgroup_tree(&p, pid, nonce, budget) {
                return Some(found);
            }
        }
    }
    None
}

fn host_processes(hints: &HostHints) -> ProbeResult {
    let title = "host processes";
    let pids = pids_in_proc();
    let Some(marker) = hints.marker_pid else {
        return result(
            "host_processes",
            title,
            Outcome::Unavailable,
            "no marker".into(),
            false,
        );
    };
    let cmdline = std::fs::read(format!("/proc/{marker}/cmdline")).unwrap_or_default();
    let nonce = hints.nonce.as_bytes();
    if !nonce.is_empty() && cmdline.windows(nonce.len()).any(|w| w == nonce) {
        return result(
            "host_processes",
            title,
            Outcome::Allowed,
            format!(
                "the host's marker process {marker} is in /proc ({} processes seen)",
                pids.len()
            ),
            true,
        );
    }
    let mut budget = 2000;
    if let Some(cgroup) = in_cgroup_tree(
        Path::new("/sys/fs/cgroup"),
        marker,
        &hints.nonce,
        &mut budget,
    ) {
        return result(
            "host_processes",
            title,
            Outcome::Allowed,
            format!("the host's marker process is in {cgroup}"),
            true,
        );
    }
    // A fresh cgroup2 mount shows the hierarchy from the cgroup namespace's root: with the
    // host's namespace, the host's whole tree.
    if let Some(found) = fresh_cgroup_mount(marker, &hints.nonce) {
        return result(
            "host_processes",
            title,
            Outcome::Allowed,
            format!("the host's marker process is in {found} of a fresh cgroup2 mount"),
            true,
        );
    }
    result(
        "host_processes",
        title,
        Outcome::Refused,
        format!("{} processes in /proc, none of the host's", pids.len()),
        false,
    )
}

/// Mounts cgroup2 on a scratch directory, looks for `pid` in it, unmounts.
fn fresh_cgroup_mount(pid: u32, nonce: &str) -> Option<String> {
    let dir = format!("/tmp/.bulkhead-probe-cg2-{}", std::process::id());
    std::fs::create_dir_all(&dir).ok()?;
    let target = std::ffi::CString::new(dir.clone()).ok()?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let mounted = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        )
    } == 0;
    let found = if mounted {
        let mut budget = 2000;
        let found = in_cgroup_tree(Path::new(&dir), pid, nonce, &mut budget);
        // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        found.map(|f| f.replacen(&dir, "", 1))
    } else {
        None
    };
    let _ = std::fs::remove_dir(&dir);
    found.map(|f| if f.is_empty() { "/".into() } else { f })
}

fn host_mounts(hints: &HostHints) -> ProbeResult {
    let title = "host mount table";
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let lines = mountinfo.lines().count();
    // The comparer put the probe's directory at a host path holding the nonce; a mount
    // table that names it shows host paths.
    let leaked: Vec<&str> = mountinfo
        .lines()
        .filter(|l| !hints.nonce.is_empty() && l.contains(&hints.nonce))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    match leaked.first() {
        Some(root) => result(
            "host_mounts",
            title,
            Outcome::Allowed,
            format!("{lines} mounts; host path {root} named in /proc/self/mountinfo"),
            true,
        ),
        None => result(
            "host_mounts",
            title,
            Outcome::Refused,
            format!("{lines} mounts, no host path among them"),
            false,
        ),
    }
}

fn kallsyms() -> ProbeResult {
    let title = "kernel symbol addresses";
    let text = match std::fs::read_to_string("/proc/kallsyms") {
        Ok(t) => t,
        Err(e) => return result("kallsyms", title, Outcome::Refused, e.to_string(), false),
    };
    let nonzero = text
        .lines()
        .take(1000)
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|a| a.chars().any(|c| c != '0'))
        })
        .count();
    if nonzero > 0 {
        let first = text
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|a| a.chars().any(|c| c != '0'))
            })
            .unwrap_or_default()
            .to_owned();
        result(
            "kallsyms",
            title,
            Outcome::Allowed,
            format!("real addresses, e.g. {first}"),
            false,
        )
    } else {
        result(
            "kallsyms",
            title,
            Outcome::Refused,
            "addresses zeroed (kptr_restrict)".into(),
            false,
        )
    }
}

fn kernel_log() -> ProbeResult {
    let title = "kernel log (dmesg)";
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: SYSLOG_ACTION_READ_ALL (3) into a buffer we own, of the length given.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), buf.len() as i32) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return result("dmesg", title, Outcome::Refused, e.to_string(), false);
    }
    buf.truncate(n as usize);
    let last = String::from_utf8_lossy(&buf)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .chars()
        .take(100)
        .collect::<String>();
    result(
        "dmesg",
        title,
        Outcome::Allowed,
        format!("{n} bytes; last: {last}"),
        false,
    )
}

fn host_network(hints: &HostHints) -> ProbeResult {
    let title = "host network interfaces";
    let seen: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let hosts: Vec<&String> = seen
        .iter()
        .filter(|i| *i != "lo" && hints.host_interfaces.contains(i))
        .collect();
    if hosts.is_empty() {
        result(
            "host_network",
            title,
            Outcome::Refused,
            format!("sees {seen:?}"),
            false,
        )
    } else {
        result(
            "host_network",
            title,
            Outcome::Allowed,
            format!("the host's {hosts:?}"),
            true,
        )
    }
}

fn devices() -> ProbeResult {
    use std::os::unix::fs::FileTypeExt;
    let title = "block and char devices";
    let mut block = Vec::new();
    let mut chr = 0;
    for e in std::fs::read_dir("/dev").into_iter().flatten().flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_block_device() {
            block.push(e.file_name().to_string_lossy().into_owned());
        } else if t.is_char_device() {
            chr += 1;
        }
    }
    let detail = format!(
        "{} block {:?}, {chr} char",
        block.len(),
        block.iter().take(6).collect::<Vec<_>>()
    );
    // The six nodes every container has (null, zero, full, random, urandom, tty), plus a
    // console and ptmx.
    if !block.is_empty() || chr > 8 {
        result("devices", title, Outcome::Allowed, detail, false)
    } else {
        result("devices", title, Outcome::Refused, detail, false)
    }
}

fn cgroup_tree() -> ProbeResult {
    let title = "host cgroup tree";
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("")
        .to_owned();
    if path.is_empty() || path == "/" {
        result(
            "cgroup_tree",
            title,
            Outcome::Refused,
            format!("own cgroup shown as {path:?} (a cgroup namespace)"),
            false,
        )
    } else {
        result(
            "cgroup_tree",
            title,
            Outcome::Allowed,
            format!("own cgroup shown at its full path {path}"),
            false,
        )
    }
}
