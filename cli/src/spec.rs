//! The OCI runtime spec of a `bulkhead run`: a default Linux spec as `runc spec` writes it
//! (pid/ipc/uts/mount namespaces, standard mounts, default capabilities, masked and
//! read-only paths, rlimits), the process from the image config with the user's overrides,
//! hostname, read-only root, resource limits and volume mounts; then the security settings
//! of [`crate::security`] (Docker's default hardening, or privileged). The same spec serves both
//! isolation modes; only the paths differ (host paths, or guest paths below the shared
//! directory).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bulkhead_images::process::{ProcessOverrides, UserDb};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, Root, Spec,
};
use serde::{Deserialize, Serialize};

/// A `-v HOST:CTR[:ro]` volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub container: PathBuf,
    pub readonly: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, ctr, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => return Err(format!("{s:?}: expected HOST:CONTAINER[:ro|rw]")),
        };
        let readonly = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(format!("{s:?}: unknown mode {m:?} (ro or rw)")),
        };
        let host = PathBuf::from(host);
        let container = PathBuf::from(ctr);
        if !host.is_absolute() || !container.is_absolute() {
            return Err(format!("{s:?}: both paths must be absolute"));
        }
        if container
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("{s:?}: the container path must not contain '..'"));
        }
        Ok(Volume {
            host,
            container,
            readonly,
        })
    }
}

/// The container's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpecNetwork {
    /// The runtime's own: the host's, or in a VM the guest's.
    #[default]
    Shared,
    /// Join this namespace (made by CNI).
    Join(PathBuf),
}

/// Everything the spec depends on besides the image.
#[derive(Debug, Clone, Default)]
pub struct SpecInput {
    pub overrides: ProcessOverrides,
    pub hostname: String,
    pub readonly_root: bool,
    /// CPU limit in millicores.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub network: SpecNetwork,
    pub cgroups_path: Option<PathBuf>,
    /// Volumes with their source already mapped to the path the runtime sees.
    pub volumes: Vec<Volume>,
    /// Capabilities, seccomp, masked paths, namespaces: hardened or privileged.
    pub security: crate::security::SecurityOptions,
    /// The device nodes a privileged container gets (container mode: the host's).
    pub privileged_devices: Vec<oci_spec::runtime::LinuxDevice>,
}

/// The most of an image's `/etc/passwd` or `/etc/group` that is read.
const USER_DB_MAX: u64 = 1 << 20;

/// Reads `/etc/passwd` and `/etc/group` of a root filesystem for user names, without
/// following symlinks out of it.
pub fn user_db(rootfs: &Path) -> UserDb {
    let read = |name: &str| -> String {
        let etc = rootfs.join("etc");
        let file = etc.join(name);
        let plain = |p: &Path| {
            p.symlink_metadata()
                .map(|m| !m.file_type().is_symlink())
                .unwrap_or(false)
        };
        if plain(&etc) && plain(&file) {
            // The image's file: at most USER_DB_MAX bytes of it, opened without following
            // a symlink swapped in after the check.
            use std::io::Read;
            use std::os::unix::fs::OpenOptionsExt;
            let mut text = String::new();
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&file);
            match opened {
                Ok(f) if (&f).take(USER_DB_MAX).read_to_string(&mut text).is_ok() => text,
                _ => String::new(),
            }
        } else {
            String::new()
        }
    };
    UserDb {
        passwd: read("passwd"),
        group: read("group"),
    }
}

