//! What a jail holds, prepared before `fork` (everything the child needs is allocated
//! here: the child may only make raw system calls): the jail root's mount point, the
//! read-only binds of the VMM binary, kernel and initramfs, the device nodes, the
//! namespace and cgroup descriptors, the uid and gid.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::JailError;

/// Where the jail puts the VMM binary, the kernel and the initramfs.
pub const JAIL_VMM: &str = "/bulkhead-vmm";
pub const JAIL_KERNEL: &str = "/kernel";
pub const JAIL_INITRD: &str = "/initrd";

/// A file bound read-only into the jail.
#[derive(Debug)]
pub struct JailBind {
    pub source: CString,
    /// Relative to the jail root (`kernel`).
    pub target: CString,
    /// Whether it may be executed (the VMM binary only).
    pub exec: bool,
}

/// A character device node in the jail, owned by the jail's uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailDevice {
    /// Relative to the jail root, NUL-terminated.
    pub path: &'static [u8],
    pub major: u32,
    pub minor: u32,
}

/// `/dev/kvm`.
pub const KVM: JailDevice = JailDevice {
    path: b"dev/kvm\0",
    major: 10,
    minor: 232,
};
/// `/dev/vhost-net`.
pub const VHOST_NET: JailDevice = JailDevice {
    path: b"dev/vhost-net\0",
    major: 10,
    minor: 238,
};

/// Everything the child needs to enter the jail.
#[derive(Debug)]
pub struct JailPlan {
    /// An empty directory the jail's tmpfs is mounted on (in the child's mount namespace
    /// only: the host sees it empty).
    pub root: CString,
    pub binds: Vec<JailBind>,
    pub devices: Vec<JailDevice>,
    /// The pod's network namespace; `None`: a new, empty one.
    pub netns: Option<OwnedFd>,
    /// The sandbox cgroups' `cgroup.procs`, open for writing.
    pub cgroup_procs: Vec<OwnedFd>,
    pub uid: u32,
    pub gid: u32,
}

/// What goes into a jail.
#[derive(Debug, Clone)]
pub struct JailContents<'a> {
    pub root: &'a Path,
    pub vmm: &'a Path,
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub vhost_net: bool,
    pub netns: Option<&'a Path>,
}

impl JailPlan {
    /// Checks the VMM is static and opens the namespace; `cgroup_procs` comes from the
    /// sandbox cgroup.
    pub fn new(
        contents: &JailContents<'_>,
        uid: u32,
        gid: u32,
        cgroup_procs: Vec<OwnedFd>,
    ) -> Result<Self, JailError> {
        check_static(contents.vmm)?;
        let mut binds = vec![
            bind(contents.vmm, JAIL_VMM, true)?,
            bind(contents.kernel, JAIL_KERNEL, false)?,
        ];
        if let Some(initrd) = contents.initrd {
            binds.push(bind(initrd, JAIL_INITRD, false)?);
        }
        let mut devices = vec![KVM];
        if contents.vhost_net {
            devices.push(VHOST_NET);
        }
        let netns = match contents.netns {
            Some(path) => Some(
                std::fs::File::open(path)
                    .map_err(|source| JailError::Netns {
                        path: path.to_path_buf(),
                        source,
                    })?
                    .into(),
            ),
            None => None,
        };
        Ok(JailPlan {
            root: cstring(contents.root)?,
            binds,
            devices,
            netns,
            cgroup_procs,
            uid,
            gid,
        })
    }
}

fn bind(source: &Path, target: &str, exec: bool) -> Result<JailBind, JailError> {
    // Resolve now: the child binds what the host path names at this moment.
    let source = std::fs::canonicalize(source).map_err(|e| JailError::Read {
        path: source.to_path_buf(),
        source: e,
    })?;
    Ok(JailBind {
        source: cstring(&source)?,
        target: cstring(Path::new(target.trim_start_matches('/')))?,
        exec,
    })
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Nul(path.to_path_buf()))
}

/// Fails unless `path` is an ELF executable without a program interpreter (a static or
/// static-pie binary): the jail holds no libraries.
pub fn check_static(path: &Path) -> Result<(), JailError> {
    let read_err = |source| JailError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    match has_interpreter(&head) {
        Some(false) => Ok(()),
        _ => Err(JailError::NotStatic(PathBuf::from(path))),
    }
}

/// Whether an ELF64 little-endian image has a `PT_INTERP` header; `None` if `head` is not
/// one (or its program headers are beyond `head`).
fn has_interpreter(head: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if head.get(..4)? != b"\x7fELF" || *head.get(4)? != 2 || *head.get(5)? != 1 {
        return None;
    }
    let bytes = |o: usize, n: usize| head.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes(o, 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes(o, 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes(o, 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize < 4 {
        return None;
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(at)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_refused_with_advice() {
        // This test binary is dynamically linked (a glibc host build).
        let me = std::env::current_exe().unwrap();
        let err = check_static(&me).unwrap_err();
        assert!(err.to_string().contains("build-static.sh"), "{err}");
        assert!(matches!(
            check_static(Path::new("/nonexistent")),
            Err(JailError::Read { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(matches!(
            check_static(&script),
            Err(JailError::NotStatic(_))
        ));
    }

    #[test]
    fn program_headers_are_read_within_bounds() {
        let mut elf = vec![0u8; 0x40 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(has_interpreter(&elf), Some(false));
        elf[0x40 + 56..0x40 + 60].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(has_interpreter(&elf), Some(true));
        // Headers past the end, huge counts, offsets that overflow: not an answer.
        elf[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        elf[0x40 + 56..0x40 + 60].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(has_interpreter(&elf), None);
        elf[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(has_interpreter(&elf), None);
        assert_eq!(has_interpreter(b"\x7fELF"), None);
    }
}
