//! What a container may do, for both isolation modes: Docker's default hardening, or
//! `--privileged`, with `--security-opt` and `--cap-add`/`--cap-drop` on top.
//!
//! Hardened (the default): Docker's default capability set ([`capabilities`]), the default
//! seccomp profile ([`seccomp`], data in `config/seccomp/default.json`), Docker's masked and
//! read-only `/proc` and `/sys` paths, `/sys` and the cgroup tree read-only, a cgroup
//! namespace of its own, and `no_new_privs` (Docker leaves that off unless asked; here it is
//! on, `--security-opt no-new-privileges=false` turns it off).
//!
//! Privileged: every capability, no seccomp filter, nothing masked or read-only, `/sys` and
//! the cgroup tree writable, the host's cgroup namespace, and in container mode every device
//! node of the host's `/dev` with access to all devices: the classic misconfiguration, here
//! so that `bulkhead compare` can show what it exposes. In a VM the guest's devices stay the
//! guest's.

pub mod capabilities;
pub mod seccomp;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCapabilitiesBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxNamespaceBuilder, LinuxNamespaceType, Spec,
};
use serde::{Deserialize, Serialize};

use capabilities::CapArg;

/// Docker's masked paths: an empty file or directory is mounted over each.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The seccomp filter a container runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompChoice {
    /// `config/seccomp/default.json`.
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile file in the Docker format: its path and contents (read when the container
    /// is created, so a later change of the file does not change a restart).
    Profile { path: PathBuf, json: String },
}

/// A container's security settings, as `run` was given them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityOptions {
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub seccomp: SeccompChoice,
    /// `None`: on, unless privileged.
    #[serde(default)]
    pub no_new_privileges: Option<bool>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
}