/// Builds the spec. `root` is the root filesystem path as the runtime sees it.
pub fn build(
    image: &ImageConfiguration,
    input: &SpecInput,
    users: &UserDb,
    root: &Path,
) -> anyhow::Result<Spec> {
    let image_process = bulkhead_images::process::runtime_process(image, &input.overrides, users)
        .context("building the container's process")?;
    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(image_process.args().clone());
    let mut env = image_process.env().clone().unwrap_or_default();
    if input.overrides.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", input.hostname));
    }
    process.set_env(Some(env));
    process.set_cwd(image_process.cwd().clone());
    process.set_user(image_process.user().clone());
    process.set_terminal(Some(input.overrides.terminal));
    if !process.cwd().is_absolute() {
        bail!("working directory {:?} is not absolute", process.cwd());
    }
    spec.set_process(Some(process));

    let mut r = Root::default();
    r.set_path(root.to_path_buf());
    r.set_readonly(Some(input.readonly_root));
    spec.set_root(Some(r));
    spec.set_hostname(Some(input.hostname.clone()));

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for v in &input.volumes {
        let mode = if v.readonly { "ro" } else { "rw" };
        mounts.push(
            MountBuilder::default()
                .destination(v.container.clone())
                .typ("bind")
                .source(v.host.clone())
                .options(vec!["rbind".to_string(), mode.to_string()])
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));

    let kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    let mut namespaces = kinds
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()?;
    match &input.network {
        SpecNetwork::Shared => {}
        SpecNetwork::Join(path) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.clone())
                .build()?,
        ),
    }
    let default_linux = spec.linux().clone().unwrap_or_default();
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = input.memory_bytes {
        let limit = i64::try_from(bytes).context("memory limit too large")?;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if let Some(millis) = input.cpu_millis {
        let period: u64 = 100_000;
        let quota = i64::try_from(millis * period / 1000).context("CPU limit too large")?;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
        .build()?;
    linux.set_cgroups_path(input.cgroups_path.clone());
    spec.set_linux(Some(linux));
    crate::security::apply(&mut spec, &input.security, input.privileged_devices.clone())?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv"}
        }))
        .unwrap()
    }

    fn users() -> UserDb {
        UserDb {
            passwd: "root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n".into(),
            group: "root:x:0:\n".into(),
        }
    }

    #[test]
    fn volumes_parse() {
        let v: Volume = "/a:/b:ro".parse().unwrap();
        assert_eq!(v.host, PathBuf::from("/a"));
        assert!(v.readonly);
        assert!(!"/a:/b".parse::<Volume>().unwrap().readonly);
        assert!("a:/b".parse::<Volume>().is_err());
        assert!("/a:/b:rx".parse::<Volume>().is_err());
        assert!("/a".parse::<Volume>().is_err());
        assert!("/a:/../etc".parse::<Volume>().is_err());
    }

    #[test]
    fn spec_from_image_and_overrides() {
        let input = SpecInput {
            overrides: ProcessOverrides {
                cmd: Some(vec!["echo".into(), "hi".into()]),
                env: vec!["A=2".into()],
                user: Some("nobody".into()),
                terminal: true,
                ..Default::default()
            },
            hostname: "box".into(),
            readonly_root: true,
            cpu_millis: Some(1500),
            memory_bytes: Some(64 << 20),
            cgroups_path: Some("/bulkhead/x".into()),
            volumes: vec!["/h:/c:ro".parse().unwrap()],
            ..Default::default()
        };
        let spec = build(&image(), &input, &users(), Path::new("/r")).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["echo", "hi"]);
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"A=2".to_string()) && !env.contains(&"A=1".to_string()));
        assert!(env.contains(&"TERM=xterm".to_string()));
        assert_eq!(p.user().uid(), 65534);
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.terminal(), Some(true));
        assert!(p.capabilities().is_some() && p.rlimits().is_some());
        let root = spec.root().as_ref().unwrap();
        assert_eq!(
            (root.path().as_path(), root.readonly()),
            (Path::new("/r"), Some(true))
        );
        assert_eq!(spec.hostname().as_deref(), Some("box"));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Pid));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(150_000));
        assert!(!linux.masked_paths().as_ref().unwrap().is_empty());
        let vol = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/c"))
            .unwrap();
        assert_eq!(vol.source().as_deref(), Some(Path::new("/h")));
        assert!(vol.options().as_ref().unwrap().contains(&"ro".to_string()));
        // The JSON the agent parses.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"][0], "echo");
    }

    #[test]
    fn network_namespaces() {
        let ns_of = |network: SpecNetwork| {
            let input = SpecInput {
                hostname: "h".into(),
                network,
                ..Default::default()
            };
            let spec = build(&image(), &input, &users(), Path::new("/r")).unwrap();
            let linux = spec.linux().clone().unwrap();
            linux
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
        };
        assert_eq!(ns_of(SpecNetwork::Shared), None);
        let joined = ns_of(SpecNetwork::Join("/run/bulkhead/netns/x".into())).unwrap();
        assert_eq!(
            joined.path().as_deref(),
            Some(Path::new("/run/bulkhead/netns/x"))
        );
    }

    #[test]
    fn unknown_user_and_relative_workdir_are_errors() {
        let mut input = SpecInput {
            hostname: "h".into(),
            ..Default::default()
        };
        input.overrides.user = Some("nosuchuser".into());
        assert!(build(&image(), &input, &users(), Path::new("/r")).is_err());
        input.overrides.user = None;
        input.overrides.workdir = Some("rel".into());
        assert!(build(&image(), &input, &users(), Path::new("/r")).is_err());
    }

    #[test]
    fn user_db_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
        std::fs::write(dir.path().join("etc/group"), "g:x:5:\n").unwrap();
        let db = user_db(dir.path());
        assert_eq!(db.passwd, "");
        assert_eq!(db.group, "g:x:5:\n");
    }
}
