//! A container's filesystems on the host, inside the pod's shared directory so virtiofsd
//! exports them to the guest:
//!
//! ```text
//! <shared>/<container-id>/rootfs      containerd's snapshot mounts (overlay), or a bind of
//!                                     the bundle's rootfs when containerd passed none
//! <shared>/<container-id>/mounts/<i>  bind mount i of the OCI spec (volumes, /etc/hosts,
//!                                     /etc/resolv.conf, ...), read-only when the spec says ro
//! ```
//!
//! [`plan`] is pure: it decides the host mounts and rewrites the spec (root.path and the
//! bind sources become guest paths). [`apply`] performs the plan and [`remove`] undoes it
//! (detach every mount below the container directory, then delete it without crossing
//! into another filesystem).

use std::path::{Path, PathBuf};

use bulkhead_sandbox::mount::{create_mount_point, restrict, MountPointKind};
use bulkhead_sandbox::sandbox::guest_path;
use serde_json::Value;
use thiserror::Error;

/// One snapshot mount from containerd's Create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// What a bind source is; decides whether its mount point is a directory or a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Dir,
    File,
    /// Devices, sockets, FIFOs: cannot travel over virtio-fs.
    Other,
}

/// One mount the shim performs on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// `None` for bind mounts.
    pub fstype: Option<String>,
    pub source: String,
    pub target: PathBuf,
    /// containerd-style options (flags such as `rbind`, `ro`, plus filesystem data).
    pub options: Vec<String>,
    /// Whether the mount point is a file (bind of a file).
    pub file_target: bool,
}

/// The host side of a container's filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFs {
    /// `<shared>/<container-id>`: everything of this container; removed on delete.
    pub dir: PathBuf,
    /// The root filesystem on the host.
    pub rootfs: PathBuf,
    /// The root filesystem as the guest sees it.
    pub guest_rootfs: PathBuf,
    /// In order: the rootfs mounts first, then the binds.
    pub mounts: Vec<HostMount>,
}

