//! The allow-lists, one per thread kind, as `seccompiler` rules.
//!
//! Every entry says why the VMM needs it after set-up. What is absent matters as much: no
//! `open`/`openat`, `execve`, `fork`/`clone`, `ptrace`, `mount`, `setuid`, `kill` of other
//! processes, no sockets other than `AF_UNIX`, no executable mappings, no `ioctl` other than
//! the few listed requests. To find a syscall that is missing here, run the VMM with
//! `--seccomp log` and read the kernel log (see `docs/vmm.md`).

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// Syscall number to the rules that allow it (an empty list allows it unconditionally).
pub type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

/// What the lists depend on, fixed when they are built (before any filter is installed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleOptions {
    /// The VMM's own thread group id: `tgkill` (a panic's abort) may target its own threads
    /// only. As PID 1 of a PID namespace this is 1.
    pub tgid: i32,
    /// `--vsock-guest-connect`: the main thread creates unix sockets and connects them to
    /// `<uds>_<port>`. Without it neither `socket` nor `connect` is allowed.
    pub guest_connect: bool,
}

impl RuleOptions {
    /// Options for the calling process (its `getpid()`).
    pub fn for_this_process(guest_connect: bool) -> Self {
        RuleOptions {
            // SAFETY: getpid has no preconditions.
            tgid: unsafe { libc::getpid() },
            guest_connect,
        }
    }
}

// include/uapi/linux/kvm.h: _IO(KVMIO, 0x80).
/// The one KVM ioctl a vCPU thread issues once its guest runs.
pub const KVM_RUN: u64 = 0xae80;
// include/uapi/asm-generic/ioctls.h.
/// Terminal attributes: read (isatty, the raw-mode console) ...
pub const TCGETS: u64 = 0x5401;
/// ... and restored when the VMM ends.
pub const TCSETS: u64 = 0x5402;
/// Non-blocking mode on a socket (what std's `set_nonblocking` uses).
pub const FIONBIO: u64 = 0x5421;
// include/uapi/linux/if_tun.h: _IOW('T', 208, unsigned int).
/// virtio-net: the offloads the guest accepted, given to the tap when the device activates.
/// Opening a tap (TUNSETIFF) and probing it happen before confinement and are not allowed.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;

// include/uapi/linux/vhost.h (VHOST_VIRTIO = 0xAF), all _IOW.
/// vhost-net (`--net ...,vhost=on`), on the vCPU thread whose DRIVER_OK write activates the
/// device: the acknowledged ring features ...
pub const VHOST_SET_FEATURES: u64 = 0x4008_af00;
/// ... the guest memory table ...
pub const VHOST_SET_MEM_TABLE: u64 = 0x4008_af03;
/// ... each ring's size, addresses and first index ...
pub const VHOST_SET_VRING_NUM: u64 = 0x4008_af10;
/// (`struct vhost_vring_addr`, 40 bytes)
pub const VHOST_SET_VRING_ADDR: u64 = 0x4028_af11;
/// (`struct vhost_vring_state`)
pub const VHOST_SET_VRING_BASE: u64 = 0x4008_af12;
/// ... its kick (the queue's ioeventfd) and call eventfds ...
pub const VHOST_SET_VRING_KICK: u64 = 0x4008_af20;
/// (`struct vhost_vring_file`)
pub const VHOST_SET_VRING_CALL: u64 = 0x4008_af21;
/// ... and attaching the tap to both rings, or detaching it (fd -1) on reset. Opening
/// `/dev/vhost-net`, `VHOST_SET_OWNER` and `VHOST_GET_FEATURES` happen before confinement
/// and are not allowed.
pub const VHOST_NET_SET_BACKEND: u64 = 0x4008_af30;
/// The vhost-net requests of a device activation and reset.
pub const VHOST_NET_IOCTLS: [u64; 8] = [
    VHOST_SET_FEATURES,
    VHOST_SET_MEM_TABLE,
    VHOST_SET_VRING_NUM,
    VHOST_SET_VRING_ADDR,
    VHOST_SET_VRING_BASE,
    VHOST_SET_VRING_KICK,
    VHOST_SET_VRING_CALL,
    VHOST_NET_SET_BACKEND,
];

/// A growing rule map. Adding a syscall that is already allowed unconditionally keeps it so;
/// conditional rules for the same syscall add up (any of them allows the call).
struct Builder {
    rules: RuleMap,
}

impl Builder {
    fn new() -> Self {
        Builder {
            rules: RuleMap::new(),
        }
    }