impl SecurityOptions {
    /// From the command line: `--privileged`, each `--security-opt`, `--cap-add`,
    /// `--cap-drop`. Profile files are read here.
    pub fn from_args(
        privileged: bool,
        security_opts: &[String],
        cap_add: &[String],
        cap_drop: &[String],
    ) -> Result<Self, String> {
        let mut options = SecurityOptions {
            privileged,
            ..Default::default()
        };
        for opt in security_opts {
            let (key, value) = match opt.split_once(['=', ':']) {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            match (key, value) {
                ("seccomp", Some("unconfined")) => options.seccomp = SeccompChoice::Unconfined,
                ("seccomp", Some("builtin" | "default")) => {
                    options.seccomp = SeccompChoice::Default
                }
                ("seccomp", Some(path)) => {
                    let json = std::fs::read_to_string(path)
                        .map_err(|e| format!("--security-opt {opt}: cannot read {path}: {e}"))?;
                    // Checked now, so a bad profile fails `run` instead of the start.
                    seccomp::to_runtime_seccomp(&json, &Default::default(), path)?;
                    options.seccomp = SeccompChoice::Profile {
                        path: PathBuf::from(path),
                        json,
                    };
                }
                ("no-new-privileges", None | Some("true")) => {
                    options.no_new_privileges = Some(true)
                }
                ("no-new-privileges", Some("false")) => options.no_new_privileges = Some(false),
                ("apparmor" | "label" | "systempaths" | "mask" | "unmask", _) => {
                    return Err(format!(
                        "--security-opt {opt}: not supported by Bulkhead (seccomp= and no-new-privileges are)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "--security-opt {opt}: expected seccomp=unconfined|PROFILE.json or no-new-privileges[=true|false]"
                    ))
                }
            }
        }
        for c in cap_add.iter().chain(cap_drop) {
            capabilities::parse(c).map_err(|e| format!("--cap-add/--cap-drop: {e}"))?;
        }
        options.cap_add = cap_add.to_vec();
        options.cap_drop = cap_drop.to_vec();
        Ok(options)
    }

    fn caps(list: &[String]) -> Vec<CapArg> {
        list.iter()
            .filter_map(|c| capabilities::parse(c).ok())
            .collect()
    }

    /// The capability names the container gets.
    pub fn effective_caps(&self) -> std::collections::BTreeSet<String> {
        capabilities::effective(
            self.privileged,
            &Self::caps(&self.cap_add),
            &Self::caps(&self.cap_drop),
        )
    }
}

/// Applies `options` to a spec built by [`crate::spec::build`]; `devices` are the device
/// nodes a privileged container gets (see [`host_devices`]).
pub fn apply(
    spec: &mut Spec,
    options: &SecurityOptions,
    devices: Vec<LinuxDevice>,
) -> anyhow::Result<()> {
    let caps = options.effective_caps();
    let oci_caps = capabilities::to_oci(&caps);
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(oci_caps.clone())
            .effective(oci_caps.clone())
            .permitted(oci_caps)
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()?,
    ));
    process.set_no_new_privileges(Some(
        options.no_new_privileges.unwrap_or(!options.privileged),
    ));
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let seccomp = match (&options.seccomp, options.privileged) {
        (SeccompChoice::Unconfined, _) | (SeccompChoice::Default, true) => None,
        (SeccompChoice::Default, false) => Some(
            seccomp::to_runtime_seccomp(
                seccomp::DEFAULT_PROFILE,
                &caps,
                "config/seccomp/default.json",
            )
            .map_err(anyhow::Error::msg)?,
        ),
        (SeccompChoice::Profile { path, json }, _) => Some(
            seccomp::to_runtime_seccomp(json, &caps, &path.to_string_lossy())
                .map_err(anyhow::Error::msg)?,
        ),
    };
    linux.set_seccomp(seccomp);
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if options.privileged {
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
        let mut resources = linux.resources().clone().unwrap_or_default();
        resources.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()?]));
        linux.set_resources(Some(resources));
        if !devices.is_empty() {
            linux.set_devices(Some(devices));
        }
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
    } else {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        linux.set_masked_paths(Some(owned(MASKED_PATHS)));
        linux.set_readonly_paths(Some(owned(READONLY_PATHS)));
        if !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup)
        {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Cgroup)
                    .build()?,
            );
        }
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));

    // /sys and the cgroup tree: read-only unless privileged.
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mut mounts {
        let dest = m.destination().to_string_lossy().into_owned();
        if dest == "/sys" || dest == "/sys/fs/cgroup" {
            let mut opts: Vec<String> = m
                .options()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o != "ro" && o != "rw")
                .collect();
            opts.push(if options.privileged { "rw" } else { "ro" }.into());
            m.set_options(Some(opts));
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The character and block device nodes directly in `dev` (the host's `/dev` for a
/// privileged container), as the runtime spec lists them. Symlinks and directories are
/// left out.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dev) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = meta.rdev();
        // The nodes every container gets anyway.
        let name = entry.file_name().to_string_lossy().into_owned();
        if [
            "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        let built = LinuxDeviceBuilder::default()
            .path(entry.path())
            .typ(typ)
            .major(libc::major(rdev) as i64)
            .minor(libc::minor(rdev) as i64)
            .file_mode(meta.mode() & 0o7777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        if let Ok(d) = built {
            out.push(d);
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::default()
    }

    #[test]
    fn hardened_by_default() {
        let mut s = spec();
        apply(&mut s, &SecurityOptions::default(), Vec::new()).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup));
        let sys = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
    }

    #[test]
    fn privileged_turns_it_all_off() {
        let mut s = spec();
        let opts = SecurityOptions::from_args(true, &[], &[], &[]).unwrap();
        let dev = tempfile::tempdir().unwrap();
        apply(&mut s, &opts, host_devices(dev.path())).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(
            p.capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .len(),
            capabilities::ALL.len()
        );
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().as_ref().unwrap().is_empty());
        assert!(!linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup));
    }

    #[test]
    fn security_opts_parse_and_refuse_by_name() {
        let o = SecurityOptions::from_args(
            false,
            &[
                "seccomp=unconfined".into(),
                "no-new-privileges=false".into(),
            ],
            &["NET_ADMIN".into()],
            &[],
        )
        .unwrap();
        assert_eq!(o.seccomp, SeccompChoice::Unconfined);
        assert_eq!(o.no_new_privileges, Some(false));
        assert!(o.effective_caps().contains("CAP_NET_ADMIN"));
        let e = SecurityOptions::from_args(false, &["apparmor=x".into()], &[], &[]).unwrap_err();
        assert!(e.contains("apparmor=x"), "{e}");
        let e = SecurityOptions::from_args(false, &["seccomp=/nonexistent.json".into()], &[], &[])
            .unwrap_err();
        assert!(e.contains("/nonexistent.json"), "{e}");
        let e = SecurityOptions::from_args(false, &[], &["SYS_WIZARD".into()], &[]).unwrap_err();
        assert!(e.contains("SYS_WIZARD"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["keyctl"],"action":"SCMP_ACT_ERRNO"}]}"#).unwrap();
        let o = SecurityOptions::from_args(
            false,
            &[format!("seccomp={}", f.path().display())],
            &[],
            &[],
        )
        .unwrap();
        let mut s = spec();
        apply(&mut s, &o, Vec::new()).unwrap();
        let sc = s.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert_eq!(sc.syscalls().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn host_device_nodes_are_listed() {
        let devs = host_devices(Path::new("/dev"));
        assert!(devs.iter().all(|d| d.path().starts_with("/dev")));
        assert!(!devs.iter().any(|d| d.path() == Path::new("/dev/null")));
    }
}
