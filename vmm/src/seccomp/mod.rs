//! Confinement of the VMM after set-up: one seccomp allow-list per thread kind (vCPU threads,
//! the main thread running the event loop), compiled to BPF once at start-up, and the
//! privilege drop ([`privileges`]).
//!
//! Order, as the boot recipe does it: [`Confinement::compile`] first (a bad filter stops the
//! VMM before it touches KVM); [`privileges::drop_privileges`] once everything is open and
//! before the vCPU threads start, followed by [`SeccompFilters::process`] on every thread at
//! once (so helper threads started during set-up are confined too; the vCPU threads are
//! started before it and held by a [`StartGate`], so no thread is created under it); each
//! vCPU thread adds
//! [`SeccompFilters::vcpu`] right before its first `KVM_RUN`; the main thread adds
//! [`SeccompFilters::main`] right before the event loop. Stacked filters all apply: a thread
//! may only make the syscalls every one of its filters allows.
//!
//! Modes: `strict` traps any syscall not on the list: the SIGSYS reporter ([`sigsys`]) prints
//! its number and ends the VMM with status 159. `log` allows it but has the kernel log it
//! (SECCOMP_RET_LOG: `dmesg`, or `ausearch -m SECCOMP` with auditd), to find what a list
//! lacks. `off` installs no filter.

pub mod privileges;
pub mod rules;
pub mod sigsys;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Condvar, Mutex};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// How strictly the allow-lists are enforced (`--seccomp`, part of the VMM's command line).
pub use bulkhead_vmm_contract::SeccompMode;
pub use privileges::{Identity, PrivilegeError};
pub use rules::RuleOptions;
pub use sigsys::STATUS_SECCOMP_KILL;

