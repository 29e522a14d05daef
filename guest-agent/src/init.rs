//! What PID 1 of the guest must do that no one else does: mount the kernel
//! filesystems, enable the cgroup v2 controllers, mount the shared
//! filesystem on request, and power the VM off at the end.

use std::fs;
use std::path::Path;

use log::{info, warn};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

use crate::error::AgentError;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The kernel filesystems, in mount order.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

fn sys(what: String) -> impl FnOnce(nix::Error) -> AgentError {
    move |source| AgentError::Sys { what, source }
}

/// Mounts the kernel filesystems PID 1 needs and enables every available
/// cgroup controller for child cgroups.
pub fn setup_pid1() -> Result<(), AgentError> {
    for m in MOUNTS {
        if let Err(e) = nix::unistd::mkdir(m.target, Mode::from_bits_truncate(0o755)) {
            if e != nix::errno::Errno::EEXIST {
                return Err(sys(format!("cannot create {}", m.target))(e));
            }
        }
        mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data)
            .map_err(sys(format!("cannot mount {} on {}", m.fstype, m.target)))?;
    }
    // /dev/ptmx must be the devpts instance we mounted.
    let _ = fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")
        .map_err(|e| AgentError::io("cannot link /dev/ptmx", e))?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    let _ = fs::create_dir_all("/tmp");
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    Ok(())
}

/// Writes `+ctrl` for each controller in `cgroup.controllers` to
/// `cgroup.subtree_control`, one at a time so one refusal does not block
/// the rest.
pub fn enable_cgroup_controllers(root: &Path) {
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let mut enabled = Vec::new();
    for ctrl in available.split_whitespace() {
        match fs::write(root.join("cgroup.subtree_control"), format!("+{ctrl}")) {
            Ok(()) => enabled.push(ctrl),
            Err(e) => warn!("cannot enable cgroup controller {ctrl}: {e}"),
        }
    }
    info!("cgroup controllers enabled: {}", enabled.join(" "));
}

/// Mounts the virtio-fs share `tag` at `target`.
pub fn mount_shared_fs(tag: &str, target: &Path) -> Result<(), AgentError> {
    fs::create_dir_all(target)
        .map_err(|e| AgentError::io(format!("cannot create {}", target.display()), e))?;
    mount(
        Some(tag),
        target,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(sys(format!(
        "cannot mount virtiofs {tag} on {}",
        target.display()
    )))?;
    info!("mounted shared filesystem {tag} on {}", target.display());
    Ok(())
}

/// Syncs and powers off. With `reboot=k` the kernel turns this into a reset;
/// the VMM treats both as a clean end. Never returns.
pub fn power_off() -> ! {
    info!("powering off");
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Still here: nothing else to do for PID 1 but wait.
    warn!("reboot(RB_POWER_OFF) failed: {err:?}");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_covers_what_containers_need() {
        let targets: Vec<&str> = MOUNTS.iter().map(|m| m.target).collect();
        for t in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/run",
            "/sys/fs/cgroup",
        ] {
            assert!(targets.contains(&t), "{t} not mounted");
        }
        // Parents before children.
        let pos = |t| targets.iter().position(|x| *x == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
    }

    #[test]
    fn controllers_are_enabled_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        enable_cgroup_controllers(dir.path());
        // A plain file keeps only the last write: the last controller.
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
    }
}