    /// Allow `nr` whatever its arguments.
    fn allow(&mut self, nr: i64) -> &mut Self {
        self.rules.insert(nr, Vec::new());
        self
    }

    /// Allow `nr` when one of `rules` matches (a rule already there is not added twice).
    fn allow_if(&mut self, nr: i64, rules: Vec<SeccompRule>) -> &mut Self {
        match self.rules.get_mut(&nr) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) => {
                for rule in rules {
                    if !existing.contains(&rule) {
                        existing.push(rule);
                    }
                }
            }
            None => {
                self.rules.insert(nr, rules);
            }
        }
        self
    }
}

/// Argument `index` (32 bits) equals `value`.
fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// A rule with a single condition: argument `index` equals `value`.
fn when_eq(index: u8, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![arg_eq(index, value)?])
}

/// One rule per value: argument `index` is any of `values`.
fn when_any(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    values.iter().map(|v| when_eq(index, *v)).collect()
}

/// Argument `index` does not have the `PROT_EXEC` bit.
fn no_exec(index: u8) -> Result<Vec<SeccompRule>, BackendError> {
    Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?])
}

/// What every VMM thread needs to live and die: the allocator, locks and channels, writes to
/// the log and the console, the end of a thread, and a clean abort on a panic.
fn common(b: &mut Builder, opts: &RuleOptions) -> Result<(), BackendError> {
    b
        // stderr log lines, console output, eventfd signals.
        .allow(libc::SYS_read)
        .allow(libc::SYS_write)
        .allow(libc::SYS_close)
        // Debug builds of std check that an fd is open before closing it.
        .allow_if(libc::SYS_fcntl, vec![when_eq(1, libc::F_GETFD as u64)?])
        // Mutexes, condvars, mpsc channels, thread join.
        .allow(libc::SYS_futex)
        .allow(libc::SYS_sched_yield)
        // The allocator; mappings are never executable.
        .allow(libc::SYS_brk)
        .allow(libc::SYS_munmap)
        .allow(libc::SYS_mremap)
        .allow_if(libc::SYS_mmap, no_exec(2)?)
        .allow_if(libc::SYS_mprotect, no_exec(2)?)
        // glibc frees thread stacks and trims heaps with MADV_DONTNEED.
        .allow_if(
            libc::SYS_madvise,
            vec![when_eq(2, libc::MADV_DONTNEED as u64)?],
        )
        // Log timestamps (normally answered by the vDSO without a syscall).
        .allow(libc::SYS_clock_gettime)
        // Thread and process end.
        .allow(libc::SYS_exit)
        .allow(libc::SYS_exit_group)
        .allow(libc::SYS_sigaltstack)
        .allow(libc::SYS_rt_sigprocmask)
        .allow(libc::SYS_rt_sigreturn)
        // A panic aborts: SIGABRT gets its default action and is raised, nothing else.
        .allow_if(
            libc::SYS_rt_sigaction,
            vec![when_eq(0, libc::SIGABRT as u64)?],
        )
        // ... on one of the VMM's own threads only.
        .allow_if(
            libc::SYS_tgkill,
            vec![SeccompRule::new(vec![
                arg_eq(0, opts.tgid as u32 as u64)?,
                arg_eq(2, libc::SIGABRT as u64)?,
            ])?],
        )
        .allow(libc::SYS_getpid)
        .allow(libc::SYS_gettid);
    Ok(())
}

/// A vCPU thread: `KVM_RUN` and the exits it routes to device models (console writes,
/// irqfd and eventfd signals, locks). It opens nothing and creates no socket; it does send
/// and receive on the virtio-fs vhost-user socket, because the guest's DRIVER_OK and reset
/// writes start and stop the backend from the vCPU thread (SET_MEM_TABLE, SET_VRING_*,
/// GET_VRING_BASE carry file descriptors and wait for replies). For the same reason it makes
/// the [`VHOST_NET_IOCTLS`] that start and stop a vhost-net device.
pub fn vcpu_rules(opts: &RuleOptions) -> Result<RuleMap, BackendError> {
    let mut b = Builder::new();
    common(&mut b, opts)?;
    b.allow_if(libc::SYS_ioctl, vec![when_eq(1, KVM_RUN)?])
        .allow_if(libc::SYS_ioctl, when_any(1, &VHOST_NET_IOCTLS)?)
        .allow(libc::SYS_sendmsg)
        .allow(libc::SYS_recvmsg);
    Ok(b.rules)
}