#[derive(Debug, Error)]
pub enum MountError {
    #[error("the spec has no root.path and containerd passed no rootfs mounts")]
    NoRoot,
    #[error("mount {index} ({destination}): {reason}")]
    BadMount {
        index: usize,
        destination: String,
        reason: String,
    },
    #[error("{path} is outside the shared directory")]
    NotShared { path: PathBuf },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare a mount point")]
    MountPoint(#[source] bulkhead_sandbox::mount::MountError),
    #[error("cannot mount {source_path} on {target}: {reason}")]
    Mount {
        source_path: String,
        target: PathBuf,
        reason: String,
    },
    #[error("cannot remove {0}")]
    Remove(PathBuf, #[source] bulkhead_sandbox::run_dir::RunDirError),
}

/// Added to every filesystem the shim mounts for a guest (binds get them by a remount).
const HOST_ONLY_FLAGS: [&str; 2] = ["nosuid", "nodev"];

/// Whether an OCI mount entry is a bind mount.
fn is_bind(mount: &Value) -> bool {
    let typ = mount.get("type").and_then(Value::as_str).unwrap_or("");
    typ == "bind"
        || options_of(mount)
            .iter()
            .any(|o| o == "bind" || o == "rbind")
}

fn options_of(mount: &Value) -> Vec<String> {
    mount
        .get("options")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the last of `ro`/`rw` in the options is `ro`.
pub fn is_read_only(options: &[String]) -> bool {
    options
        .iter()
        .rev()
        .find(|o| *o == "ro" || *o == "rw")
        .is_some_and(|o| o == "ro")
}

/// Plans the filesystems of container `id` below `shared_dir` and rewrites `spec` to guest
/// paths. `bundle` resolves a relative root.path or bind source; `stat` tells what a bind
/// source is (`None`: it does not exist).
pub fn plan(
    id: &str,
    bundle: &Path,
    rootfs: &[RootfsMount],
    spec: &mut Value,
    shared_dir: &Path,
    stat: impl Fn(&Path) -> Option<SourceKind>,
) -> Result<ContainerFs, MountError> {
    let dir = shared_dir.join(id);
    let root_host = dir.join("rootfs");
    let guest = |p: &Path| {
        guest_path(shared_dir, p).ok_or_else(|| MountError::NotShared {
            path: p.to_path_buf(),
        })
    };
    let guest_rootfs = guest(&root_host)?;
    let mut mounts = Vec::new();

    if rootfs.is_empty() {
        // containerd prepared the bundle's rootfs itself (or the caller did): share it.
        let path = spec
            .pointer("/root/path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or(MountError::NoRoot)?;
        mounts.push(HostMount {
            fstype: None,
            source: bundle.join(path).to_string_lossy().into_owned(),
            target: root_host.clone(),
            options: vec!["rbind".into()],
            file_target: false,
        });
    } else {
        for m in rootfs {
            let mut options = m.options.clone();
            let fstype = Some(m.fstype.clone()).filter(|t| !t.is_empty());
            if fstype.is_some() {
                // The guest's content never means setuid or a device on the host.
                options.extend(HOST_ONLY_FLAGS.iter().map(|o| o.to_string()));
            }
            mounts.push(HostMount {
                fstype,
                source: m.source.clone(),
                target: root_host.clone(),
                options,
                file_target: false,
            });
        }
    }
    let guest_root = guest_rootfs.to_string_lossy().into_owned();
    match spec.get_mut("root").and_then(Value::as_object_mut) {
        Some(root) => {
            root.insert("path".into(), Value::String(guest_root));
        }
        None => {
            if let Some(obj) = spec.as_object_mut() {
                obj.insert("root".into(), serde_json::json!({ "path": guest_root }));
            }
        }
    }

    let entries = spec
        .get_mut("mounts")
        .and_then(Value::as_array_mut)
        .map(|a| a.iter_mut().collect::<Vec<_>>())
        .unwrap_or_default();
    for (index, entry) in entries.into_iter().enumerate() {
        if !is_bind(entry) {
            continue;
        }
        let destination = entry
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let bad = |reason: &str| MountError::BadMount {
            index,
            destination: destination.clone(),
            reason: reason.to_owned(),
        };
        let source = entry
            .get("source")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("a bind mount needs a source"))?;
        let source = bundle.join(source);
        let file_target = match stat(&source) {
            Some(SourceKind::Dir) => false,
            Some(SourceKind::File) => true,
            Some(SourceKind::Other) => {
                return Err(bad(&format!(
                    "{} is not a file or directory; only those can be shared with the VM",
                    source.display()
                )))
            }
            None => return Err(bad(&format!("{} does not exist", source.display()))),
        };
        let options = options_of(entry);
        let mut host_options = vec![if options.iter().any(|o| o == "rbind") {
            "rbind".to_owned()
        } else {
            "bind".to_owned()
        }];
        if is_read_only(&options) {
            host_options.push("ro".into());
        }
        let target = dir.join("mounts").join(index.to_string());
        let guest_source = guest(&target)?;
        mounts.push(HostMount {
            fstype: None,
            source: source.to_string_lossy().into_owned(),
            target,
            options: host_options,
            file_target,
        });
        if let Some(obj) = entry.as_object_mut() {
            obj.insert(
                "source".into(),
                Value::String(guest_source.to_string_lossy().into_owned()),
            );
        }
    }

    Ok(ContainerFs {
        dir,
        rootfs: root_host,
        guest_rootfs,
        mounts,
    })
}

/// What a path is on this host (following symlinks).
pub fn stat_host(path: &Path) -> Option<SourceKind> {
    let meta = std::fs::metadata(path).ok()?;
    Some(if meta.is_dir() {
        SourceKind::Dir
    } else if meta.is_file() {
        SourceKind::File
    } else {
        SourceKind::Other
    })
}

/// Performs the plan; on failure removes what it did. Blocking (mount(2)): call it from
/// `spawn_blocking`.
pub fn apply(fs: &ContainerFs) -> Result<(), MountError> {
    let result = apply_all(fs);
    if result.is_err() {
        if let Err(e) = remove(&fs.dir) {
            log::warn!("after a failed mount: {e}");
        }
    }
    result
}

fn apply_all(fs: &ContainerFs) -> Result<(), MountError> {
    let create = |path: &Path| {
        std::fs::create_dir_all(path).map_err(|source| MountError::Create {
            path: path.to_path_buf(),
            source,
        })
    };
    create(&fs.dir)?;
    create(&fs.rootfs)?;
    for m in &fs.mounts {
        let kind = if m.file_target {
            MountPointKind::File
        } else {
            MountPointKind::Dir
        };
        create_mount_point(&m.target, kind).map_err(MountError::MountPoint)?;
        containerd_shim::mount::mount_rootfs(
            m.fstype.as_deref(),
            Some(m.source.as_str()),
            &m.options,
            &m.target,
        )
        .map_err(|e| MountError::Mount {
            source_path: m.source.clone(),
            target: m.target.clone(),
            reason: e.to_string(),
        })?;
        if m.fstype.is_none() {
            // A bind keeps its source's flags until remounted: make it nosuid,nodev too.
            restrict(&m.target, is_read_only(&m.options)).map_err(MountError::MountPoint)?;
        }
    }
    Ok(())
}

/// Detaches every mount below `dir` and deletes it (a missing `dir` is fine). Blocking.
pub fn remove(dir: &Path) -> Result<(), MountError> {
    bulkhead_sandbox::run_dir::remove_tree(dir).map_err(|e| MountError::Remove(dir.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHARED: &str = "/run/bulkhead/default/pod1/shared";

    fn stat_fake(path: &Path) -> Option<SourceKind> {
        match path.to_str()? {
            "/etc/hosts" | "/var/lib/k/resolv.conf" => Some(SourceKind::File),
            "/data" | "/bundle/vol" => Some(SourceKind::Dir),
            "/dev/fuse" => Some(SourceKind::Other),
            _ => None,
        }
    }

    fn overlay() -> Vec<RootfsMount> {
        vec![RootfsMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                "workdir=/snap/2/work".into(),
                "upperdir=/snap/2/fs".into(),
                "lowerdir=/snap/1/fs".into(),
            ],
        }]
    }

    #[test]
    fn snapshot_mounts_become_the_shared_rootfs_and_root_path_is_translated() {
        let mut spec = json!({"root": {"path": "rootfs", "readonly": false}, "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
        ]});
        let fs = plan(
            "c1",
            Path::new("/bundle"),
            &overlay(),
            &mut spec,
            Path::new(SHARED),
            stat_fake,
        )
        .unwrap();
        assert_eq!(fs.dir, Path::new(SHARED).join("c1"));
        assert_eq!(fs.rootfs, Path::new(SHARED).join("c1/rootfs"));
        assert_eq!(
            fs.guest_rootfs,
            PathBuf::from("/run/bulkhead/shared/c1/rootfs")
        );
        assert_eq!(fs.mounts.len(), 1);
        assert_eq!(fs.mounts[0].fstype.as_deref(), Some("overlay"));
        assert_eq!(fs.mounts[0].target, fs.rootfs);
        let mut want = overlay()[0].options.clone();
        want.extend(["nosuid".to_string(), "nodev".to_string()]);
        assert_eq!(fs.mounts[0].options, want);
        assert_eq!(spec["root"]["path"], "/run/bulkhead/shared/c1/rootfs");
        assert_eq!(spec["root"]["readonly"], false);
        // Non-bind mounts are the guest's business and stay untouched.
        assert_eq!(spec["mounts"][0]["source"], "proc");
    }

    #[test]
    fn without_snapshot_mounts_the_bundle_rootfs_is_bound() {
        let mut spec = json!({"root": {"path": "rootfs"}});
        let fs = plan(
            "c1",
            Path::new("/bundle"),
            &[],
            &mut spec,
            Path::new(SHARED),
            stat_fake,
        )
        .unwrap();
        assert_eq!(fs.mounts[0].source, "/bundle/rootfs");
        assert_eq!(fs.mounts[0].fstype, None);
        assert_eq!(fs.mounts[0].options, vec!["rbind".to_string()]);

        let mut spec = json!({"mounts": []});
        let err = plan(
            "c1",
            Path::new("/b"),
            &[],
            &mut spec,
            Path::new(SHARED),
            stat_fake,
        )
        .unwrap_err();
        assert!(matches!(err, MountError::NoRoot));
    }

    #[test]
    fn bind_mounts_are_shared_and_rewritten_keeping_read_only() {
        let mut spec = json!({"root": {"path": "rootfs"}, "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts",
             "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/etc/resolv.conf", "type": "bind",
             "source": "/var/lib/k/resolv.conf", "options": ["rbind", "ro"]},
            {"destination": "/data", "source": "/data", "options": ["bind", "ro", "rw"]},
            {"destination": "/vol", "type": "none", "source": "vol", "options": ["rbind", "ro"]},
        ]});
        let fs = plan(
            "web",
            Path::new("/bundle"),
            &overlay(),
            &mut spec,
            Path::new(SHARED),
            stat_fake,
        )
        .unwrap();
        let binds = &fs.mounts[1..];
        assert_eq!(binds.len(), 4);

        assert_eq!(binds[0].source, "/etc/hosts");
        assert_eq!(binds[0].target, Path::new(SHARED).join("web/mounts/1"));
        assert!(binds[0].file_target);
        assert_eq!(binds[0].options, vec!["rbind"]);
        assert_eq!(
            spec["mounts"][1]["source"],
            "/run/bulkhead/shared/web/mounts/1"
        );
        // The guest-side options are kept (the agent binds read-only too).
        assert_eq!(
            spec["mounts"][1]["options"],
            json!(["rbind", "rprivate", "rw"])
        );

        assert!(binds[1].file_target);
        assert_eq!(binds[1].options, vec!["rbind", "ro"]);
        assert_eq!(spec["mounts"][2]["options"], json!(["rbind", "ro"]));

        // The last of ro/rw wins; "bind" in the options makes it a bind without a type.
        assert!(!binds[2].file_target);
        assert_eq!(binds[2].options, vec!["bind"]);
        assert_eq!(
            spec["mounts"][3]["source"],
            "/run/bulkhead/shared/web/mounts/3"
        );

        // A relative source is relative to the bundle.
        assert_eq!(binds[3].source, "/bundle/vol");
        assert_eq!(binds[3].options, vec!["rbind", "ro"]);
    }

