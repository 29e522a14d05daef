//! Protocol versioning: one number both sides compare in the Version call.

use thiserror::Error;

/// Version of the agent wire protocol (proto messages, RPC semantics and the
/// stdio header). Bump on any incompatible change and on added RPCs: the check
/// is equality, so a host never talks to an agent lacking an RPC it may call.
/// 2: PauseContainer, ResumeContainer, UpdateContainer.
/// 3: UpdateInterface, UpdateRoutes, UpdateNeighbours.
pub const PROTOCOL_VERSION: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("agent protocol version mismatch: ours is {ours}, the peer speaks {theirs}")]
pub struct VersionMismatch {
    pub ours: u32,
    pub theirs: u32,
}

/// Accepts a peer exactly when it speaks our protocol version.
pub fn check_protocol_version(theirs: u32) -> Result<(), VersionMismatch> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_version_is_accepted_other_is_refused() {
        assert!(check_protocol_version(PROTOCOL_VERSION).is_ok());
        let err = check_protocol_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert_eq!(err.theirs, PROTOCOL_VERSION + 1);
        assert!(err.to_string().contains("mismatch"));
    }
}
