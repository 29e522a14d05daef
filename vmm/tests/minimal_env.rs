//! The real `bulkhead-vmm` binary in the environment the jailer gives it: PID 1 of new PID and
//! mount namespaces, chrooted into a read-only tmpfs holding only the binary, the kernel and
//! `/dev/kvm` (plus, for this test only, the host's library directories read-only: the debug
//! binary is dynamically linked), no `/proc`, `/sys`, `/tmp` or writable directory, an empty
//! environment, stdin `/dev/null`, its vsock listener inherited as fd 3. With a tiny PVH guest
//! that prints and resets, it must boot under the strict filters and end with status 0
//! (not 159, the status of a forbidden syscall, nor 1 with a missing-file error).
//!
//! Needs root (namespaces, mounts) and `/dev/kvm`; fails loudly otherwise under
//! `BULKHEAD_NO_SKIP=1`.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use common::{kvm_available, pvh_elf, SAY_HI_AND_RESET};

/// Builds the root and runs the VMM in it as PID 1 of the new namespaces. `$ROOT`, `$VMM`,
/// `$KERNEL` come from the environment of this script; fd 3 is the vsock listener.
const SCRIPT: &str = r#"
set -eu
mount --make-rprivate /
mount -t tmpfs -o size=64m,mode=0755 tmpfs "$ROOT"
cp "$VMM" "$ROOT/bulkhead-vmm"
cp "$KERNEL" "$ROOT/kernel"
mkdir "$ROOT/dev"
touch "$ROOT/dev/kvm"
mount --bind /dev/kvm "$ROOT/dev/kvm"
# The debug binary's shared libraries, read-only (the jail's binary is static).
for d in lib lib64; do
    if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$ROOT/$d"; fi
done
for d in lib lib64 usr/lib usr/lib64; do
    if [ -d "/$d" ] && [ ! -L "/$d" ]; then
        mkdir -p "$ROOT/$d"
        mount --bind "/$d" "$ROOT/$d"
        mount -o remount,bind,ro "$ROOT/$d"
    fi
done
mount -o remount,ro "$ROOT"
cd "$ROOT"
exec env -i /usr/sbin/chroot "$ROOT" /bulkhead-vmm --kernel /kernel --memory 64 \
    --vsock fd=3 --serial-max-bytes 1048576 --uid 65534 --gid 65534 --seccomp strict
"#;

#[test]
fn the_binary_boots_as_pid_1_in_an_empty_read_only_root() {
    if !kvm_available() {
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bulkhead_test_skip::skip("needs root (namespaces and mounts)");
        return;
    }
    for tool in ["/usr/bin/unshare", "/usr/sbin/chroot", "/usr/bin/env"] {
        if !std::path::Path::new(tool).exists() {
            bulkhead_test_skip::skip("needs unshare, chroot and env");
            return;
        }
    }
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/bulkhead-minimal-").unwrap();
    let root = dir.as_path().join("root");
    std::fs::create_dir(&root).unwrap();
    let kernel = dir.as_path().join("tiny.elf");
    std::fs::write(&kernel, pvh_elf(SAY_HI_AND_RESET)).unwrap();
    let listener = UnixListener::bind(dir.as_path().join("v.sock")).unwrap();
    let fd = listener.as_raw_fd();

    let mut cmd = Command::new("/usr/bin/unshare");
    cmd.args(["--mount", "--pid", "--ipc", "--fork", "--kill-child"])
        .args(["/bin/sh", "-c", SCRIPT])
        .env("ROOT", &root)
        .env("VMM", env!("CARGO_BIN_EXE_bulkhead-vmm"))
        .env("KERNEL", &kernel)
        .stdin(Stdio::null());
    // SAFETY: fcntl and dup2 are async-signal-safe; `fd` stays open until the spawn.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}\nstdout: {}\nstderr:\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HI\n", "{stderr}");
    assert!(stderr.contains("seccomp strict"), "{stderr}");
    assert!(stderr.contains("seccomp: main thread confined"), "{stderr}");
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "nothing went wrong quietly:\n{stderr}"
    );
}
