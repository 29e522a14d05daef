//! The loader: a list of layers, each parsed and checked on its own (so an error names the
//! layer it is in), merged key by key onto the defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, ConfigError, CONFIG_ENV, DEFAULT_CONFIG_PATH, VENDOR_DEFAULTS_PATH};

/// One source of configuration values; later layers win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// A file that must exist (named by the user).
    File(PathBuf),
    /// A file that may be missing (vendor defaults, [`DEFAULT_CONFIG_PATH`]).
    OptionalFile(PathBuf),
    /// TOML text; `origin` names it in errors.
    Text { origin: String, text: String },
    /// One key (`section.name`) set from a string: an environment variable or a flag;
    /// `origin` names it in errors.
    Value {
        origin: String,
        key: String,
        value: String,
    },
}

/// An environment variable that sets one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvOverride {
    pub var: &'static str,
    /// `section.name`.
    pub key: &'static str,
    /// Whether an empty value sets the key to "" (no initramfs, no shared filesystem, the
    /// VMM's default command line); otherwise an empty variable counts as unset.
    pub empty_is_a_value: bool,
}

const fn env(var: &'static str, key: &'static str, empty_is_a_value: bool) -> EnvOverride {
    EnvOverride {
        var,
        key,
        empty_is_a_value,
    }
}

/// The environment variables that override single keys (above the files, below flags).
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    env("BULKHEAD_ROOT", "store_root", false),
    env("BULKHEAD_RUN_ROOT", "run_root", false),
    env("BULKHEAD_LOG", "log_level", false),
    env("BULKHEAD_LOG_FORMAT", "log_format", false),
    env("BULKHEAD_KERNEL", "vm.kernel", false),
    env("BULKHEAD_INITRD", "vm.initrd", true),
    env("BULKHEAD_VMM", "vm.vmm", false),
    env("BULKHEAD_CMDLINE", "vm.cmdline", true),
    env("BULKHEAD_VIRTIOFSD", "virtiofsd.binary", true),
    env("BULKHEAD_ISOLATION", "cli.isolation", false),
];

impl Layer {
    /// The layers of the environment variables in `env` ([`ENV_OVERRIDES`]).
    pub fn environment(env: &HashMap<String, String>) -> Vec<Layer> {
        ENV_OVERRIDES
            .iter()
            .filter_map(|o| {
                let value = env.get(o.var)?;
                (o.empty_is_a_value || !value.is_empty()).then(|| Layer::Value {
                    origin: format!("environment variable {}", o.var),
                    key: o.key.to_owned(),
                    value: value.clone(),
                })
            })
            .collect()
    }

    /// A command-line flag setting `key`.
    pub fn flag(flag: &str, key: &str, value: impl Into<String>) -> Layer {
        Layer::Value {
            origin: flag.to_owned(),
            key: key.to_owned(),
            value: value.into(),
        }
    }

    /// The layer as a checked table, `None` for a missing optional file.
    fn table(&self) -> Result<Option<toml::Table>, ConfigError> {
        match self {
            Layer::File(path) | Layer::OptionalFile(path) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::NotFound
                            && matches!(self, Layer::OptionalFile(_)) =>
                    {
                        return Ok(None)
                    }
                    Err(source) => {
                        return Err(ConfigError::Read {
                            path: path.clone(),
                            source,
                        })
                    }
                };
                parse_text(&path.display().to_string(), &text).map(Some)
            }
            Layer::Text { origin, text } => parse_text(origin, text).map(Some),
            Layer::Value { origin, key, value } => {
                let mut table = toml::Table::new();
                let mut parts: Vec<&str> = key.split('.').collect();
                let last = parts.pop().unwrap_or_default();
                let mut t = &mut table;
                for part in parts {
                    t = t
                        .entry(part)
                        .or_insert_with(|| toml::Value::Table(Default::default()))
                        .as_table_mut()
                        .expect("a table just inserted");
                }
                t.insert(last.to_owned(), toml::Value::String(value.clone()));
                let cfg = Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                    ConfigError::Parse {
                        origin: origin.clone(),
                        line: None,
                        message: format!("{key} = {value:?}: {}", e.message().trim()),
                    }
                })?;
                cfg.validate(origin)?;
                Ok(Some(table))
            }
        }
    }
}

/// The layers both front ends use, up to the environment: the vendor defaults, then the
/// file named by `explicit` (the CLI's `--config`) or by `BULKHEAD_CONFIG` in `env` (must
/// exist) or else [`DEFAULT_CONFIG_PATH`] (optional), then the environment variables.
pub fn standard_layers(explicit: Option<&Path>, env: &HashMap<String, String>) -> Vec<Layer> {
    let named = explicit.map(Path::to_path_buf).or_else(|| {
        env.get(CONFIG_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let mut layers = vec![Layer::OptionalFile(VENDOR_DEFAULTS_PATH.into())];
    layers.push(match named {
        Some(p) => Layer::File(p),
        None => Layer::OptionalFile(DEFAULT_CONFIG_PATH.into()),
    });
    layers.extend(Layer::environment(env));
    layers
}

pub(super) fn load(layers: &[Layer]) -> Result<Config, ConfigError> {
    let mut merged = toml::Table::new();
    for layer in layers {
        if let Some(table) = layer.table()? {
            merge(&mut merged, table);
        }
    }
    // Every layer was checked alone and every check is of one key, so the merge is valid.
    let cfg = Config::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Parse {
        origin: "the merged configuration".into(),
        line: None,
        message: e.message().trim().to_owned(),
    })?;
    cfg.validate("the merged configuration")?;
    Ok(cfg)
}

/// Parses and checks one TOML text; errors name `origin`, the line, the section and key.
fn parse_text(origin: &str, text: &str) -> Result<toml::Table, ConfigError> {
    let cfg: Config = toml::from_str(text).map_err(|e| parse_error(origin, text, &e))?;
    cfg.validate(origin)?;
    toml::from_str(text).map_err(|e| parse_error(origin, text, &e))
}

fn parse_error(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let Some(start) = e.span().map(|s| s.start.min(text.len())) else {
        return ConfigError::Parse {
            origin: origin.to_owned(),
            line: None,
            message,
        };
    };
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    // The key: the current line's text before `=`, inside the last `[section]` above it.
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default().trim();
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = match line.split_once('=') {
        _ if line.starts_with('[') => None,
        Some((k, _)) => Some(k.trim().trim_matches('"').to_owned()),
        None => None,
    };
    let name = match (section, key) {
        (Some(s), Some(k)) => format!("{s}.{k}: "),
        (None, Some(k)) => format!("{k}: "),
        _ => String::new(),
    };
    ConfigError::Parse {
        origin: origin.to_owned(),
        line: Some(line_no),
        message: format!("{name}{message}"),
    }
}

/// Merges `top` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