/// What any VMM thread may do: the union of the thread lists, plus stacking one more filter
/// (`prctl(PR_SET_NO_NEW_PRIVS)`, `seccomp(SECCOMP_SET_MODE_FILTER)`), which only ever
/// narrows what a thread may do. Installed on every thread of the process at once (TSYNC)
/// after the privilege drop, so helper threads started during set-up (the vhost-user
/// watchdog) are confined too; each vCPU and the main thread then add their own, narrower list
/// on top, which does not allow stacking.
pub fn process_rules(opts: &RuleOptions) -> Result<RuleMap, BackendError> {
    let mut b = Builder::new();
    b.allow_if(
        libc::SYS_prctl,
        vec![when_eq(0, libc::PR_SET_NO_NEW_PRIVS as u64)?],
    )
    .allow_if(
        libc::SYS_seccomp,
        vec![when_eq(0, libc::SECCOMP_SET_MODE_FILTER as u64)?],
    );
    for rules in [vcpu_rules(opts)?, main_rules(opts)?] {
        for (nr, chain) in rules {
            if chain.is_empty() {
                b.allow(nr);
            } else {
                b.allow_if(nr, chain);
            }
        }
    }
    Ok(b.rules)
}

/// The main thread running the event loop: epoll, device queue work, the rng's entropy, the
/// virtio-net taps (read, write, TUNSETOFFLOAD), the vsock unix sockets (accepting host
/// clients; with `--vsock-guest-connect` only, creating sockets and connecting them to
/// `<uds>_<port>`), a vhost-user socket, and the console (stdin, terminal mode). Nothing
/// takes a path: no `open`, `stat`, `unlink` (the vsock socket file is not removed at the
/// end), and no `connect` without guest-initiated connections.
pub fn main_rules(opts: &RuleOptions) -> Result<RuleMap, BackendError> {
    let mut b = Builder::new();
    common(&mut b, opts)?;
    if opts.guest_connect {
        // Guest-initiated vsock connections: unix stream sockets only.
        b.allow_if(libc::SYS_socket, vec![when_eq(0, libc::AF_UNIX as u64)?])
            .allow(libc::SYS_connect);
    }
    b
        // The event loop (created after the filter, so its creation is allowed too; the
        // event manager's remote endpoint makes an eventfd).
        .allow(libc::SYS_epoll_create1)
        .allow(libc::SYS_epoll_ctl)
        .allow(libc::SYS_epoll_wait)
        .allow(libc::SYS_epoll_pwait)
        .allow(libc::SYS_eventfd2)
        // virtio-rng.
        .allow(libc::SYS_getrandom)
        // Hybrid vsock (host clients) and vhost-user.
        .allow(libc::SYS_accept4)
        .allow(libc::SYS_sendto)
        .allow(libc::SYS_recvfrom)
        .allow(libc::SYS_sendmsg)
        .allow(libc::SYS_recvmsg)
        .allow(libc::SYS_shutdown)
        .allow_if(
            libc::SYS_getsockopt,
            vec![SeccompRule::new(vec![
                arg_eq(1, libc::SOL_SOCKET as u64)?,
                arg_eq(2, libc::SO_ERROR as u64)?,
            ])?],
        )
        .allow_if(
            libc::SYS_fcntl,
            when_any(
                1,
                &[
                    libc::F_GETFD as u64,
                    libc::F_SETFD as u64,
                    libc::F_GETFL as u64,
                    libc::F_SETFL as u64,
                    libc::F_DUPFD_CLOEXEC as u64,
                ],
            )?,
        )
        // Non-blocking sockets; the console's terminal mode (read, and restored at the end);
        // virtio-net's tap offloads after feature negotiation (tap frames themselves move
        // with read and write).
        .allow_if(
            libc::SYS_ioctl,
            when_any(1, &[FIONBIO, TCGETS, TCSETS, TUNSETOFFLOAD])?,
        );
    Ok(b.rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: RuleOptions = RuleOptions {
        tgid: 4242,
        guest_connect: true,
    };
    const NO_CONNECT: RuleOptions = RuleOptions {
        tgid: 4242,
        guest_connect: false,
    };

    #[test]
    fn vcpu_list_is_small_and_has_no_sockets_or_files() {
        let rules = vcpu_rules(&OPTS).unwrap();
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_epoll_wait,
        ] {
            assert!(!rules.contains_key(&nr), "vCPU threads must not get {nr}");
        }
        assert_eq!(
            rules[&libc::SYS_ioctl].len(),
            1 + VHOST_NET_IOCTLS.len(),
            "only KVM_RUN and the vhost-net activation"
        );
        assert!(rules.len() < 40, "{} syscalls", rules.len());
    }

    #[test]
    fn main_list_restricts_sockets_and_ioctls() {
        let rules = main_rules(&OPTS).unwrap();
        assert_eq!(rules[&libc::SYS_socket].len(), 1, "AF_UNIX only");
        assert_eq!(rules[&libc::SYS_ioctl].len(), 4);
        for nr in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_fork,
            libc::SYS_clone,
            libc::SYS_ptrace,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_stat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
        ] {
            assert!(!rules.contains_key(&nr), "main thread must not get {nr}");
        }
    }

    #[test]
    fn connect_and_socket_only_with_guest_initiated_connections() {
        for nr in [libc::SYS_connect, libc::SYS_socket] {
            assert!(main_rules(&OPTS).unwrap().contains_key(&nr));
            assert!(!main_rules(&NO_CONNECT).unwrap().contains_key(&nr), "{nr}");
            assert!(
                !process_rules(&NO_CONNECT).unwrap().contains_key(&nr),
                "{nr}"
            );
        }
    }

    #[test]
    fn tgkill_names_the_vmm_itself() {
        let want = SeccompRule::new(vec![
            arg_eq(0, 4242).unwrap(),
            arg_eq(2, libc::SIGABRT as u64).unwrap(),
        ])
        .unwrap();
        for rules in [vcpu_rules(&OPTS), main_rules(&OPTS), process_rules(&OPTS)] {
            assert_eq!(rules.unwrap()[&libc::SYS_tgkill], vec![want.clone()]);
        }
    }

    #[test]
    fn process_list_is_the_union_of_the_thread_lists() {
        let (vcpu, main, all) = (
            vcpu_rules(&OPTS).unwrap(),
            main_rules(&OPTS).unwrap(),
            process_rules(&OPTS).unwrap(),
        );
        for (nr, chain) in vcpu.iter().chain(main.iter()) {
            let union = &all[nr];
            assert!(
                union.is_empty() || chain.iter().all(|r| union.contains(r)),
                "syscall {nr}"
            );
        }
        // ioctl: KVM_RUN and vhost-net's eight from the vCPU list plus the main thread's four.
        assert_eq!(all[&libc::SYS_ioctl].len(), 13);
        assert!(!all.contains_key(&libc::SYS_openat));
        assert!(!all.contains_key(&libc::SYS_execve));
    }

    #[test]
    fn tunsetoffload_is_the_kernel_number() {
        assert_eq!(TUNSETOFFLOAD, libc::TUNSETOFFLOAD);
    }

    #[test]
    fn vhost_numbers_are_the_ones_the_vhost_crate_issues() {
        use vhost::vhost_kern::vhost_binding as vb;
        let want = [
            (VHOST_SET_FEATURES, vb::VHOST_SET_FEATURES()),
            (VHOST_SET_MEM_TABLE, vb::VHOST_SET_MEM_TABLE()),
            (VHOST_SET_VRING_NUM, vb::VHOST_SET_VRING_NUM()),
            (VHOST_SET_VRING_ADDR, vb::VHOST_SET_VRING_ADDR()),
            (VHOST_SET_VRING_BASE, vb::VHOST_SET_VRING_BASE()),
            (VHOST_SET_VRING_KICK, vb::VHOST_SET_VRING_KICK()),
            (VHOST_SET_VRING_CALL, vb::VHOST_SET_VRING_CALL()),
            (VHOST_NET_SET_BACKEND, vb::VHOST_NET_SET_BACKEND()),
        ];
        for (ours, crate_nr) in want {
            assert_eq!(ours, crate_nr, "{ours:#x}");
        }
        // Set-up only, before confinement: not on any list.
        let main = main_rules(&OPTS).unwrap();
        for nr in [vb::VHOST_SET_OWNER(), vb::VHOST_GET_FEATURES()] {
            assert!(!VHOST_NET_IOCTLS.contains(&nr));
            assert!(!main[&libc::SYS_ioctl].contains(&when_eq(1, nr).unwrap()));
        }
    }

    #[test]
    fn an_unconditional_allow_is_not_narrowed_by_a_later_rule() {
        let mut b = Builder::new();
        b.allow(libc::SYS_ioctl)
            .allow_if(libc::SYS_ioctl, vec![when_eq(1, KVM_RUN).unwrap()]);
        assert!(b.rules[&libc::SYS_ioctl].is_empty());
        b.allow_if(libc::SYS_fcntl, vec![when_eq(1, 1).unwrap()])
            .allow_if(libc::SYS_fcntl, vec![when_eq(1, 2).unwrap()]);
        assert_eq!(b.rules[&libc::SYS_fcntl].len(), 2);
    }
}
