//! What a dead front end (a crashed shim or CLI supervisor) left of a sandbox, and its
//! removal: the VMM and virtiofsd are killed, found by their command lines naming a path in
//! the run directory, or (a jailed VMM names no host path on its command line) by the pid
//! and start time the sandbox recorded in `vmm.pid`; [`crate::run_dir::remove_tree`] then
//! detaches the mounts and deletes the directory. Blocking.
//!
//! Nothing is killed for merely holding a file in the directory open: a reader of the
//! console log, or a test walking the tree, is not the sandbox's.

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

/// The file in a run directory that records the VMM's host pid and start time.
pub const VMM_PID_FILE: &str = "vmm.pid";

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`):
/// with the pid, it names one process even after the pid is reused.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records `pid` (with its start time) as the VMM of the run directory `dir`.
pub fn record_vmm_pid(dir: &Path, pid: u32) -> std::io::Result<()> {
    let start = process_start_time(pid).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("process {pid} has no readable start time"),
        )
    })?;
    std::fs::write(dir.join(VMM_PID_FILE), format!("{pid} {start}\n"))
}

/// The VMM recorded in `dir`, if that process still runs (same pid, same start time).
fn recorded_vmm(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(VMM_PID_FILE)).ok()?;
    let mut fields = text.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    let start: u64 = fields.next()?.parse().ok()?;
    (process_start_time(pid) == Some(start)).then_some(pid)
}

/// SIGKILLs the VMM recorded in `dir` and every process (but this one) whose command line
/// names a path inside `dir` (an unjailed VMM, virtiofsd, a host agent); returns their pids.
pub fn kill_processes_using(dir: &Path) -> Vec<i32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    let recorded = recorded_vmm(dir);
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
        if recorded == Some(pid) || cmdline_refers_to(&cmdline, dir) {
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
    fn a_recorded_pid_whose_process_changed_is_not_killed() {
        let tmp = tempfile::tempdir().unwrap();
        // A pid with a start time no process has: the VMM is gone and the pid was reused.
        let me = std::process::id();
        std::fs::write(tmp.path().join(VMM_PID_FILE), format!("{me} 1\n")).unwrap();
        assert_eq!(recorded_vmm(tmp.path()), None);
        std::fs::write(tmp.path().join(VMM_PID_FILE), "garbage").unwrap();
        assert_eq!(recorded_vmm(tmp.path()), None);
        record_vmm_pid(tmp.path(), me).unwrap();
        assert_eq!(recorded_vmm(tmp.path()), Some(me));
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
        // A stand-in for a jailed VMM: nothing on its command line, its pid recorded.
        let mut jailed = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        record_vmm_pid(&run_dir, jailed.id()).unwrap();
        // A reader of the console log is not the sandbox's.
        let console = std::fs::File::create(run_dir.join("console.log")).unwrap();
        let mut bystander = std::process::Command::new("sleep")
            .arg("60")
            .stdout(console)
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
