//! The CLI's side of the configuration. The schema, its loader, the defaults and the
//! "auto" discovery are `bulkhead_sandbox::config`'s (the shim reads the same file the
//! same way); here: the global flags as the top layer, and where the CLI keeps things
//! below `run_root`. `config/bulkhead.toml` documents every key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use bulkhead_sandbox::config::{standard_layers, Config, Isolation, Layer, NetworkMode};

/// Loads the configuration: vendor defaults, the file (`config`, which is `--config` or
/// `BULKHEAD_CONFIG`, else `/etc/bulkhead/config.toml`), the environment `env`, then the
/// `flags` (the global command-line flags as layers).
pub fn load(
    config: Option<&Path>,
    env: &HashMap<String, String>,
    flags: Vec<Layer>,
) -> anyhow::Result<Config> {
    let mut layers = standard_layers(config, env);
    layers.extend(flags);
    Ok(Config::load(&layers)?)
}

/// The CLI's layout of the run root.
pub trait RunLayout {
    /// Where containers keep their state.
    fn containers_dir(&self) -> PathBuf;
    /// Root of the VM run directories.
    fn sandboxes_dir(&self) -> PathBuf;
}

/// The bounds `run` unpacks an image's layers within (`[cli]` `max_layer_bytes`,
/// `max_image_bytes`, `max_layer_entries`).
pub fn image_limits(cfg: &Config) -> bulkhead_images::Limits {
    bulkhead_images::Limits {
        max_layer_bytes: cfg.cli.max_layer_bytes,
        max_image_bytes: cfg.cli.max_image_bytes,
        max_entries: cfg.cli.max_layer_entries,
    }
}

impl RunLayout for Config {
    fn containers_dir(&self) -> PathBuf {
        self.run_root.join("containers")
    }

    fn sandboxes_dir(&self) -> PathBuf {
        self.run_root.join("sandboxes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_store_is_the_image_crates() {
        assert_eq!(
            Config::default().store_root,
            Path::new(bulkhead_images::store::DEFAULT_ROOT)
        );
    }

    #[test]
    fn the_default_image_limits_are_the_image_crates() {
        assert_eq!(
            image_limits(&Config::default()),
            bulkhead_images::Limits::default()
        );
        let cfg = Config::parse("[cli]\nmax_layer_bytes = 4096\n", "test").unwrap();
        assert_eq!(image_limits(&cfg).max_layer_bytes, 4096);
    }

    #[test]
    fn flags_win_over_the_environment_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "run_root = \"/file\"\nlog_level = \"info\"\n").unwrap();
        let env: HashMap<String, String> =
            [("BULKHEAD_RUN_ROOT", "/env"), ("BULKHEAD_LOG", "debug")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let cfg = load(Some(&file), &env, vec![]).unwrap();
        assert_eq!(
            (cfg.run_root.as_path(), cfg.log_level),
            (Path::new("/env"), log::LevelFilter::Debug)
        );
        let flags = vec![Layer::flag("--run-root", "run_root", "/flag")];
        let cfg = load(Some(&file), &env, flags).unwrap();
        assert_eq!(cfg.run_root, Path::new("/flag"));
        assert_eq!(cfg.containers_dir(), Path::new("/flag/containers"));
        assert_eq!(cfg.sandboxes_dir(), Path::new("/flag/sandboxes"));
        let err = load(Some(&dir.path().join("missing.toml")), &env, vec![]).unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"), "{err:#}");
    }
}
