//! Notices when the agent's one runtime thread stops turning, and says where it is stuck.
//!
//! Every request is served on a single thread (see `main.rs`), and some of the work there is
//! blocking (libcontainer builds wait for their helper processes). When such a call does not
//! return, the agent answers nothing, logs nothing, and the host only sees an RPC time out.
//! A heartbeat task on the runtime marks the time every second; a plain thread checks it,
//! and after [`STALL_AFTER`] without a beat it logs what the runtime thread was doing (the
//! request, set by [`doing`]), the system call it sits in, and every process's state and
//! system call. It reports, it does not recover: nothing can unstick a wait from outside.
//!
//! The watcher thread only wakes once a second, and between checks it holds no lock the
//! runtime thread or a forked child could need.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::warn;

/// A runtime thread that has not beaten for this long is reported.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// A stall that goes on is reported again after this long.
const REPORT_AGAIN: Duration = Duration::from_secs(60);
/// At most this many processes are listed in one report.
const MAX_PROCESSES: usize = 48;

/// Milliseconds since [`EPOCH`] of the runtime's last beat.
static LAST_BEAT_MS: AtomicU64 = AtomicU64::new(0);
/// What beat times count from.
static EPOCH: OnceLock<Instant> = OnceLock::new();
/// The request the runtime thread is serving, if any.
static DOING: Mutex<Option<String>> = Mutex::new(None);

fn now_ms() -> u64 {
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Marks what the runtime thread works on until the returned guard is dropped.
pub fn doing(what: String) -> Doing {
    *DOING.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
    Doing(())
}

/// Clears the mark of [`doing`] when dropped.
pub struct Doing(());

impl Drop for Doing {
    fn drop(&mut self) {
        *DOING.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Starts the heartbeat (on the current runtime) and the watcher thread. `runtime_tid` is the
/// kernel thread id of the runtime thread.
pub fn start(runtime_tid: i32) {
    LAST_BEAT_MS.store(now_ms(), Ordering::Relaxed);
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            LAST_BEAT_MS.store(now_ms(), Ordering::Relaxed);
        }
    });
    let spawned = std::thread::Builder::new()
        .name("stall-watch".into())
        .spawn(move || watch(runtime_tid));
    if let Err(e) = spawned {
        warn!("cannot start the stall watcher: {e}");
    }
}

fn watch(runtime_tid: i32) {
    let mut reported_at: Option<u64> = None;
    let mut last_check = now_ms();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = now_ms();
        // This thread sleeps for a second: a much longer gap means nothing in the guest ran,
        // the VM itself stood still (its vCPU not scheduled by the host).
        let gap = now.saturating_sub(last_check);
        last_check = now;
        if gap >= STALL_AFTER.as_millis() as u64 {
            warn!(
                "the whole guest stood still for {} s (this watcher did not run either): \
                 the host did not run the VM",
                gap / 1000
            );
            // The runtime thread did not get a chance either: not its stall.
            LAST_BEAT_MS.store(now, Ordering::Relaxed);
            continue;
        }
        match judge(now, LAST_BEAT_MS.load(Ordering::Relaxed), &mut reported_at) {
            Verdict::Fine | Verdict::StillStuck => {}
            Verdict::Recovered { stuck_since_ms } => warn!(
                "the agent's runtime thread runs again (reported stuck {} s ago)",
                now.saturating_sub(stuck_since_ms) / 1000
            ),
            Verdict::Stuck { silent_ms } => {
                let doing = DOING.lock().unwrap_or_else(|p| p.into_inner()).clone();
                warn!(
                    "the agent's runtime thread has not run for {} s (serving: {}); {}",
                    silent_ms / 1000,
                    doing.as_deref().unwrap_or("no request"),
                    snapshot(runtime_tid)
                );
            }
        }
    }
}

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// Stuck, and due for a report.
    Stuck {
        silent_ms: u64,
    },
    /// Stuck, reported recently.
    StillStuck,
    /// Runs again after a report made at `stuck_since_ms`.
    Recovered {
        stuck_since_ms: u64,
    },
}

