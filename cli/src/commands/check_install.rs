//! The checks of `bulkhead check` for an installed runtime (the release tarball's
//! `install.sh`): every file the install manifest lists is there and of this version,
//! containerd's configuration (with its imports) registers the shim, and the files the
//! jailed VMM opens after dropping to its own uid are readable by any user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bulkhead_sandbox::config::discover::INSTALL_DATA_DIR;

use super::check::{check, Check, Outcome};

/// The install manifest (`install.sh` writes it, `uninstall.sh` reads it).
pub const MANIFEST: &str = "/opt/bulkhead/share/install-manifest";
/// The installed release's `<version> (commit <commit>)`.
const VERSION_FILE: &str = "/opt/bulkhead/share/VERSION";
/// containerd's configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// containerd's CRI plugin.
const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";
/// The runtime type the drop-in registers.
const RUNTIME_TYPE: &str = "io.containerd.bulkhead.v2";

/// Every file of the manifest present, and the release the same as this binary.
pub fn installation() -> Check {
    let c = check("installation", false, false);
    let Ok(manifest) = std::fs::read_to_string(MANIFEST) else {
        return c(
            Outcome::Ok,
            format!("no release installed ({MANIFEST} missing): running from a build"),
            None,
        );
    };
    let missing: Vec<&str> = manifest
        .lines()
        .filter(|l| !l.is_empty() && !l.ends_with('/'))
        .filter(|l| std::fs::symlink_metadata(l).is_err())
        .collect();
    let installed = std::fs::read_to_string(VERSION_FILE).unwrap_or_default();
    let installed = installed.trim();
    if !missing.is_empty() {
        return c(
            Outcome::Fail,
            format!("release {installed}: missing {}", missing.join(", ")),
            Some("reinstall: ./install.sh from the release tarball".into()),
        );
    }
    if installed != bulkhead_version::LONG {
        return c(
            Outcome::Warn,
            format!(
                "release {installed} in {INSTALL_DATA_DIR}, but this bulkhead is {}",
                bulkhead_version::LONG
            ),
            Some("use the installed /usr/local/bin/bulkhead, or reinstall".into()),
        );
    }
    c(
        Outcome::Ok,
        format!("release {installed}, every file present"),
        None,
    )
}

/// containerd's config (and the files it imports) registers `io.containerd.bulkhead.v2`
/// and does not pass the CRI's own annotations through.
pub fn containerd(config: &Path) -> Check {
    let c = check("containerd", false, false);
    let files = match config_files(config) {
        Ok(f) => f,
        Err(e) => {
            return c(
                Outcome::Warn,
                e,
                Some(format!(
                    "install the drop-in (install.sh) and import it from {}",
                    config.display()
                )),
            )
        }
    };
    let mut handlers = Vec::new();
    let mut leaky = Vec::new();
    for (path, table) in &files {
        let runtimes = table
            .get("plugins")
            .and_then(|p| p.get(CRI_PLUGIN))
            .and_then(|p| p.get("containerd"))
            .and_then(|p| p.get("runtimes"))
            .and_then(|r| r.as_table());
        for (name, rt) in runtimes.into_iter().flatten() {
            if rt.get("runtime_type").and_then(|t| t.as_str()) != Some(RUNTIME_TYPE) {
                continue;
            }
            handlers.push(format!("{name} ({})", path.display()));
            let patterns = rt.get("pod_annotations").and_then(|a| a.as_array());
            if patterns
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .any(|p| p.starts_with("io.kubernetes.cri") || p == "*")
            {
                leaky.push(name.clone());
            }
        }
    }
    if handlers.is_empty() {
        return c(
            Outcome::Warn,
            format!(
                "no CRI runtime handler with runtime_type = \"{RUNTIME_TYPE}\" in {} or its imports",
                config.display()
            ),
            Some(format!(
                "add imports = [\"/etc/containerd/conf.d/*.toml\"] to {} and restart containerd",
                config.display()
            )),
        );
    }
    let lost = keys_an_import_drops(&files);
    if !lost.is_empty() {
        return c(
            Outcome::Warn,
            format!(
                "handlers: {}; but containerd 1.x replaces the CRI plugin's section of {} with the imported one, dropping {}",
                handlers.join(", "),
                config.display(),
                lost.join(", ")
            ),
            Some(format!(
                "copy the runtimes.bulkhead table into {} instead of importing the drop-in",
                config.display()
            )),
        );
    }
    if !leaky.is_empty() {
        return c(
            Outcome::Warn,
            format!(
                "handler {} passes io.kubernetes.cri.* pod annotations: a pod could set the sizes containerd sets",
                leaky.join(", ")
            ),
            Some("pod_annotations = [\"io.bulkhead.*\"] (the shipped drop-in)".into()),
        );
    }
    c(
        Outcome::Ok,
        format!("handlers: {}", handlers.join(", ")),
        None,
    )
}

/// The CRI plugin's keys set in the main config (the first file) that the last imported
/// file with a CRI section does not set: containerd 1.x replaces a plugin's whole section
/// with an imported one.
fn keys_an_import_drops(files: &[(PathBuf, toml::Table)]) -> Vec<String> {
    let cri = |t: &toml::Table| {
        t.get("plugins")
            .and_then(|p| p.get(CRI_PLUGIN))
            .and_then(|c| c.as_table())
            .cloned()
    };
    let Some((main, imports)) = files.split_first() else {
        return Vec::new();
    };
    let (Some(main), Some(imported)) = (cri(&main.1), imports.iter().rev().find_map(|f| cri(&f.1)))
    else {
        return Vec::new();
    };
    let imported = flatten(&imported, "");
    flatten(&main, "")
        .into_iter()
        .filter(|k| !imported.contains(k))
        .collect()
}

