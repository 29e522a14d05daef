//! Host-side helpers: wrap a connected byte stream in an agent client and
//! perform the version handshake.

use thiserror::Error;

use crate::proto::VersionRequest;
use crate::ttrpc_api::AgentClient;
use crate::version::{check_protocol_version, VersionMismatch, PROTOCOL_VERSION};

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("version request to the agent failed")]
    Rpc(#[source] ttrpc::Error),
    #[error(transparent)]
    Mismatch(#[from] VersionMismatch),
}

/// What the agent said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    pub agent_version: String,
    pub protocol_version: u32,
}

/// Builds a client on an already connected stream (for hybrid vsock: the
/// unix socket after the `CONNECT`/`OK` exchange).
pub fn client_from_socket(socket: ttrpc::r#async::transport::Socket) -> AgentClient {
    AgentClient::new(ttrpc::r#async::Client::new(socket))
}

/// Asks the agent for its version and checks that both sides speak
/// [`PROTOCOL_VERSION`]. The agent makes the same check on its side.
pub async fn handshake(
    client: &AgentClient,
    timeout_nanos: i64,
) -> Result<AgentVersion, HandshakeError> {
    let mut req = VersionRequest::new();
    req.protocol_version = PROTOCOL_VERSION;
    let ctx = ttrpc::context::with_timeout(timeout_nanos);
    let resp = client
        .version(ctx, &req)
        .await
        .map_err(HandshakeError::Rpc)?;
    check_protocol_version(resp.protocol_version)?;
    Ok(AgentVersion {
        agent_version: resp.agent_version,
        protocol_version: resp.protocol_version,
    })
}
