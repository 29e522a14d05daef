//! Confinement of the VMM after set-up: one seccomp allow-list per thread kind (vCPU threads,
//! the main thread running the event loop), compiled to BPF once at start-up, and the
//! privilege drop ([`privileges`]).
//!
//! Order, as the boot recipe does it: [`Confinement::compile`] first (a bad filter stops the
//! VMM before it touches KVM); [`privileges::drop_privileges`] once everything is open and
//! before the vCPU threads start; each vCPU thread applies [`SeccompFilters::vcpu`] right
//! before its first `KVM_RUN`; the main thread applies [`SeccompFilters::main`] right before
//! the event loop.
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

use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use privileges::{Identity, PrivilegeError};
pub use sigsys::STATUS_SECCOMP_VIOLATION;

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
    #[error("cannot install the {thread} seccomp filter")]
    Apply {
        thread: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// How strictly the allow-lists are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// A syscall not on the list ends the VMM (after the SIGSYS reporter names it).
    #[default]
    Strict,
    /// A syscall not on the list runs and is logged by the kernel (for finding missing ones).
    Log,
    /// No filter.
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(SeccompMode::Strict),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!("{s:?} is not one of strict, log, off")),
        }
    }
}

impl std::fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeccompMode::Strict => "strict",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// A compiled filter for one thread kind, cheap to clone into every vCPU thread. Applying it
/// confines the calling thread only (and the threads it starts afterwards).
#[derive(Clone, Debug, Default)]
pub struct ThreadFilter {
    inner: Option<CompiledFilter>,
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

    /// Confine the calling thread. Sets `no_new_privs` (seccomp requires it without
    /// CAP_SYS_ADMIN). In strict mode the SIGSYS reporter is installed first.
    pub fn apply(&self) -> Result<(), SeccompError> {
        let Some(f) = &self.inner else {
            return Ok(());
        };
        if f.mode == SeccompMode::Strict {
            sigsys::install().map_err(SeccompError::Reporter)?;
        }
        sigsys::set_thread_kind(f.thread);
        seccompiler::apply_filter(&f.program).map_err(|source| SeccompError::Apply {
            thread: f.thread,
            source,
        })
    }
}

/// The filters of every thread kind, compiled once.
#[derive(Clone, Debug, Default)]
pub struct SeccompFilters {
    /// For each vCPU thread.
    pub vcpu: ThreadFilter,
    /// For the main thread (event loop).
    pub main: ThreadFilter,
}

impl SeccompFilters {
    /// Compile the allow-lists for `mode` (nothing for [`SeccompMode::Off`]).
    pub fn compile(mode: SeccompMode) -> Result<Self, SeccompError> {
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
            })
        };
        let err = |thread| move |source| SeccompError::Build { thread, source };
        Ok(SeccompFilters {
            vcpu: build("vcpu", rules::vcpu_rules().map_err(err("vcpu"))?)?,
            main: build("main", rules::main_rules().map_err(err("main"))?)?,
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
    /// Compile the filters for `mode`; `identity` is applied with the privilege drop.
    pub fn compile(mode: SeccompMode, identity: Identity) -> Result<Self, SeccompError> {
        Ok(Confinement {
            mode,
            filters: SeccompFilters::compile(mode)?,
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

/// "a: b: c" from an error and its sources, for messages that travel as strings (the vCPU
/// threads report failures to the event loop that way).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
