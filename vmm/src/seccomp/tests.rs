//! Filter tests. Installing a filter cannot be undone, so each case that installs one runs in
//! a child process: this test binary run again with `BULKHEAD_SECCOMP_CHILD=<case>`, which
//! executes only the ignored `child_process` test below. The parent checks how it ended.

use std::os::fd::AsRawFd;
use std::process::{Command, Output};

use vmm_sys_util::eventfd::EventFd;

use super::*;

const CHILD_ENV: &str = "BULKHEAD_SECCOMP_CHILD";
const CHILD_OK: &str = "seccomp-child-ok";

fn run_child(case: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            "seccomp::tests::child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, case)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_allowed(case: &str) {
    let out = run_child(case);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(CHILD_OK),
        "case {case}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

fn assert_killed(case: &str, nr: i64, thread: &str) {
    let out = run_child(case);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(STATUS_SECCOMP_KILL),
        "case {case}: {:?}\nstderr: {err}",
        out.status
    );
    let want = format!("forbidden syscall {nr} on a {thread} thread");
    assert!(err.contains(&want), "case {case}: want {want:?} in\n{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(CHILD_OK),
        "case {case}: the child went on after the forbidden syscall"
    );
}

#[test]
fn filters_compile_to_bpf_in_every_mode() {
    for mode in [SeccompMode::Strict, SeccompMode::Log] {
        let f = SeccompFilters::compile(mode, &opts()).unwrap();
        for t in [&f.process, &f.vcpu, &f.main] {
            let p = t.program().unwrap();
            // Well below the kernel's 4096-instruction limit, and not trivially short.
            assert!(
                p.len() > 20 && p.len() < 1024,
                "{mode}: {} instructions",
                p.len()
            );
        }
        assert_ne!(f.vcpu.program(), f.main.program());
    }
    let off = SeccompFilters::compile(SeccompMode::Off, &opts()).unwrap();
    assert!(!off.process.is_active() && !off.vcpu.is_active() && !off.main.is_active());
    off.vcpu.apply().unwrap();
}

#[test]
fn mode_parses_and_prints() {
    for m in [SeccompMode::Strict, SeccompMode::Log, SeccompMode::Off] {
        assert_eq!(m.to_string().parse::<SeccompMode>(), Ok(m));
    }
    assert!("kill".parse::<SeccompMode>().is_err());
    assert_eq!(SeccompMode::default(), SeccompMode::Strict);
}

#[test]
fn vcpu_filter_allows_what_a_vcpu_thread_does() {
    assert_allowed("vcpu-allowed");
}

#[test]
fn vcpu_filter_kills_on_inet_socket() {
    assert_killed("vcpu-inet-socket", libc::SYS_socket, "vcpu");
}

#[test]
fn vcpu_filter_kills_on_execve() {
    assert_killed("vcpu-execve", libc::SYS_execve, "vcpu");
}

#[test]
fn vcpu_filter_kills_on_spawning_a_process() {
    // std blocks signals around its fork, so the trap gets SIGSYS's default action there: the
    // process is killed by SIGSYS (no report line), which is just as final.
    let out = run_child("vcpu-spawn");
    let by_sigsys = std::os::unix::process::ExitStatusExt::signal(&out.status)
        == Some(libc::SIGSYS)
        || out.status.code() == Some(STATUS_SECCOMP_KILL);
    assert!(by_sigsys, "{:?}\n{}", out.status, stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(CHILD_OK));
}

#[test]
fn vcpu_filter_kills_on_a_non_kvm_ioctl() {
    assert_killed("vcpu-tcgets", libc::SYS_ioctl, "vcpu");
}

#[test]
fn vcpu_filter_allows_vhost_net_activation_but_not_its_set_up() {
    assert_allowed("vcpu-vhost-activation");
    assert_killed("vcpu-vhost-set-owner", libc::SYS_ioctl, "vcpu");
    assert_killed("main-vhost-set-backend", libc::SYS_ioctl, "main");
}

#[test]
fn vcpu_filter_kills_on_unix_socket() {
    assert_killed("vcpu-unix-socket", libc::SYS_socket, "vcpu");
}

#[test]
fn main_filter_allows_unix_sockets_and_kills_on_inet() {
    assert_allowed("main-unix-socket");
    assert_killed("main-inet-socket", libc::SYS_socket, "main");
}

