//! Entering the jail: the steps the forked child takes before `exec` (raw system calls
//! only, on what [`JailPlan`] prepared), and spawning the child as PID 1 of a new PID
//! namespace.
//!
//! A failing step writes `bulkhead jail: <step> failed` to the child's stderr (the VMM's
//! log) and makes the spawn fail with that step's errno, so the launcher can say which step
//! broke.

use std::io;
use std::os::fd::AsRawFd;

use tokio::process::{Child, Command};

use super::plan::JailPlan;

/// The jail root's tmpfs: room for three mount points and two device nodes.
const JAIL_TMPFS_OPTIONS: &[u8] = b"size=64k,nr_inodes=32,mode=0755\0";

/// Makes `cmd`'s child enter the jail before `exec`. Add it before any pre-exec step that
/// renumbers descriptors (`child_fds::pass_fds`): the plan's descriptors are used here.
/// The command's program must be the VMM's path inside the jail.
pub fn jail_command(cmd: &mut Command, plan: JailPlan) -> &mut Command {
    let last_cap = last_capability();
    // SAFETY: the closure runs in the forked child before exec, makes only raw system
    // calls on data prepared before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || enter(&plan, last_cap));
    }
    cmd
}

/// Spawns `cmd` from a short-lived thread that has unshared its PID namespace for
/// children: the child is PID 1 of a new namespace (and the namespace ends with it).
pub fn spawn_in_new_pid_namespace(cmd: &mut Command) -> io::Result<Child> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(CLONE_NEWPID) only changes where this thread's future
                // children go; the thread ends right after the spawn.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let _entered = runtime.enter();
                cmd.spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
    })
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The errno of the failed step, after telling stderr which step it was.
fn fail(step: &[u8]) -> io::Error {
    let e = io::Error::last_os_error();
    let write = |b: &[u8]| {
        // SAFETY: write(2) on stderr from a buffer we own.
        unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
    };
    write(b"bulkhead jail: ");
    write(step);
    write(b" failed\n");
    e
}

macro_rules! check {
    ($step:literal, $call:expr) => {
        if $call < 0 {
            return Err(fail($step.as_bytes()));
        }
    };
}

/// The child's side. Only raw system calls: the parent may have other threads holding
/// locks (of the allocator too) that are gone in the child.
///
/// # Safety
/// Call only in a freshly forked child, before `exec`.
unsafe fn enter(plan: &JailPlan, last_cap: u32) -> io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    for procs in &plan.cgroup_procs {
        if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
            return Err(fail(b"joining the sandbox cgroup"));
        }
    }
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if plan.netns.is_none() {
        flags |= libc::CLONE_NEWNET;
    }
    check!("unshare", libc::unshare(flags));
    if let Some(netns) = &plan.netns {
        check!(
            "joining the pod network namespace",
            libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET)
        );
    }
    check!(
        "making mounts private",
        libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null()
        )
    );
    check!(
        "mounting the jail tmpfs",
        libc::mount(
            c"bulkhead-jail".as_ptr(),
            plan.root.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            JAIL_TMPFS_OPTIONS.as_ptr().cast()
        )
    );
    check!("entering the jail root", libc::chdir(plan.root.as_ptr()));
    check!("creating /dev", libc::mkdir(c"dev".as_ptr(), 0o755));
    for dev in &plan.devices {
        let path = dev.path.as_ptr().cast();
        check!(
            "creating a device node",
            libc::mknod(
                path,
                libc::S_IFCHR | 0o600,
                libc::makedev(dev.major, dev.minor)
            )
        );
        check!(
            "handing a device node to the jail user",
            libc::chown(path, plan.uid, plan.gid)
        );
    }
    for bind in &plan.binds {
        let fd = libc::open(
            bind.target.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o400,
        );
        check!("creating a bind mount point", fd);
        libc::close(fd);
        check!(
            "binding a file into the jail",
            libc::mount(
                bind.source.as_ptr(),
                bind.target.as_ptr(),
                null,
                libc::MS_BIND,
                std::ptr::null()
            )
        );
        let mut ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID;
        ro |= libc::MS_NODEV;
        if !bind.exec {
            ro |= libc::MS_NOEXEC;
        }
        check!(
            "making a bound file read-only",
            libc::mount(null, bind.target.as_ptr(), null, ro, std::ptr::null())
        );
    }
    check!(
        "making the jail root read-only",
        libc::mount(
            null,
            c".".as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            std::ptr::null()
        )
    );
    check!(
        "pivot_root into the jail",
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
    );
    check!(
        "detaching the host's root",
        libc::umount2(c".".as_ptr(), libc::MNT_DETACH)
    );
    check!("entering /", libc::chdir(c"/".as_ptr()));
    for cap in 0..=last_cap {
        // EINVAL for numbers this kernel lacks; nothing else can fail for root.
        libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0);
    }
    check!(
        "dropping supplementary groups",
        libc::setgroups(0, std::ptr::null())
    );
    check!(
        "switching to the jail group",
        libc::setresgid(plan.gid, plan.gid, plan.gid)
    );
    check!(
        "switching to the jail user",
        libc::setresuid(plan.uid, plan.uid, plan.uid)
    );
    check!(
        "setting no_new_privs",
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    );
    Ok(())
}
