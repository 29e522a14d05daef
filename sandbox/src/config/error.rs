//! What can be wrong with a configuration: every message names where the bad value came
//! from (a file, an environment variable, a flag) and the key.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file that must exist (named by `--config` / `BULKHEAD_CONFIG`) is missing, or a
    /// file cannot be read.
    #[error("cannot read the configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type or spelling.
    #[error("{origin}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse {
        /// The file, or `environment variable X`, or `--flag`.
        origin: String,
        /// 1-based line in the file, when known.
        line: Option<usize>,
        /// toml's message with the key and, inside a section, `[section]` added.
        message: String,
    },
    /// A well-formed value outside what the runtime accepts.
    #[error("{origin}: {key} = {value}: {reason}")]
    Invalid {
        origin: String,
        key: &'static str,
        /// The value as TOML would show it.
        value: String,
        reason: String,
    },
    /// `"auto"` (or a bare name looked up in PATH) found nothing.
    #[error("no {what} found (looked for {looked}); install it or set {key} (env {env})")]
    NotFound {
        what: &'static str,
        key: &'static str,
        env: &'static str,
        looked: String,
    },
}