#[test]
fn main_filter_kills_on_connect_without_guest_initiated_connections() {
    assert_killed("main-connect-no-guest-connect", libc::SYS_connect, "main");
    assert_killed("main-socket-no-guest-connect", libc::SYS_socket, "main");
}

#[test]
fn main_filter_kills_on_unlink_and_stat() {
    assert_killed("main-unlink", libc::SYS_unlink, "main");
    assert_killed("main-stat", libc::SYS_statx, "main");
}

#[test]
fn tgkill_reaches_the_vmm_only() {
    // Another process (a pid far above pid_max, so nothing is hit if the filter failed).
    assert_killed("tgkill-other-pid", libc::SYS_tgkill, "vcpu");
    assert_killed("main-tgkill-other-pid", libc::SYS_tgkill, "main");
    // Its own thread group: allowed, and SIGABRT ends it.
    let out = run_child("tgkill-own-pid");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGABRT),
        "{:?}\n{}",
        out.status,
        stderr(&out)
    );
}

#[test]
fn main_filter_kills_on_open_and_exec_mappings() {
    assert_killed("main-open", libc::SYS_openat, "main");
    assert_killed("main-exec-mmap", libc::SYS_mmap, "main");
    assert_killed("main-exec-mprotect", libc::SYS_mprotect, "main");
}

#[test]
fn main_filter_allows_tunsetoffload_and_kills_on_tunsetiff() {
    assert_allowed("main-tunsetoffload");
    assert_killed("main-tunsetiff", libc::SYS_ioctl, "main");
}

#[test]
fn main_filter_kills_on_a_signal_handler_change() {
    assert_killed("main-sigaction", libc::SYS_rt_sigaction, "main");
}

#[test]
fn process_filter_confines_threads_started_before_it() {
    assert_killed("process-helper-thread", libc::SYS_socket, "vmm");
}

#[test]
fn vcpu_filter_stacks_on_the_process_filter() {
    // The process filter allows the main thread's epoll; the vCPU filter on top does not.
    assert_killed("stacked-vcpu-epoll", libc::SYS_epoll_create1, "vcpu");
}

#[test]
fn gated_filter_waits_for_the_gate_and_fails_when_it_is_dropped() {
    let f = SeccompFilters::compile(SeccompMode::Off, &opts()).unwrap();
    let gate = StartGate::new();
    let waiting = f.vcpu.gated(&gate);
    let t = std::thread::spawn(move || waiting.apply());
    gate.wait_for_arrivals(1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!t.is_finished(), "the thread waits for the gate");
    gate.open(true);
    assert!(t.join().unwrap().is_ok());

    let gate = StartGate::new();
    let waiting = f.vcpu.gated(&gate);
    let t = std::thread::spawn(move || waiting.apply());
    drop(gate);
    assert!(matches!(t.join().unwrap(), Err(SeccompError::GateClosed)));
}

#[test]
fn log_mode_lets_a_missing_syscall_run() {
    assert_allowed("log-inet-socket");
}

#[test]
fn privileges_are_dropped() {
    assert_allowed("drop-privileges");
}

/// Run `f` on a new thread (so the thread's own end runs under the filter too) and report
/// success on stdout if it returns.
fn on_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name("confined".into())
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
    println!("{CHILD_OK}");
}

/// The options of this (child) process, with guest-initiated vsock connections.
fn opts() -> RuleOptions {
    RuleOptions::for_this_process(true)
}

fn strict() -> SeccompFilters {
    SeccompFilters::compile(SeccompMode::Strict, &opts()).unwrap()
}

fn inet_socket() -> i32 {
    // SAFETY: plain socket(2); the result is only compared.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
}

