//! The sandbox's error type: every error names the phase it happened in, and the ones where
//! the guest went away carry the end of the guest console, so the shim and the CLI can print
//! one clear message.

use std::fmt;

use bulkhead_protocol::client::HandshakeError;
use bulkhead_protocol::stdio::{AttachStatus, HeaderError};
use bulkhead_protocol::types::InvalidField;
use thiserror::Error;

use crate::hybrid_vsock::ConnectError;
use crate::jail::JailError;
use crate::network::NetworkError;
use crate::run_dir::RunDirError;
use crate::virtiofsd_process::VirtiofsdError;
use crate::vmm_process::{VmExit, VmmError};

/// What the sandbox was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    RunDir,
    Network,
    Jail,
    Virtiofsd,
    VmmStart,
    KernelBoot,
    AgentConnect,
    Handshake,
    SandboxCreate,
    ContainerCreate,
    ContainerStart,
    Exec,
    Signal,
    Wait,
    Resize,
    CloseStdin,
    Stats,
    OomEvent,
    ContainerRemove,
    Stdio,
    Destroy,
    Pause,
    Resume,
    Update,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::RunDir => "creating the run directory",
            Phase::Network => "attaching the pod network",
            Phase::Jail => "preparing the VMM's jail",
            Phase::Virtiofsd => "starting virtiofsd",
            Phase::VmmStart => "starting the VMM",
            Phase::KernelBoot => "booting the guest",
            Phase::AgentConnect => "connecting to the guest agent",
            Phase::Handshake => "checking the agent version",
            Phase::SandboxCreate => "setting up the sandbox in the guest",
            Phase::ContainerCreate => "creating the container",
            Phase::ContainerStart => "starting the container",
            Phase::Exec => "starting the exec process",
            Phase::Signal => "signalling the process",
            Phase::Wait => "waiting for the process",
            Phase::Resize => "resizing the terminal",
            Phase::CloseStdin => "closing stdin",
            Phase::Stats => "reading container stats",
            Phase::OomEvent => "waiting for OOM events",
            Phase::ContainerRemove => "removing the container",
            Phase::Stdio => "attaching stdio",
            Phase::Destroy => "destroying the sandbox",
            Phase::Pause => "pausing the container",
            Phase::Resume => "resuming the container",
            Phase::Update => "updating the container's resources",
        })
    }
}

