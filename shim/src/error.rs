//! The shim's error type and its one mapping to ttrpc status codes: containerd gets a code it
//! acts on (`NOT_FOUND` means "already gone" for Kill and Delete) and a message with the
//! whole cause chain (the failing phase, the guest console tail), never a debug dump.

use bulkhead_sandbox::propagation::PropagationError;
use bulkhead_sandbox::SandboxError;
use containerd_shim_protos::ttrpc;
use thiserror::Error;

use crate::config::ConfigError;
use crate::mounts::MountError;
use crate::stdio::StdioError;

#[derive(Debug, Error)]
pub enum ShimError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("not implemented: {0}")]
    Unimplemented(&'static str),
    #[error("invalid OCI runtime spec: {0}")]
    Spec(String),
    #[error("{context}")]
    Sandbox {
        context: String,
        #[source]
        source: SandboxError,
    },
    #[error("preparing the container's filesystems")]
    Mount(#[source] MountError),
    #[error("preparing the run root")]
    RunRoot(#[source] PropagationError),
    #[error("connecting the process's stdio")]
    Stdio(#[source] StdioError),
    #[error("loading the configuration")]
    Config(#[source] ConfigError),
}

pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    /// A sandbox error with what the shim was doing.
    pub fn sandbox(context: impl Into<String>) -> impl FnOnce(SandboxError) -> ShimError {
        let context = context.into();
        move |source| ShimError::Sandbox { context, source }
    }

    /// The ttrpc code containerd gets.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            ShimError::InvalidArgument(_) | ShimError::Spec(_) => Code::INVALID_ARGUMENT,
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) | ShimError::Config(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Mount(_) | ShimError::Stdio(_) | ShimError::RunRoot(_) => Code::INTERNAL,
            ShimError::Sandbox { source, .. } => sandbox_code(source),
        }
    }

    /// The message: this error and its causes, outermost first, joined by ": ".
    pub fn message(&self) -> String {
        bulkhead_log::error_chain(self)
    }
}

fn sandbox_code(e: &SandboxError) -> ttrpc::Code {
    use ttrpc::Code;
    if let Some(code) = e.agent_code() {
        // The agent's own verdict (NOT_FOUND for an unknown process, ...) passes through.
        return code;
    }
    match e {
        SandboxError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        SandboxError::Config(_) => Code::FAILED_PRECONDITION,
        SandboxError::Destroyed => Code::FAILED_PRECONDITION,
        SandboxError::VmGone { .. }
        | SandboxError::Transport { .. }
        | SandboxError::Unanswered { .. } => Code::UNAVAILABLE,
        SandboxError::RunDir(bulkhead_sandbox::run_dir::RunDirError::Exists(_)) => {
            Code::ALREADY_EXISTS
        }
        SandboxError::Stdio(_) => Code::UNAVAILABLE,
        _ => Code::INTERNAL,
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_sandbox::{Phase, VmExit};
    use ttrpc::Code;

    fn status(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn plain_errors_map_to_their_codes() {
        assert_eq!(
            status(ShimError::NotFound("process c1/e1".into())),
            (Code::NOT_FOUND, "process c1/e1 not found".into())
        );
        assert_eq!(
            status(ShimError::Unimplemented("pause")).0,
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            status(ShimError::Spec("no root".into())).0,
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            status(ShimError::AlreadyExists("container c1".into())).0,
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            status(ShimError::FailedPrecondition("running".into())).0,
            Code::FAILED_PRECONDITION
        );
    }

    #[test]
    fn agent_codes_pass_through_with_the_phase() {
        let e = SandboxError::Agent {
            phase: Phase::Signal,
            code: Code::NOT_FOUND,
            message: "no process c1/x".into(),
        };
        let (code, msg) = status(ShimError::sandbox("kill c1")(e));
        assert_eq!(code, Code::NOT_FOUND);
        assert_eq!(
            msg,
            "kill c1: signalling the process: the agent answered NOT_FOUND: no process c1/x"
        );
    }

    #[test]
    fn a_dead_vm_is_unavailable_and_quotes_the_console() {
        let e = SandboxError::VmGone {
            phase: Phase::Wait,
            exit: VmExit::GuestCrash,
            console_tail: "Kernel panic - not syncing: Attempted to kill init!".into(),
        };
        let (code, msg) = status(ShimError::sandbox("wait c1")(e));
        assert_eq!(code, Code::UNAVAILABLE);
        assert!(
            msg.starts_with("wait c1: waiting for the process: the VM is gone"),
            "{msg}"
        );
        assert!(msg.ends_with("Attempted to kill init!"), "{msg}");
    }

    #[test]
    fn boot_failures_are_internal_and_name_the_phase() {
        let e = SandboxError::KernelBoot {
            exit: VmExit::GuestCrash,
            console_tail: "VFS: Unable to mount root fs".into(),
        };
        let (code, msg) = status(ShimError::sandbox("create c1")(e));
        assert_eq!(code, Code::INTERNAL);
        assert!(msg.contains("did not boot"), "{msg}");
        assert!(msg.contains("Unable to mount root fs"), "{msg}");
    }
}