/// Judges a check at `now` with the last beat at `beat` (milliseconds); `reported_at` keeps
/// when the current stall was last reported.
fn judge(now: u64, beat: u64, reported_at: &mut Option<u64>) -> Verdict {
    let silent_ms = now.saturating_sub(beat);
    if silent_ms < STALL_AFTER.as_millis() as u64 {
        return match reported_at.take() {
            Some(at) => Verdict::Recovered { stuck_since_ms: at },
            None => Verdict::Fine,
        };
    }
    let due =
        reported_at.is_none_or(|at| now.saturating_sub(at) >= REPORT_AGAIN.as_millis() as u64);
    if due {
        *reported_at = Some(now);
        Verdict::Stuck { silent_ms }
    } else {
        Verdict::StillStuck
    }
}

/// The runtime thread's system call and every process's state, on one line.
fn snapshot(runtime_tid: i32) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "runtime thread in syscall [{}]; processes:",
        read_trimmed(&format!("/proc/self/task/{runtime_tid}/syscall"))
    );
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    let mut listed = 0;
    for pid in pids {
        let Some(stat) = ProcStat::read(pid) else {
            continue;
        };
        // Kernel threads (children of kthreadd) say nothing about a stuck agent.
        if pid == 2 || stat.ppid == 2 {
            continue;
        }
        if listed == MAX_PROCESSES {
            out.push_str(" ...");
            break;
        }
        listed += 1;
        let _ = write!(
            out,
            " {pid}<-{} {} {} [{}];",
            stat.ppid,
            stat.comm,
            stat.state,
            read_trimmed(&format!("/proc/{pid}/syscall"))
        );
    }
    out
}

fn read_trimmed(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            // The syscall number and its first three arguments are enough to tell a wait
            // from a read; the rest (three more arguments, sp, pc) is noise here.
            let words: Vec<&str> = s.split_whitespace().take(4).collect();
            words.join(" ")
        }
        Err(e) => format!("unreadable: {}", e.kind()),
    }
}

/// The fields of `/proc/PID/stat` a report needs.
#[derive(Debug, PartialEq, Eq)]
struct ProcStat {
    comm: String,
    state: char,
    ppid: i32,
}

impl ProcStat {
    fn read(pid: i32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so it ends at the
    /// last `)`.
    fn parse(stat: &str) -> Option<Self> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat.get(open + 1..close)?.to_owned();
        let mut rest = stat.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        Some(ProcStat { comm, state, ppid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(
            ProcStat::parse("42 (a) b (c)) S 7 42 42 0 -1"),
            Some(ProcStat {
                comm: "a) b (c)".into(),
                state: 'S',
                ppid: 7
            })
        );
        assert_eq!(ProcStat::parse("42 no-parens S 7"), None);
        assert_eq!(ProcStat::parse("42 (x) S notanumber"), None);
    }

    #[test]
    fn a_snapshot_has_the_thread_syscall_and_the_processes() {
        let tid = nix::unistd::gettid().as_raw();
        let line = snapshot(tid);
        assert!(line.starts_with("runtime thread in syscall ["), "{line}");
        let thread = line.split("; processes:").next().unwrap_or_default();
        assert!(!thread.contains("unreadable"), "{line}");
        assert!(line.contains("processes: 1<-0 "), "{line}");
    }

    #[test]
    fn a_stall_is_reported_once_then_again_after_a_minute_and_its_end_too() {
        let mut at = None;
        assert_eq!(judge(10_000, 9_000, &mut at), Verdict::Fine);
        assert_eq!(
            judge(15_000, 9_000, &mut at),
            Verdict::Stuck { silent_ms: 6_000 }
        );
        assert_eq!(judge(16_000, 9_000, &mut at), Verdict::StillStuck);
        assert_eq!(judge(74_000, 9_000, &mut at), Verdict::StillStuck);
        assert_eq!(
            judge(75_000, 9_000, &mut at),
            Verdict::Stuck { silent_ms: 66_000 }
        );
        assert_eq!(
            judge(76_000, 75_500, &mut at),
            Verdict::Recovered {
                stuck_since_ms: 75_000
            }
        );
        assert_eq!(judge(77_000, 76_500, &mut at), Verdict::Fine);
    }

    #[test]
    fn doing_is_cleared_by_its_guard() {
        {
            let _d = doing("ExecProcess c1/e1".into());
            assert_eq!(DOING.lock().unwrap().as_deref(), Some("ExecProcess c1/e1"));
        }
        assert_eq!(*DOING.lock().unwrap(), None);
    }
}