/// Why a stdio stream could not be attached.
#[derive(Debug, Error)]
pub enum StdioError {
    #[error("invalid stdio header")]
    Header(#[source] HeaderError),
    #[error("cannot reach the agent's stdio port")]
    Connect(#[source] ConnectError),
    #[error("i/o on the stdio connection")]
    Io(#[source] std::io::Error),
    #[error("the agent closed the connection without answering")]
    NoAnswer,
    #[error("the agent refused: {0:?}")]
    Refused(AttachStatus),
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    #[error("invalid argument")]
    InvalidArgument(#[source] InvalidField),
    #[error("{}", Phase::RunDir)]
    RunDir(#[source] RunDirError),
    #[error("{}", Phase::Network)]
    Network(#[source] NetworkError),
    #[error("{}", Phase::Jail)]
    Jail(#[source] JailError),
    #[error("{}", Phase::Virtiofsd)]
    Virtiofsd(#[source] VirtiofsdError),
    #[error("{}", Phase::VmmStart)]
    VmmStart(#[source] VmmError),
    /// The VMM process itself failed before the agent answered (bad kernel, KVM, flags).
    #[error(
        "the VMM failed before the guest agent answered: {exit}{}",
        tail("VMM log", vmm_log_tail)
    )]
    VmmFailed { exit: VmExit, vmm_log_tail: String },
    /// The guest ended (panic, shutdown) before its agent answered.
    #[error(
        "the guest did not boot to its agent: {exit}{}",
        tail("guest console", console_tail)
    )]
    KernelBoot { exit: VmExit, console_tail: String },
    /// The VM runs but its agent did not answer in time.
    #[error("cannot reach the guest agent{}", tail("guest console", console_tail))]
    AgentConnect {
        #[source]
        source: ConnectError,
        console_tail: String,
    },
    #[error("{}", Phase::Handshake)]
    Handshake(#[source] HandshakeError),
    /// The agent answered with an error status.
    #[error("{phase}: the agent answered {code:?}: {message}")]
    Agent {
        phase: Phase,
        code: ttrpc::Code,
        message: String,
    },
    /// The request did not get an answer (connection lost, timeout).
    #[error("{phase}: no answer from the agent")]
    Transport {
        phase: Phase,
        #[source]
        source: ttrpc::Error,
    },
    /// No answer while the VM kept running. `diagnosis` says whether the agent answered a
    /// new connection, that is whether it is stuck or only this answer went missing.
    #[error("{phase}: no answer from the agent ({cause}); {diagnosis}")]
    Unanswered {
        phase: Phase,
        /// The transport's error (`Receive packet timeout`, ...).
        cause: String,
        diagnosis: String,
    },
    /// The VM ended while a request was in flight.
    #[error(
        "{phase}: the VM is gone: {exit}{}",
        tail("guest console", console_tail)
    )]
    VmGone {
        phase: Phase,
        exit: VmExit,
        console_tail: String,
    },
    #[error("{}", Phase::Stdio)]
    Stdio(#[source] StdioError),
    #[error("the sandbox was destroyed")]
    Destroyed,
    #[error("cannot clean up the run directory")]
    Cleanup(#[source] RunDirError),
}

impl SandboxError {
    /// The phase the error happened in.
    pub fn phase(&self) -> Option<Phase> {
        Some(match self {
            SandboxError::Config(_) | SandboxError::InvalidArgument(_) => return None,
            SandboxError::Destroyed => return None,
            SandboxError::RunDir(_) => Phase::RunDir,
            SandboxError::Network(_) => Phase::Network,
            SandboxError::Jail(_) => Phase::Jail,
            SandboxError::Virtiofsd(_) => Phase::Virtiofsd,
            SandboxError::VmmStart(_) | SandboxError::VmmFailed { .. } => Phase::VmmStart,
            SandboxError::KernelBoot { .. } => Phase::KernelBoot,
            SandboxError::AgentConnect { .. } => Phase::AgentConnect,
            SandboxError::Handshake(_) => Phase::Handshake,
            SandboxError::Agent { phase, .. }
            | SandboxError::Transport { phase, .. }
            | SandboxError::Unanswered { phase, .. }
            | SandboxError::VmGone { phase, .. } => *phase,
            SandboxError::Stdio(_) => Phase::Stdio,
            SandboxError::Cleanup(_) => Phase::Destroy,
        })
    }

    /// The agent's status code when the agent answered with an error (`NOT_FOUND` for an
    /// unknown container, ...): the shim passes it on to containerd.
    pub fn agent_code(&self) -> Option<ttrpc::Code> {
        match self {
            SandboxError::Agent { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the VM is known to be gone.
    pub fn vm_exit(&self) -> Option<VmExit> {
        match self {
            SandboxError::VmmFailed { exit, .. }
            | SandboxError::KernelBoot { exit, .. }
            | SandboxError::VmGone { exit, .. } => Some(*exit),
            _ => None,
        }
    }

    /// Maps a ttrpc error of one request.
    pub(crate) fn from_rpc(phase: Phase, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(status) => SandboxError::Agent {
                phase,
                code: status.code(),
                message: status.message,
            },
            source => SandboxError::Transport { phase, source },
        }
    }
}

fn tail(what: &str, text: &str) -> String {
    if text.is_empty() {
        format!(" (the {what} is empty)")
    } else {
        format!("; the {what} ends with:\n{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_phase_and_carry_the_console() {
        let e = SandboxError::KernelBoot {
            exit: VmExit::GuestCrash,
            console_tail: "Kernel panic - not syncing: No working init found".into(),
        };
        let text = e.to_string();
        assert!(text.contains("did not boot"), "{text}");
        assert!(text.contains("panicked"), "{text}");
        assert!(text.ends_with("No working init found"), "{text}");
        assert_eq!(e.phase(), Some(Phase::KernelBoot));
        assert_eq!(e.vm_exit(), Some(VmExit::GuestCrash));

        let e = SandboxError::VmmFailed {
            exit: VmExit::VmmError,
            vmm_log_tail: String::new(),
        };
        assert!(e.to_string().ends_with("(the VMM log is empty)"));
    }

    #[test]
    fn rpc_errors_keep_the_agent_code() {
        let e = SandboxError::from_rpc(
            Phase::ContainerStart,
            ttrpc::error::get_rpc_status(ttrpc::Code::NOT_FOUND, "no container c1"),
        );
        assert_eq!(e.agent_code(), Some(ttrpc::Code::NOT_FOUND));
        assert_eq!(
            e.to_string(),
            "starting the container: the agent answered NOT_FOUND: no container c1"
        );
        let e = SandboxError::from_rpc(Phase::Wait, ttrpc::Error::RemoteClosed);
        assert!(matches!(
            e,
            SandboxError::Transport {
                phase: Phase::Wait,
                ..
            }
        ));
        assert_eq!(e.agent_code(), None);
    }
}
