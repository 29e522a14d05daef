//! The running VM: one epoll loop (`event-manager`) on the main thread. Device event handlers
//! are subscribers; so is the [`ExitMonitor`], which watches the i8042 reset line and the
//! vCPU threads and decides how the VM ended.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::devices::legacy::{ConsoleWatch, SerialConsole};
use crate::devices::virtio::fs::DeviceFailure;
use crate::exit_status::GuestExit;
use crate::vstate::vcpu::{VcpuEvent, VcpuEventsReceiver};

/// The loop's subscriber type.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors of the running VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the event loop")]
    EventManager(#[source] event_manager::Error),
    #[error("the event loop failed")]
    Loop(#[source] event_manager::Error),
    #[error("vCPU {index} stopped: {why}")]
    Vcpu { index: u8, why: String },
    #[error("a device backend failed: {0}")]
    Device(String),
}

/// Watches for the guest's end: a reset through the i8042, a power-off announced on the
/// console, or a vCPU that stopped.
pub struct ExitMonitor {
    reset_evt: EventFd,
    vcpus: VcpuEventsReceiver,
    console: ConsoleWatch,
    device_failures: Vec<Arc<DeviceFailure>>,
    outcome: Option<Result<GuestExit, RunError>>,
}

impl ExitMonitor {
    /// A monitor over the reset line, the vCPU reports and the console's panic watch.
    pub fn new(
        reset_evt: EventFd,
        vcpus: VcpuEventsReceiver,
        console: ConsoleWatch,
        device_failures: Vec<Arc<DeviceFailure>>,
    ) -> Self {
        ExitMonitor {
            reset_evt,
            vcpus,
            console,
            device_failures,
            outcome: None,
        }
    }

    fn guest_reset(&self) -> GuestExit {
        if self.console.panicked() {
            GuestExit::Panic
        } else {
            GuestExit::Shutdown
        }
    }
}

impl MutEventSubscriber for ExitMonitor {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![
            self.reset_evt.as_raw_fd(),
            self.vcpus.evt.as_raw_fd(),
            self.console.halt_evt().as_raw_fd(),
        ];
        fds.extend(self.device_failures.iter().map(|f| f.evt().as_raw_fd()));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.outcome = Some(Err(RunError::Loop(e)));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.outcome.is_some() {
            return;
        }
        if events.fd() == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            let how = self.guest_reset();
            log::info!("exit: {how} (reset through the i8042)");
            self.outcome = Some(Ok(how));
        } else if events.fd() == self.console.halt_evt().as_raw_fd() {
            let _ = self.console.halt_evt().read();
            log::info!("exit: guest powered off or halted (announced on its console)");
            self.outcome = Some(Ok(GuestExit::Shutdown));
        } else if let Some(failure) = self
            .device_failures
            .iter()
            .find(|f| f.evt().as_raw_fd() == events.fd())
        {
            let _ = failure.evt().read();
            let reason = failure
                .reason()
                .unwrap_or_else(|| "a device backend failed".into());
            self.outcome = Some(Err(RunError::Device(reason)));
        } else if events.fd() == self.vcpus.evt.as_raw_fd() {
            let _ = self.vcpus.evt.read();
            if let Ok((index, event)) = self.vcpus.rx.try_recv() {
                self.outcome = Some(match event {
                    VcpuEvent::Stopped(GuestExit::Shutdown) => {
                        let how = self.guest_reset();
                        log::info!("exit: {how} (vCPU {index} stopped)");
                        Ok(how)
                    }
                    VcpuEvent::Stopped(how) => {
                        log::info!("exit: {how} (vCPU {index})");
                        Ok(how)
                    }
                    VcpuEvent::Failed(why) => Err(RunError::Vcpu { index, why }),
                });
            }
        }
    }
}

/// Run the loop until the monitor has an outcome; flush the console last.
pub fn run_until_exit(
    subscribers: Vec<Subscriber>,
    monitor: Arc<Mutex<ExitMonitor>>,
    serial: &Mutex<SerialConsole>,
) -> Result<GuestExit, RunError> {
    let mut manager: EventManager<Subscriber> =
        EventManager::new().map_err(RunError::EventManager)?;
    for s in subscribers {
        manager.add_subscriber(s);
    }
    manager.add_subscriber(monitor.clone());
    let outcome = loop {
        if let Some(outcome) = lock(&monitor).outcome.take() {
            break outcome;
        }
        if let Err(e) = manager.run() {
            break Err(RunError::Loop(e));
        }
    };
    lock(serial).flush();
    outcome
}
