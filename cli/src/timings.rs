//! The runtime's own timing log: `bulkhead run --timings` (or `BULKHEAD_TIMINGS=1`) prints
//! how long each phase of a run took, on stderr, when the run ends:
//!
//! ```text
//! bulkhead timings: image          3.1 ms
//! bulkhead timings: vmm-start     41.0 ms
//! ...
//! bulkhead timings: total       1480.2 ms
//! ```
//!
//! Phases are recorded by the code that runs them (`mark`: the time since the previous
//! mark), or derived from the logs of the VM (`add`: the VMM's and the guest console's
//! timestamps split the boot into VMM start, kernel boot and agent start: `mark_parts`). One process
//! records one run, so the log is a process-wide value.

use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Prefix of every line, for scripts (`bench/run.sh`).
pub const PREFIX: &str = "bulkhead timings:";

struct Log {
    start: Instant,
    last: Instant,
    phases: Vec<(String, Duration)>,
}

static LOG: OnceLock<Mutex<Log>> = OnceLock::new();

/// Starts recording; the time of this call is the start of the first phase.
pub fn enable() {
    let now = Instant::now();
    let _ = LOG.set(Mutex::new(Log {
        start: now,
        last: now,
        phases: Vec::new(),
    }));
}

pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Ends the phase `name`: the time since the previous mark (or since `enable`).
pub fn mark(name: &str) {
    if let Some(log) = LOG.get() {
        if let Ok(mut l) = log.lock() {
            let now = Instant::now();
            let d = now - l.last;
            l.last = now;
            l.phases.push((name.to_owned(), d));
        }
    }
}

/// Ends a phase made of `parts` measured elsewhere: time since the previous mark that the
/// parts do not cover goes to the first one (it came before them); parts that add up to
/// more are cut from the end.
pub fn mark_parts(parts: &[(&str, Duration)]) {
    if let Some(log) = LOG.get() {
        if let Ok(mut l) = log.lock() {
            let now = Instant::now();
            let elapsed = now - l.last;
            l.last = now;
            let sum: Duration = parts.iter().map(|(_, d)| *d).sum();
            let mut extra = elapsed.saturating_sub(sum);
            let mut left = elapsed;
            for (name, d) in parts {
                let d = (*d + extra).min(left);
                extra = Duration::ZERO;
                left -= d;
                l.phases.push(((*name).to_owned(), d));
            }
        }
    }
}

/// The recorded phases and the total, as printed lines.
pub fn lines() -> Vec<String> {
    let Some(log) = LOG.get() else {
        return Vec::new();
    };
    let Ok(l) = log.lock() else {
        return Vec::new();
    };
    let mut out: Vec<String> = l.phases.iter().map(|(n, d)| format_line(n, *d)).collect();
    out.push(format_line("total", l.start.elapsed()));
    out
}

fn format_line(name: &str, d: Duration) -> String {
    format!("{PREFIX} {name:<16} {:>9.1} ms", d.as_secs_f64() * 1000.0)
}

/// Prints the log on stderr (a detached supervisor's stderr is its `supervisor.log`).
pub fn report() {
    for line in lines() {
        eprintln!("{line}");
    }
}

/// How a microVM's boot splits into phases, from its own logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootSplit {
    /// Sandbox start to the VMM process's launch (run directory, virtiofsd ready).
    pub launch: Duration,
    /// VMM launch to its vCPUs running (the VMM log's `vcpus: N started`).
    pub vmm_start: Duration,
    /// vCPUs running to the kernel starting /init (the console's printk time).
    pub kernel_boot: Duration,
    /// /init to a version-checked agent with its sandbox created.
    pub agent_ready: Duration,
}

/// Splits `total` (sandbox start to agent ready) with the VMM's launch offset, its log and
/// the guest console. Missing pieces count toward the next phase.
pub fn split_boot(
    total: Duration,
    launch: Option<Duration>,
    vmm_log: &str,
    console: &str,
) -> BootSplit {
    let launch = launch.unwrap_or_default().min(total);
    let vmm_start = vcpus_started(vmm_log)
        .unwrap_or_default()
        .min(total - launch);
    let kernel_boot = init_started(console)
        .unwrap_or_default()
        .min(total - launch - vmm_start);
    BootSplit {
        launch,
        vmm_start,
        kernel_boot,
        agent_ready: total - launch - vmm_start - kernel_boot,
    }
}

/// `[    0.041000] INFO  bulkhead-vmm: vcpus: 1 started` → 41 ms; in a JSON log
/// (`log_format = "json"`), the line's `"uptime":0.041000`.
fn vcpus_started(vmm_log: &str) -> Option<Duration> {
    vmm_log
        .lines()
        .find(|l| l.contains("vcpus:") && l.contains("started"))
        .and_then(|l| bracket_time(l).or_else(|| json_uptime(l)))
}