/// The dotted keys of a table's leaves.
fn flatten(table: &toml::Table, prefix: &str) -> Vec<String> {
    table
        .iter()
        .flat_map(|(k, v)| {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v.as_table() {
                Some(t) => flatten(t, &key),
                None => vec![key],
            }
        })
        .collect()
}

/// The config and the files of its `imports` (globs of the form `dir/*.toml`).
fn config_files(config: &Path) -> Result<Vec<(PathBuf, toml::Table)>, String> {
    let parse = |p: &Path| -> Result<toml::Table, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        text.parse::<toml::Table>()
            .map_err(|e| format!("{}: {}", p.display(), e.message()))
    };
    let main = parse(config)?;
    let mut files = Vec::new();
    let imports: Vec<String> = main
        .get("imports")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect();
    files.push((config.to_path_buf(), main));
    for pattern in imports {
        for path in expand(&pattern) {
            files.push((path.clone(), parse(&path)?));
        }
    }
    Ok(files)
}

/// A path, or `dir/*suffix` expanded (sorted, as containerd does).
fn expand(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(suffix) = name.strip_prefix('*') else {
        return vec![path.to_path_buf()];
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix) && p.is_file())
        .collect();
    found.sort();
    found
}

/// The VMM binary, kernel and initramfs, opened by the VMM after it dropped to its own
/// unprivileged uid: readable (the VMM also executable) by others, every directory above
/// them searchable.
pub fn jail_access(jail: bool, files: &[(&str, Option<PathBuf>, bool)]) -> Check {
    let c = check("jail-access", jail, false);
    if !jail {
        return c(
            Outcome::Ok,
            "the jail is off ([jail] enabled = false)".into(),
            None,
        );
    }
    let mut problems = Vec::new();
    for (what, path, exec) in files {
        let Some(path) = path else { continue };
        if let Err(e) = others_can_use(path, *exec) {
            problems.push(format!("{what}: {e}"));
        }
    }
    if problems.is_empty() {
        c(
            Outcome::Ok,
            "the VMM, kernel and initramfs are readable by the jailed uid".into(),
            None,
        )
    } else {
        c(
            Outcome::Fail,
            problems.join("; "),
            Some(
                "chmod o+r (o+rx for the VMM) the files and o+x the directories above them".into(),
            ),
        )
    }
}

fn others_can_use(path: &Path, exec: bool) -> Result<(), String> {
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let want = if exec { 0o005 } else { 0o004 };
    if mode(path)? & want != want {
        return Err(format!(
            "{} is not {} by others",
            path.display(),
            if exec {
                "readable and executable"
            } else {
                "readable"
            }
        ));
    }
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if mode(dir)? & 0o001 == 0 {
            return Err(format!("{} is not searchable by others", dir.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_config_with_the_drop_in_imported() {
        let tmp = tempfile::tempdir().unwrap();
        let confd = tmp.path().join("conf.d");
        std::fs::create_dir(&confd).unwrap();
        let main = tmp.path().join("config.toml");
        std::fs::write(
            &main,
            format!("version = 2\nimports = [\"{}/*.toml\"]\n", confd.display()),
        )
        .unwrap();
        let c = containerd(&main);
        assert_eq!(c.outcome, Outcome::Warn, "{}", c.detail);
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../release/containerd-bulkhead.toml"
            ),
            confd.join("bulkhead.toml"),
        )
        .unwrap();
        let c = containerd(&main);
        assert_eq!(c.outcome, Outcome::Ok, "{}", c.detail);
        assert!(c.detail.contains("bulkhead ("), "{}", c.detail);
        // A CRI option of the main file that the import would drop is named.
        std::fs::write(
            &main,
            format!(
                "version = 2\nimports = [\"{}/*.toml\"]\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"pause:3.9\"\n",
                confd.display()
            ),
        )
        .unwrap();
        let c = containerd(&main);
        assert_eq!(c.outcome, Outcome::Warn, "{}", c.detail);
        assert!(c.detail.contains("dropping sandbox_image"), "{}", c.detail);
        std::fs::write(
            &main,
            format!("version = 2\nimports = [\"{}/*.toml\"]\n", confd.display()),
        )
        .unwrap();
        std::fs::write(
            confd.join("leaky.toml"),
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.leaky]\n\
             runtime_type = \"io.containerd.bulkhead.v2\"\n\
             pod_annotations = [\"io.kubernetes.cri.*\"]\n",
        )
        .unwrap();
        let c = containerd(&main);
        assert_eq!(c.outcome, Outcome::Warn, "{}", c.detail);
        assert!(c.detail.contains("leaky"), "{}", c.detail);
    }

    #[test]
    fn files_the_jailed_vmm_cannot_read_fail() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let kernel = tmp.path().join("vmlinux");
        std::fs::write(&kernel, "k").unwrap();
        std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o600)).unwrap();
        let files = [("guest kernel", Some(kernel.clone()), false)];
        let c = jail_access(true, &files);
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(
            c.detail.contains("is not readable by others"),
            "{}",
            c.detail
        );
        std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(jail_access(true, &files).outcome, Outcome::Ok);
        assert_eq!(jail_access(false, &files).outcome, Outcome::Ok);
    }
}