/// Errors building or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {thread} seccomp filter")]
    Build {
        thread: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the SIGSYS reporter")]
    Reporter(#[source] std::io::Error),
    #[error("the VMM's threads could not be confined, the vCPU does not start")]
    GateClosed,
    #[error("cannot install the {thread} seccomp filter")]
    Apply {
        thread: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// A compiled filter for one thread kind, cheap to clone into every vCPU thread. Applying it
/// confines the calling thread only (and the threads it starts afterwards).
#[derive(Clone, Debug, Default)]
pub struct ThreadFilter {
    inner: Option<CompiledFilter>,
    gate: Option<Arc<GateState>>,
}

/// Holds freshly started threads until every thread of the process is under the process
/// filter: vCPU threads are spawned, then the process filter goes on all threads at once
/// (TSYNC), then the gate opens and each vCPU thread adds its own filter. Dropping the gate
/// without opening it releases the waiting threads with an error, so they never run a guest
/// unconfined.
#[derive(Debug, Default)]
pub struct StartGate {
    state: Arc<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    inner: Mutex<Gate>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    /// Threads waiting at the gate (their start-up syscalls are behind them).
    arrived: usize,
    /// None while closed; then whether the threads may go on.
    open: Option<bool>,
}

impl GateState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, ok: bool) {
        let mut gate = self.lock();
        if gate.open.is_none() {
            gate.open = Some(ok);
        }
        self.cond.notify_all();
    }

    fn arrive_and_wait(&self) -> bool {
        let mut gate = self.lock();
        gate.arrived += 1;
        self.cond.notify_all();
        loop {
            if let Some(ok) = gate.open {
                return ok;
            }
            gate = self.cond.wait(gate).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn wait_for_arrivals(&self, n: usize) {
        let mut gate = self.lock();
        while gate.arrived < n && gate.open.is_none() {
            gate = self.cond.wait(gate).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl StartGate {
    /// A closed gate.
    pub fn new() -> Self {
        StartGate::default()
    }

    /// Wait until `n` threads are waiting at the gate: their thread start-up (which needs
    /// syscalls no filter allows) is over.
    pub fn wait_for_arrivals(&self, n: usize) {
        self.state.wait_for_arrivals(n);
    }

    /// Let the waiting threads go on (`ok`) or fail.
    pub fn open(&self, ok: bool) {
        self.state.set(ok);
    }
}

impl Drop for StartGate {
    fn drop(&mut self) {
        self.state.set(false);
    }
}

#[derive(Clone, Debug)]
struct CompiledFilter {
    thread: &'static str,
    mode: SeccompMode,
    program: Arc<BpfProgram>,
}

impl ThreadFilter {
    /// No filter: [`ThreadFilter::apply`] does nothing.
    pub fn none() -> Self {
        ThreadFilter::default()
    }

    /// Whether applying this filter installs anything.
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// The BPF program (for tests and diagnostics).
    pub fn program(&self) -> Option<&BpfProgram> {
        self.inner.as_ref().map(|f| &*f.program)
    }

    /// This filter, applied only once `gate` opens (see [`StartGate`]).
    pub fn gated(&self, gate: &StartGate) -> ThreadFilter {
        ThreadFilter {
            inner: self.inner.clone(),
            gate: Some(gate.state.clone()),
        }
    }

    /// Confine the calling thread (after waiting for the gate, if any). Sets `no_new_privs`
    /// (seccomp requires it without CAP_SYS_ADMIN). In strict mode the SIGSYS reporter is
    /// installed first.
    pub fn apply(&self) -> Result<(), SeccompError> {
        if let Some(gate) = &self.gate {
            if !gate.arrive_and_wait() {
                return Err(SeccompError::GateClosed);
            }
        }
        self.install(false)
    }

    /// Confine every thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC); they all get
    /// `no_new_privs` too.
    pub fn apply_all_threads(&self) -> Result<(), SeccompError> {
        self.install(true)
    }

    fn install(&self, all_threads: bool) -> Result<(), SeccompError> {
        let Some(f) = &self.inner else {
            return Ok(());
        };
        if f.mode == SeccompMode::Strict {
            sigsys::install().map_err(SeccompError::Reporter)?;
        }
        sigsys::set_thread_kind(f.thread);
        let result = if all_threads {
            seccompiler::apply_filter_all_threads(&f.program)
        } else {
            seccompiler::apply_filter(&f.program)
        };
        result.map_err(|source| SeccompError::Apply {
            thread: f.thread,
            source,
        })
    }
}

/// The filters of every thread kind, compiled once.
#[derive(Clone, Debug, Default)]
pub struct SeccompFilters {
    /// For every thread at once, when privileges are dropped (the union of the others).
    pub process: ThreadFilter,
    /// For each vCPU thread.
    pub vcpu: ThreadFilter,
    /// For the main thread (event loop).
    pub main: ThreadFilter,
}

impl SeccompFilters {
    /// Compile the allow-lists for `mode` (nothing for [`SeccompMode::Off`]) as `opts` says.
    pub fn compile(mode: SeccompMode, opts: &RuleOptions) -> Result<Self, SeccompError> {
        let mismatch = match mode {
            SeccompMode::Strict => SeccompAction::Trap,
            SeccompMode::Log => SeccompAction::Log,
            SeccompMode::Off => return Ok(SeccompFilters::default()),
        };
        let build = |thread: &'static str, rules| -> Result<ThreadFilter, SeccompError> {
            let err = |source| SeccompError::Build { thread, source };
            let filter = SeccompFilter::new(
                rules,
                mismatch.clone(),
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .map_err(err)?;
            let program = BpfProgram::try_from(filter).map_err(err)?;
            Ok(ThreadFilter {
                inner: Some(CompiledFilter {
                    thread,
                    mode,
                    program: Arc::new(program),
                }),
                gate: None,
            })
        };
        let err = |thread| move |source| SeccompError::Build { thread, source };
        Ok(SeccompFilters {
            process: build("vmm", rules::process_rules(opts).map_err(err("process"))?)?,
            vcpu: build("vcpu", rules::vcpu_rules(opts).map_err(err("vcpu"))?)?,
            main: build("main", rules::main_rules(opts).map_err(err("main"))?)?,
        })
    }
}

/// What the boot recipe does to confine the VMM: the compiled filters and the identity to
/// switch to after set-up.
#[derive(Clone, Debug)]
pub struct Confinement {
    /// The mode the filters were compiled for.
    pub mode: SeccompMode,
    /// The filters per thread kind.
    pub filters: SeccompFilters,
    /// Optional uid/gid to switch to.
    pub identity: Identity,
}

impl Confinement {
    /// Compile the filters for `mode` and `opts`; `identity` is applied with the privilege
    /// drop.
    pub fn compile(
        mode: SeccompMode,
        opts: &RuleOptions,
        identity: Identity,
    ) -> Result<Self, SeccompError> {
        Ok(Confinement {
            mode,
            filters: SeccompFilters::compile(mode, opts)?,
            identity,
        })
    }

    /// No filters and no identity switch (capabilities are still dropped by the recipe).
    pub fn unfiltered() -> Self {
        Confinement {
            mode: SeccompMode::Off,
            filters: SeccompFilters::default(),
            identity: Identity::default(),
        }
    }
}
