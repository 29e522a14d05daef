//! Agent options: from the kernel command line when PID 1 of the guest,
//! from flags otherwise.
//!
//! Kernel command line: `bulkhead.log=LEVEL` (error, warn, info, debug,
//! trace), `bulkhead.log_format=text|json`, `bulkhead.port=PORT` (ttrpc,
//! default 1024), `bulkhead.stdio_port=PORT` (stdio streams, default 1025).
//!
//! Flags: `--listen unix:PATH|vsock:PORT`, `--stdio-listen ...`,
//! `--state-dir DIR`, `--log LEVEL`, `--log-format text|json` (default:
//! `BULKHEAD_LOG_FORMAT`, else text).

use std::path::PathBuf;

use bulkhead_log::Format;
use bulkhead_protocol::{AGENT_PORT, STDIO_PORT};
use log::LevelFilter;

use crate::server::ListenAddr;

pub const DEFAULT_STATE_DIR: &str = "/run/bulkhead/agent";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub log_level: LevelFilter,
    pub log_format: Format,
    pub api: ListenAddr,
    pub stdio: ListenAddr,
    pub state_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            log_level: LevelFilter::Info,
            log_format: Format::Text,
            api: ListenAddr::Vsock(AGENT_PORT),
            stdio: ListenAddr::Vsock(STDIO_PORT),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// Options from a kernel command line. Unknown words are ignored; bad
/// values keep the default and are returned as warnings to log later.
pub fn from_cmdline(cmdline: &str) -> (Options, Vec<String>) {
    let mut opts = Options::default();
    let mut warnings = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "bulkhead.log" => match value.parse() {
                Ok(level) => opts.log_level = level,
                Err(_) => warnings.push(format!("ignoring bad {word}")),
            },
            "bulkhead.log_format" => match value.parse() {
                Ok(format) => opts.log_format = format,
                Err(_) => warnings.push(format!("ignoring bad {word}")),
            },
            "bulkhead.port" => match value.parse() {
                Ok(port) => opts.api = ListenAddr::Vsock(port),
                Err(_) => warnings.push(format!("ignoring bad {word}")),
            },
            "bulkhead.stdio_port" => match value.parse() {
                Ok(port) => opts.stdio = ListenAddr::Vsock(port),
                Err(_) => warnings.push(format!("ignoring bad {word}")),
            },
            _ => {}
        }
    }
    (opts, warnings)
}

/// Options from command-line flags (not PID 1).
pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut opts = Options {
        log_format: Format::from_env()
            .map_err(|e| format!("{}: {e}", bulkhead_log::FORMAT_ENV))?
            .unwrap_or_default(),
        ..Options::default()
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => opts.api = value()?.parse()?,
            "--stdio-listen" => opts.stdio = value()?.parse()?,
            "--state-dir" => opts.state_dir = PathBuf::from(value()?),
            "--log" => {
                let v = value()?;
                opts.log_level = v.parse().map_err(|_| format!("bad log level {v:?}"))?;
            }
            "--log-format" => opts.log_format = value()?.parse().map_err(|e| format!("{e}"))?,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(opts)
}

pub fn usage() -> String {
    "usage: bulkhead-agent [--listen unix:PATH|vsock:PORT] \
     [--stdio-listen unix:PATH|vsock:PORT] [--state-dir DIR] [--log LEVEL] \
     [--log-format text|json]"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cmdline_options() {
        let (o, w) = from_cmdline(
            "console=ttyS0 reboot=k panic=1 bulkhead.log=debug bulkhead.log_format=json bulkhead.port=2000 bulkhead.stdio_port=2001 quiet",
        );
        assert!(w.is_empty());
        assert_eq!(o.log_level, LevelFilter::Debug);
        assert_eq!(o.log_format, Format::Json);
        assert_eq!(o.api, ListenAddr::Vsock(2000));
        assert_eq!(o.stdio, ListenAddr::Vsock(2001));
    }

    #[test]
    fn kernel_cmdline_defaults_and_bad_values() {
        let (o, w) =
            from_cmdline("bulkhead.port=notaport bulkhead.log=loud bulkhead.log_format=xml");
        assert_eq!(o, Options::default());
        assert_eq!(w.len(), 3);
        assert_eq!(o.api, ListenAddr::Vsock(1024));
        assert_eq!(o.stdio, ListenAddr::Vsock(1025));
    }

    #[test]
    fn flags() {
        let args = [
            "--listen",
            "unix:/tmp/a.sock",
            "--stdio-listen",
            "unix:/tmp/s.sock",
            "--state-dir",
            "/tmp/st",
            "--log",
            "trace",
            "--log-format",
            "json",
        ];
        let o = from_args(args.iter().map(|s| s.to_string())).unwrap();
        assert_eq!(o.api, ListenAddr::Unix("/tmp/a.sock".into()));
        assert_eq!(o.stdio, ListenAddr::Unix("/tmp/s.sock".into()));
        assert_eq!(o.state_dir, PathBuf::from("/tmp/st"));
        assert_eq!(o.log_level, LevelFilter::Trace);
        assert_eq!(o.log_format, Format::Json);
        assert!(from_args(["--log-format".into(), "xml".into()]).is_err());
        assert!(from_args(["--listen".to_string()]).is_err());
        assert!(from_args(["--listen".into(), "tcp:1".into()]).is_err());
        assert!(from_args(["--bogus".to_string()]).is_err());
    }
}
