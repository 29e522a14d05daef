//! Errors of the CNI runner: each names the plugin, the command and what it said.

use std::path::PathBuf;

/// The error object a CNI plugin prints on stdout when it fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct PluginError {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("invalid port mapping {spec:?}: {reason}")]
    InvalidPort { spec: String, reason: String },
    #[error("invalid network configuration {origin}: {reason}")]
    Conflist { origin: String, reason: String },
    #[error("cannot read network configuration {}", path.display())]
    ReadConflist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("cannot run CNI plugin {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CNI plugin {plugin} ({command}) failed with {status}: {}{}{}",
        error.msg,
        if error.details.is_empty() { "" } else { ": " },
        error.details
    )]
    Plugin {
        plugin: String,
        command: &'static str,
        status: String,
        error: PluginError,
    },
    #[error("CNI plugin {plugin} ({command}) printed a result that is not valid: {output:?}")]
    BadResult {
        plugin: String,
        command: &'static str,
        output: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Netns(#[from] crate::network::netns::NetNsError),
}
