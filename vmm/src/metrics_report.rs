//! Reporting the device counters (`devices::virtio::metrics`): one log line per virtio device
//! when the guest stops, and whenever the VMM gets SIGUSR1 (`kill -USR1 <pid>`), read from a
//! signalfd on the event loop.
//!
//! SIGUSR1 must be blocked in every thread for the signalfd to see it: `main` calls
//! [`block_report_signal`] before any thread exists. Where it is not blocked (a library user
//! that did not call it), SIGUSR1 keeps its default action.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::devices::virtio::metrics::DeviceMetrics;

/// The signal that asks for a report.
pub const REPORT_SIGNAL: libc::c_int = libc::SIGUSR1;

/// The devices whose counters are reported, by name.
#[derive(Default)]
pub struct MetricsReport {
    devices: Vec<(String, Arc<dyn DeviceMetrics>)>,
}

impl MetricsReport {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Report `metrics` under `name` (`virtio-rng`, `virtio-fs TAG`).
    pub fn add(&mut self, name: impl Into<String>, metrics: Arc<dyn DeviceMetrics>) {
        self.devices.push((name.into(), metrics));
    }

    /// One line per device.
    pub fn lines(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|(name, metrics)| metrics.summary(name))
            .collect()
    }

    /// Log every line at info level.
    pub fn log(&self) {
        for line in self.lines() {
            log::info!("metrics: {line}");
        }
    }
}

fn report_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, REPORT_SIGNAL);
        set
    }
}

/// Block [`REPORT_SIGNAL`] in the calling thread and in the threads it starts afterwards.
pub fn block_report_signal() -> io::Result<()> {
    let set = report_sigset();
    // SAFETY: pthread_sigmask with a valid set and no old-set pointer.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Event-loop subscriber: logs the report each time [`REPORT_SIGNAL`] arrives.
pub struct ReportOnSignal {
    fd: OwnedFd,
    report: Arc<MetricsReport>,
}

impl ReportOnSignal {
    /// A non-blocking signalfd for [`REPORT_SIGNAL`].
    pub fn new(report: Arc<MetricsReport>) -> io::Result<Self> {
        let set = report_sigset();
        // SAFETY: signalfd(2) creating a new fd (-1) for a valid set.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned by the kernel and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ReportOnSignal { fd, report })
    }

    /// Consume the pending signals; how many there were.
    fn drain(&self) -> usize {
        let mut count = 0;
        loop {
            // SAFETY: an all-zero signalfd_siginfo is valid; read(2) fills at most its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads into a buffer of `size` bytes that we own.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return count;
            }
            count += 1;
        }
    }
}

impl MutEventSubscriber for ReportOnSignal {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::warn!("metrics: cannot watch for SIGUSR1: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if self.drain() > 0 {
            self.report.log();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::RngMetrics;

    #[test]
    fn one_line_per_device() {
        let rng = Arc::new(RngMetrics::default());
        rng.requests.inc();
        let mut report = MetricsReport::new();
        report.add("virtio-rng", rng.clone());
        report.add("virtio-rng 2", Arc::new(RngMetrics::default()));
        let lines = report.lines();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("virtio-rng: requests=1 entropy_bytes=0"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("virtio-rng 2: requests=0"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_signal_reaches_the_signalfd() {
        // On a thread of its own, so blocking the signal affects no other test.
        std::thread::spawn(|| {
            block_report_signal().unwrap();
            let sub = ReportOnSignal::new(Arc::new(MetricsReport::new())).unwrap();
            assert_eq!(sub.drain(), 0);
            // SAFETY: tgkill to this very thread, where the signal is blocked.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    REPORT_SIGNAL,
                )
            };
            assert_eq!(sub.drain(), 1);
            assert_eq!(sub.drain(), 0);
        })
        .join()
        .unwrap();
    }
}