fn status_field(name: &str) -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The child side: does what `BULKHEAD_SECCOMP_CHILD` names. Passes trivially when run
/// without it (it is ignored by default anyway).
#[test]
#[ignore = "runs only as the child of the seccomp tests"]
fn child_process() {
    let Ok(case) = std::env::var(CHILD_ENV) else {
        return;
    };
    let f = strict();
    match case.as_str() {
        "vcpu-allowed" => on_thread(move || {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            f.vcpu.apply().unwrap();
            // What a vCPU thread does after KVM_RUN returns: signal eventfds, take device
            // locks, allocate, log.
            evt.write(1).unwrap();
            assert_eq!(evt.read().unwrap(), 1);
            shared.lock().unwrap().extend(vec![0u8; 1 << 20]);
            shared.lock().unwrap().clear();
            shared.lock().unwrap().shrink_to_fit();
            let (tx, rx) = std::sync::mpsc::channel();
            tx.send(7u8).unwrap();
            assert_eq!(rx.recv().unwrap(), 7);
            eprintln!("logging from a confined vCPU thread");
            let _ = std::time::Instant::now();
        }),
        "vcpu-inet-socket" => on_thread(move || {
            f.vcpu.apply().unwrap();
            inet_socket();
        }),
        "vcpu-unix-socket" => on_thread(move || {
            f.vcpu.apply().unwrap();
            // SAFETY: plain socket(2).
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        }),
        "vcpu-execve" => on_thread(move || {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            f.vcpu.apply().unwrap();
            // SAFETY: NUL-terminated path, argv and envp arrays.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }),
        "vcpu-spawn" => on_thread(move || {
            f.vcpu.apply().unwrap();
            let _ = Command::new("/bin/true").status();
        }),
        "vcpu-tcgets" => on_thread(move || {
            f.vcpu.apply().unwrap();
            // SAFETY: termios is plain data written by the kernel.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            unsafe { libc::ioctl(0, libc::TCGETS, &mut t) };
        }),
        "vcpu-vhost-activation" => on_thread(move || {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            f.vcpu.apply().unwrap();
            // Not a vhost fd: the kernel refuses each request, the filter lets it through.
            let arg = [0u8; 64];
            for nr in rules::VHOST_NET_IOCTLS {
                // SAFETY: a 64-byte buffer, more than any of these requests reads.
                let rc = unsafe { libc::ioctl(evt.as_raw_fd(), nr, arg.as_ptr()) };
                assert_eq!(rc, -1, "{nr:#x}");
            }
        }),
        "vcpu-vhost-set-owner" => on_thread(move || {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            f.vcpu.apply().unwrap();
            // SAFETY: VHOST_SET_OWNER takes no argument.
            unsafe { libc::ioctl(evt.as_raw_fd(), 0xaf01) };
        }),
        "main-vhost-set-backend" => on_thread(move || {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            f.main.apply().unwrap();
            let arg = [0u8; 8];
            // SAFETY: an 8-byte buffer stands for the struct vhost_vring_file it reads.
            unsafe { libc::ioctl(evt.as_raw_fd(), rules::VHOST_NET_SET_BACKEND, arg.as_ptr()) };
        }),
        "main-unix-socket" => {
            // Made and removed by this unconfined thread: the filter forbids rmdir.
            let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
            let path = dir.as_path().join("s");
            on_thread(move || unix_socket_round_trip(f, &path));
            drop(dir);
        }
        "main-tunsetoffload" => on_thread(move || {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            f.main.apply().unwrap();
            // Not a tap: the kernel refuses it, the filter lets it through.
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            let rc = unsafe {
                libc::ioctl(
                    evt.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    libc::TUN_F_CSUM as u64,
                )
            };
            assert_eq!(rc, -1);
        }),
        "main-tunsetiff" => on_thread(move || {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            f.main.apply().unwrap();
            let mut ifr = [0u8; 40];
            // SAFETY: a 40-byte buffer stands for the struct ifreq TUNSETIFF reads.
            unsafe { libc::ioctl(evt.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) };
        }),
        "main-connect-no-guest-connect" => on_thread(move || {
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            let f =
                SeccompFilters::compile(SeccompMode::Strict, &RuleOptions::for_this_process(false))
                    .unwrap();
            f.main.apply().unwrap();
            // SAFETY: a zeroed sockaddr_un; the call is what must be refused.
            let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            unsafe {
                libc::connect(
                    a.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as u32,
                )
            };
        }),
        "main-socket-no-guest-connect" => on_thread(move || {
            let f =
                SeccompFilters::compile(SeccompMode::Strict, &RuleOptions::for_this_process(false))
                    .unwrap();
            f.main.apply().unwrap();
            // SAFETY: plain socket(2).
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        }),
        "main-unlink" => on_thread(move || {
            f.main.apply().unwrap();
            // SAFETY: a NUL-terminated path that does not exist.
            unsafe { libc::unlink(c"/nonexistent/bulkhead-vmm-test".as_ptr()) };
        }),
        "main-stat" => on_thread(move || {
            f.main.apply().unwrap();
            let _ = std::fs::metadata("/");
        }),
        "tgkill-other-pid" | "main-tgkill-other-pid" => on_thread(move || {
            if case.starts_with("main") {
                f.main.apply().unwrap();
            } else {
                f.vcpu.apply().unwrap();
            }
            // SAFETY: tgkill of a pid above any pid_max: ESRCH if it ran.
            unsafe { libc::syscall(libc::SYS_tgkill, 0x7fff_fff0, 0x7fff_fff0, libc::SIGABRT) };
        }),
        "tgkill-own-pid" => on_thread(move || {
            f.vcpu.apply().unwrap();
            // SAFETY: SIGABRT to this very thread: what abort() does.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    libc::SIGABRT,
                )
            };
        }),
        "main-inet-socket" => on_thread(move || {
            f.main.apply().unwrap();
            inet_socket();
        }),
        "main-open" => on_thread(move || {
            f.main.apply().unwrap();
            let _ = std::fs::File::open("/etc/hostname");
        }),
        "main-exec-mmap" => on_thread(move || {
            f.main.apply().unwrap();
            // SAFETY: an anonymous mapping that is never used.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        }),
        "main-exec-mprotect" => on_thread(move || {
            let mut page = vec![0u8; 8192];
            let addr = ((page.as_mut_ptr() as usize + 4095) & !4095) as *mut libc::c_void;
            f.main.apply().unwrap();
            // SAFETY: the page lies inside `page`, which outlives the call.
            unsafe { libc::mprotect(addr, 4096, libc::PROT_READ | libc::PROT_EXEC) };
        }),
        "main-sigaction" => on_thread(move || {
            f.main.apply().unwrap();
            // SAFETY: SIG_IGN for SIGSYS: exactly what must not be possible.
            unsafe { libc::signal(libc::SIGSYS, libc::SIG_IGN) };
        }),
        "process-helper-thread" => {
            // A helper thread started during set-up, like the vhost-user watchdog.
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
            let helper = std::thread::spawn(move || {
                up_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                inet_socket();
            });
            up_rx.recv().unwrap();
            f.process.apply_all_threads().unwrap();
            go_tx.send(()).unwrap();
            helper.join().unwrap();
            println!("{CHILD_OK}");
        }
        "stacked-vcpu-epoll" => on_thread(move || {
            f.process.apply_all_threads().unwrap();
            f.vcpu.apply().unwrap();
            // SAFETY: plain epoll_create1(2).
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        }),
        "log-inet-socket" => on_thread(move || {
            let f = SeccompFilters::compile(SeccompMode::Log, &opts()).unwrap();
            f.vcpu.apply().unwrap();
            let fd = inet_socket();
            assert!(fd >= 0, "log mode lets the syscall run");
        }),
        "drop-privileges" => on_thread(move || {
            // SAFETY: getuid has no preconditions.
            let root = unsafe { libc::getuid() } == 0;
            let identity = if root {
                Identity {
                    uid: Some(65534),
                    gid: Some(65534),
                }
            } else {
                Identity::default()
            };
            privileges::drop_privileges(identity).unwrap();
            assert_eq!(status_field("CapEff:"), "0000000000000000");
            assert_eq!(status_field("CapPrm:"), "0000000000000000");
            assert_eq!(status_field("CapInh:"), "0000000000000000");
            assert_eq!(status_field("CapAmb:"), "0000000000000000");
            assert_eq!(status_field("NoNewPrivs:"), "1");
            if root {
                assert_eq!(status_field("CapBnd:"), "0000000000000000");
                assert!(status_field("Uid:").starts_with("65534\t65534\t65534"));
                assert!(status_field("Gid:").starts_with("65534\t65534\t65534"));
                assert_eq!(status_field("Groups:"), "");
            }
            // The filters still go on top of the dropped privileges.
            f.process.apply_all_threads().unwrap();
            f.main.apply().unwrap();
        }),
        other => panic!("unknown child case {other}"),
    }
}

/// Binds a listener at `path`, then does under the main filter what the vsock muxer does:
/// connect, accept, non-blocking mode, send and receive, getrandom, unlink.
fn unix_socket_round_trip(f: SeccompFilters, path: &std::path::Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    f.main.apply().unwrap();
    let client = std::os::unix::net::UnixStream::connect(path).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    use std::io::{Read, Write};
    (&client).write_all(b"CONNECT 52\n").unwrap();
    let mut buf = [0u8; 16];
    let n = (&server).read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"CONNECT 52\n");
    let mut r = [0u8; 8];
    // SAFETY: getrandom into a local buffer.
    assert_eq!(unsafe { libc::getrandom(r.as_mut_ptr().cast(), 8, 0) }, 8);
    // The socket file stays: the unconfined caller removes the directory.
    drop(listener);
}
