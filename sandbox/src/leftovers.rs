//! What a dead front end (a crashed shim or CLI supervisor) left of a sandbox, and its
//! removal: the VMM and virtiofsd, found by their command lines naming a path in the run
//! directory or by a file they hold open there (a jailed VMM names no host path on its
//! command line, but its console and log are open files in the run directory), are killed; [`crate::run_dir::remove_tree`] then detaches the mounts and
//! deletes the directory. Blocking.

use std::path::Path;
use std::time::{Duration, Instant};

/// Whether a command line (NUL-separated arguments) names a path inside `dir`.
pub fn cmdline_refers_to(cmdline: &[u8], dir: &Path) -> bool {
    let mut prefix = dir.as_os_str().as_encoded_bytes().to_vec();
    if prefix.is_empty() {
        return false;
    }
    if prefix.last() != Some(&b'/') {
        prefix.push(b'/');
    }
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.windows(prefix.len()).any(|w| w == prefix.as_slice()))
}

/// Whether the process behind `/proc/<pid>` (`proc_dir`) holds a file inside `dir` open.
fn holds_file_in(proc_dir: &Path, dir: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
        return false;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| target.starts_with(dir) && target != dir)
}

/// SIGKILLs every process (but this one) whose command line names a path inside `dir`, or
/// that holds a file inside it open (the VMM and virtiofsd of a sandbox, a host agent);
/// returns their pids.
pub fn kill_processes_using(dir: &Path) -> Vec<i32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        if pid == me || raw <= 1 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline_refers_to(&cmdline, dir) || holds_file_in(&entry.path(), dir) {
            // SAFETY: kill takes plain integers.
            if unsafe { libc::kill(raw, libc::SIGKILL) } == 0 {
                killed.push(raw);
            }
        }
    }
    killed
}

/// Waits until none of `pids` runs, at most `limit`; returns those still running.
pub fn wait_gone(pids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` still runs (a zombie has exited).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // The state follows the last ')' (the command name may contain one).
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_that_name_the_run_dir() {
        let dir = Path::new("/run/bulkhead/default/c1");
        let vmm = b"bulkhead-vmm\0--kernel\0/k\0--vsock\0/run/bulkhead/default/c1/vsock.sock\0";
        let fsd = b"virtiofsd\0--socket-path=/run/bulkhead/default/c1/fs.sock\0--shared-dir=/run/bulkhead/default/c1/shared\0";
        let other = b"bulkhead-vmm\0--vsock\0/run/bulkhead/default/c10/vsock.sock\0";
        assert!(cmdline_refers_to(vmm, dir));
        assert!(cmdline_refers_to(fsd, dir));
        assert!(!cmdline_refers_to(other, dir));
        assert!(!cmdline_refers_to(b"sleep\0x\0", dir));
        assert!(!cmdline_refers_to(vmm, Path::new("")));
    }

    #[test]
    fn only_processes_naming_the_directory_are_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("c1");
        std::fs::create_dir_all(&run_dir).unwrap();
        // A stand-in for the VMM: its command line names a file in the run directory.
        let mut vmm = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 60; : \"$0\"")
            .arg(run_dir.join("vsock.sock"))
            .spawn()
            .unwrap();
        // A stand-in for a jailed VMM: only its stdout (the console log) is in the run
        // directory.
        let console = std::fs::File::create(run_dir.join("console.log")).unwrap();
        let mut jailed = std::process::Command::new("sleep")
            .arg("60")
            .stdout(console)
            .spawn()
            .unwrap();
        let mut bystander = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        // Let the children exec so that /proc shows their final command lines.
        std::thread::sleep(Duration::from_millis(100));
        let mut killed = kill_processes_using(&run_dir);
        killed.sort_unstable();
        let mut want = [vmm.id() as i32, jailed.id() as i32];
        want.sort_unstable();
        assert_eq!(killed, want);
        jailed.wait().unwrap();
        let status = vmm.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(wait_gone(&killed, Duration::from_secs(3)).is_empty());
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "an unrelated process was killed"
        );
        assert!(alive(bystander.id() as i32));
        bystander.kill().unwrap();
        bystander.wait().unwrap();
        assert!(!alive(bystander.id() as i32));
    }
}