/// `[    0.812345] Run /init as init process` → 812 ms of kernel time. A `quiet` kernel (the
/// default command line) does not print that line: then the agent's first line, which it
/// stamps with the same clock (`... bulkhead-agent: ... starting as PID 1`, text or JSON).
fn init_started(console: &str) -> Option<Duration> {
    let line = |needle: &str| console.lines().find(|l| l.contains(needle));
    line("Run /init as init process")
        .and_then(bracket_time)
        .or_else(|| {
            line("starting as PID 1")
                .filter(|l| l.contains("bulkhead-agent"))
                .and_then(|l| bracket_time(l).or_else(|| json_uptime(l)))
        })
}

/// The seconds in a leading `[ 12.345678]`.
fn bracket_time(line: &str) -> Option<Duration> {
    let rest = line.trim_start().strip_prefix('[')?;
    let secs: f64 = rest.get(..rest.find(']')?)?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The seconds of a JSON log line's `"uptime"` field (the VMM's clock).
fn json_uptime(line: &str) -> Option<Duration> {
    let rest = line.split_once("\"uptime\":")?.1;
    let secs: f64 = rest.get(..rest.find([',', '}'])?)?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// How long ago process `pid` started, from `/proc/<pid>/stat` (clock ticks since boot)
/// and `CLOCK_BOOTTIME`: resolution 1/`CLK_TCK` s (10 ms).
pub fn process_age(pid: u32) -> Option<Duration> {
    let start_ticks = crate::state::process_start_time(pid)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let now = Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    );
    let started = Duration::from_secs_f64(start_ticks as f64 / hz as f64);
    now.checked_sub(started)
}

/// Reads a log file of the sandbox for [`split_boot`] (missing files read as empty).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMM_LOG: &str = "[    0.000120] INFO  bulkhead-vmm: memory: 512 MiB in 1 region\n\
                           [    0.041000] INFO  bulkhead-vmm: vcpus: 1 started\n";
    const CONSOLE: &str = "[    0.000000] Linux version 6.1.0\n\
                           [    0.812000] Run /init as init process\n\
                           bulkhead-agent: listening\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn boot_splits_into_launch_vmm_kernel_and_agent() {
        let s = split_boot(ms(1200), Some(ms(100)), VMM_LOG, CONSOLE);
        assert_eq!(s.launch, ms(100));
        assert_eq!(s.vmm_start, ms(41));
        assert_eq!(s.kernel_boot, ms(812));
        assert_eq!(s.agent_ready, ms(1200 - 100 - 41 - 812));
    }

    #[test]
    fn missing_or_inconsistent_logs_never_exceed_the_total() {
        let s = split_boot(ms(500), None, "", "garbage [x] line\n");
        assert_eq!(
            (s.launch, s.vmm_start, s.kernel_boot),
            (ms(0), ms(0), ms(0))
        );
        assert_eq!(s.agent_ready, ms(500));
        // Timestamps larger than the measured total are clamped.
        let s = split_boot(ms(300), Some(ms(100)), VMM_LOG, CONSOLE);
        assert_eq!(
            s.launch + s.vmm_start + s.kernel_boot + s.agent_ready,
            ms(300)
        );
        assert_eq!(s.kernel_boot, ms(300 - 141));
    }

    #[test]
    fn a_quiet_kernel_splits_at_the_agents_first_line() {
        let quiet = "[    0.790000] INFO  bulkhead-agent: cgroup controllers enabled: cpu\n\
                     [    0.812000] INFO  bulkhead-agent: bulkhead-agent 0.1.0 (commit x) \
                     (protocol 3) starting as PID 1\n";
        let s = split_boot(ms(1200), Some(ms(100)), VMM_LOG, quiet);
        assert_eq!(s.kernel_boot, ms(812));
        let json = "{\"uptime\":0.812000,\"level\":\"info\",\"binary\":\"bulkhead-agent\",\
                    \"msg\":\"bulkhead-agent 0.1.0 (protocol 3) starting as PID 1\"}\n";
        assert_eq!(
            split_boot(ms(1200), None, VMM_LOG, json).kernel_boot,
            ms(812)
        );
    }

    #[test]
    fn bracket_times_parse() {
        assert_eq!(bracket_time("[    1.500000] x"), Some(ms(1500)));
        assert_eq!(bracket_time("[-1.0] x"), None);
        assert_eq!(bracket_time("no bracket"), None);
        assert_eq!(bracket_time("[ 1.0 no end"), None);
    }

    #[test]
    fn a_json_vmm_log_splits_too() {
        let json =
            "{\"time\":\"2026-12-01T18:26:50.123456Z\",\"uptime\":0.041000,\"level\":\"info\",\
                    \"binary\":\"bulkhead-vmm\",\"target\":\"bulkhead_vmm::builder\",\
                    \"msg\":\"vcpus: 1 started\"}\n";
        let s = split_boot(ms(1200), Some(ms(100)), json, CONSOLE);
        assert_eq!(s.vmm_start, ms(41));
        assert_eq!(json_uptime("{\"uptime\":-1.0}"), None);
        assert_eq!(json_uptime("{\"time\":\"x\"}"), None);
    }

    #[test]
    fn our_own_process_has_an_age() {
        let age = process_age(std::process::id()).unwrap();
        assert!(age < Duration::from_secs(3600), "{age:?}");
    }
}
