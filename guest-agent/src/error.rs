//! The agent's errors and their one mapping to ttrpc status codes.

use std::io;

use bulkhead_protocol::types::InvalidField;
use bulkhead_protocol::VersionMismatch;
use thiserror::Error;
use ttrpc::Code;

use crate::container::ContainerError;
use crate::network::NetworkError;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    InvalidField(#[from] InvalidField),
    #[error(transparent)]
    Version(#[from] VersionMismatch),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("process {exec_id:?} of container {container_id} not found")]
    ProcessNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("exec {exec_id} already exists in container {container_id}")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is not paused")]
    NotPaused(String),
    #[error("container {0} is paused")]
    Paused(String),
    #[error("container {0} was already started")]
    AlreadyStarted(String),
    #[error("process {exec_id:?} of container {container_id} has already exited")]
    ProcessExited {
        container_id: String,
        exec_id: String,
    },
    #[error("cannot create container {id}")]
    Create {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot start container {id}")]
    Start {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot exec in container {id}")]
    Exec {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot pause container {id}")]
    Pause {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot resume container {id}")]
    Resume {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot update the resources of container {id}")]
    Update {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot remove container {id}")]
    Remove {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(
        "the agent configures the network only as PID 1 of a guest \
         (here it shares the host's network namespace)"
    )]
    NetworkNotManaged,
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
}

impl AgentError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            AgentError::InvalidField(_) => Code::INVALID_ARGUMENT,
            AgentError::Version(_) => Code::FAILED_PRECONDITION,
            AgentError::ContainerNotFound(_) | AgentError::ProcessNotFound { .. } => {
                Code::NOT_FOUND
            }
            AgentError::ContainerExists(_) | AgentError::ExecExists { .. } => Code::ALREADY_EXISTS,
            AgentError::NotRunning(_)
            | AgentError::NotPaused(_)
            | AgentError::Paused(_)
            | AgentError::AlreadyStarted(_)
            | AgentError::ProcessExited { .. } => Code::FAILED_PRECONDITION,
            AgentError::Create { source, .. } | AgentError::Exec { source, .. } => match source {
                ContainerError::InvalidSpec(_)
                | ContainerError::InvalidProcess(_)
                | ContainerError::NoProcess
                | ContainerError::Rootfs { .. } => Code::INVALID_ARGUMENT,
                _ => Code::INTERNAL,
            },
            AgentError::Network(e) if e.is_not_found() => Code::NOT_FOUND,
            AgentError::Network(NetworkError::BadRoute { .. }) => Code::INVALID_ARGUMENT,
            AgentError::NetworkNotManaged => Code::FAILED_PRECONDITION,
            _ => Code::INTERNAL,
        }
    }

    /// The full cause chain on one line, for logs and for the peer.
    pub fn chain(&self) -> String {
        bulkhead_log::error_chain(self)
    }

    pub fn to_ttrpc(&self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), self.chain()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_chained_messages() {
        let bad_json = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let e = AgentError::Create {
            id: "c1".into(),
            source: ContainerError::InvalidSpec(bad_json),
        };
        let ttrpc::Error::RpcStatus(status) = e.to_ttrpc() else {
            panic!("not a status");
        };
        assert_eq!(status.code(), Code::INVALID_ARGUMENT);
        assert!(status
            .message()
            .starts_with("cannot create container c1: invalid OCI runtime spec: EOF"));
        assert_eq!(
            AgentError::ContainerNotFound("x".into()).code(),
            Code::NOT_FOUND
        );
    }
}