    #[test]
    fn unsharable_or_missing_bind_sources_are_refused_with_their_index() {
        for (source, want) in [
            ("/dev/fuse", "not a file or directory"),
            ("/nope", "does not exist"),
        ] {
            let mut spec = json!({"root": {"path": "rootfs"}, "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/x", "type": "bind", "source": source},
            ]});
            match plan(
                "c",
                Path::new("/b"),
                &[],
                &mut spec,
                Path::new(SHARED),
                stat_fake,
            ) {
                Err(MountError::BadMount {
                    index,
                    destination,
                    reason,
                }) => {
                    assert_eq!(index, 1);
                    assert_eq!(destination, "/x");
                    assert!(reason.contains(want), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn read_only_is_the_last_word() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_read_only(&o(&["rbind", "ro"])));
        assert!(!is_read_only(&o(&["ro", "rw"])));
        assert!(is_read_only(&o(&["rw", "nosuid", "ro"])));
        assert!(!is_read_only(&o(&["rbind"])));
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn apply_and_remove_real_bind_mounts_as_root() {
        use std::os::unix::ffi::OsStringExt;
        if !is_root() {
            bulkhead_test_skip::skip("needs root for mount(2)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
        std::fs::write(bundle.join("rootfs/etc/os-release"), "busybox\n").unwrap();
        std::fs::create_dir_all(tmp.path().join("vol")).unwrap();
        std::fs::write(tmp.path().join("vol/data"), "v1").unwrap();
        std::fs::write(tmp.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let mut spec = json!({"root": {"path": "rootfs"}, "mounts": [
            {"destination": "/vol", "type": "bind",
             "source": tmp.path().join("vol"), "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "type": "bind",
             "source": tmp.path().join("hosts"), "options": ["rbind", "rw"]},
        ]});
        let fs = plan("c1", &bundle, &[], &mut spec, &shared, stat_host).unwrap();
        apply(&fs).unwrap();
        let read = |p: &str| std::fs::read_to_string(fs.dir.join(p)).unwrap();
        assert_eq!(read("rootfs/etc/os-release"), "busybox\n");
        assert_eq!(read("mounts/0/data"), "v1");
        assert_eq!(read("mounts/1"), "127.0.0.1 localhost\n");
        // Read-only stays read-only on the host side already.
        let err = std::fs::write(fs.dir.join("mounts/0/data"), "changed").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        // Every host-side mount of container content is nosuid,nodev.
        for at in ["rootfs", "mounts/0", "mounts/1"] {
            let c = std::ffi::CString::new(fs.dir.join(at).into_os_string().into_vec()).unwrap();
            // SAFETY: statvfs fills a zeroed struct we own.
            let flags = unsafe {
                let mut st: libc::statvfs = std::mem::zeroed();
                assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
                st.f_flag
            };
            let want = libc::ST_NOSUID | libc::ST_NODEV;
            assert_eq!(flags & want, want, "{at}");
        }
        std::fs::write(fs.dir.join("mounts/1"), "rw\n").unwrap();

        remove(&fs.dir).unwrap();
        assert!(!fs.dir.exists());
        // The sources survive the removal.
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("vol/data")).unwrap(),
            "v1"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("hosts")).unwrap(),
            "rw\n"
        );
        assert!(bundle.join("rootfs/etc/os-release").exists());
    }
}
