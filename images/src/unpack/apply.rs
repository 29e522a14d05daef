//! Applies one layer tar stream to a directory, safely: every path is
//! resolved component by component from the target's fd with O_NOFOLLOW, so
//! no entry can write, link or delete outside the target. `..` components,
//! writes through symlinks and hard links to missing or outside paths are
//! refused with an error naming the entry. Absolute paths are taken as
//! relative to the target (as runc and umoci do).
//!
//! Device nodes are refused (error naming the entry and the layer), except the overlay
//! whiteout (char 0:0), which is applied as a whiteout; FIFOs are kept. Set-id bits are
//! kept: the container needs them (`su`, `ping`, `sudo` inside the guest or container).
//! They give nothing on the host because no host user but root can reach an unpacked
//! layer (the store root is 0700, see [`crate::store`]) and every host-side mount of a
//! rootfs is `nosuid,nodev`.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use tar::EntryType;

use super::fsops::{self, cname, AsFdRef};
use super::Limits;
use crate::error::{Error, Result};

/// How whiteouts are represented in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Layer in its own directory for an overlayfs lowerdir: whiteouts become
    /// 0/0 char devices, opaque markers `trusted.overlay.opaque=y`.
    Overlay,
    /// Layers applied on top of each other in one directory: whiteouts delete.
    Flatten,
}

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
const COPY_BUF: usize = 256 * 1024;

/// Counters shared across the layers of one image.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    /// File data written.
    pub bytes: u64,
    /// Decompressed tar bytes read (what the byte limits bound).
    pub stream_bytes: u64,
}

pub(crate) struct Applier<'a> {
    root: Rc<OwnedFd>,
    mode: Mode,
    limits: &'a Limits,
    layer: String,
    written: HashSet<Vec<u8>>,
    dirs: Vec<(Vec<Vec<u8>>, u64)>,
    /// Directories already opened (and checked) along the last walked path:
    /// `chain[i]` is the fd of the first `i + 1` components. A walk reuses
    /// the common prefix instead of re-resolving from the root.
    chain: Vec<(Vec<u8>, Rc<OwnedFd>)>,
    buf: Vec<u8>,
    layer_stats: Stats,
    image_stats: &'a mut Stats,
    privileged: bool,
}

/// A refused entry; [`Applier::apply`] fills in the layer.
fn hostile(entry: &[u8], reason: impl Into<String>) -> Error {
    Error::HostileEntry {
        layer: String::new(),
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason: reason.into(),
    }
}

fn entry_err(entry: &[u8], context: &'static str, source: io::Error) -> Error {
    Error::Entry {
        entry: String::from_utf8_lossy(entry).into_owned(),
        context,
        source,
    }
}

/// Splits a tar path into components: empty and `.` dropped, leading `/`
/// ignored, `..` refused.
pub(crate) fn components(path: &[u8]) -> std::result::Result<Vec<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains a '..' component"),
            c if c.contains(&0) => return Err("path contains a NUL byte"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

impl<'a> Applier<'a> {
    pub(crate) fn new(
        root: OwnedFd,
        mode: Mode,
        limits: &'a Limits,
        layer: String,
        image_stats: &'a mut Stats,
    ) -> Self {
        Applier {
            root: Rc::new(root),
            mode,
            limits,
            layer,
            written: HashSet::new(),
            dirs: Vec::new(),
            chain: Vec::new(),
            buf: vec![0u8; COPY_BUF],
            layer_stats: Stats::default(),
            image_stats,
            // SAFETY: geteuid never fails.
            privileged: unsafe { libc::geteuid() } == 0,
        }
    }

    fn limit(&self, what: String) -> Error {
        Error::LimitExceeded {
            layer: self.layer.clone(),
            what,
        }
    }

    /// Opens the directory `comps` under the root, creating missing
    /// directories when `create`. Symlinks and non-directories on the way
    /// are refused.
    fn walk(&mut self, entry: &[u8], comps: &[Vec<u8>], create: bool) -> Result<Rc<OwnedFd>> {
        let keep = self
            .chain
            .iter()
            .zip(comps)
            .take_while(|((name, _), c)| name == *c)
            .count();
        self.chain.truncate(keep);
        let mut cur = match self.chain.last() {
            Some((_, fd)) => fd.clone(),
            None => self.root.clone(),
        };
        for (i, c) in comps.iter().enumerate().skip(keep) {
            let name = cname(c).map_err(|e| entry_err(entry, "bad path", e))?;
            let next = match fsops::open_child_dir(cur.as_fd_ref(), &name) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    fsops::mkdir(cur.as_fd_ref(), &name, 0o755)
                        .map_err(|e| entry_err(entry, "create parent directory", e))?;
                    let fd = fsops::open_child_dir(cur.as_fd_ref(), &name)
                        .map_err(|e| entry_err(entry, "open parent directory", e))?;
                    let _ = fsops::fchmod(fd.as_raw_fd(), 0o755);
                    fd
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTDIR)
                        || e.raw_os_error() == Some(libc::ELOOP) =>
                {
                    return Err(hostile(
                        entry,
                        format!(
                            "path component {:?} is a symlink or not a directory",
                            String::from_utf8_lossy(&join(comps.get(..=i).unwrap_or(comps)))
                        ),
                    ));
                }
                Err(e) => return Err(entry_err(entry, "open parent directory", e)),
            };
            cur = Rc::new(next);
            self.chain.push((c.clone(), cur.clone()));
        }
        Ok(cur)
    }

    /// Removes `name` in `parent` (recursively); drops the walk cache if a
    /// directory may have gone.
    fn remove(&mut self, entry: &[u8], parent: &OwnedFd, name: &CString) -> Result<()> {
        self.chain.clear();
        fsops::remove_all(parent.as_fd_ref(), name).map_err(|e| entry_err(entry, "remove", e))
    }

    /// Runs `make`; if the name is taken, removes what is there (never
    /// following a symlink) and runs `make` once more.
    fn replacing<T>(
        &mut self,
        entry: &[u8],
        parent: &OwnedFd,
        name: &CString,
        mut make: impl FnMut() -> io::Result<T>,
    ) -> Result<io::Result<T>> {
        match make() {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove(entry, parent, name)?;
                Ok(make())
            }
            r => Ok(r),
        }
    }

    fn count_entry(&mut self) -> Result<()> {
        self.layer_stats.entries += 1;
        self.image_stats.entries += 1;
        if self.layer_stats.entries > self.limits.max_entries {
            return Err(self.limit(format!("more than {} entries", self.limits.max_entries)));
        }
        Ok(())
    }

    /// File data written (the byte limits bound the whole stream, in `guard`).
    fn count_bytes(&mut self, n: u64) {
        self.layer_stats.bytes += n;
        self.image_stats.bytes += n;
    }

    /// Applies every entry of `archive`, then fixes directory mtimes.
    pub(crate) fn apply<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<Stats> {
        let layer = self.layer.clone();
        let entries = archive.entries().map_err(|e| Error::Layer {
            layer: layer.clone(),
            source: e,
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::Layer {
                layer: layer.clone(),
                source: e,
            })?;
            self.count_entry()?;
            self.apply_entry(&mut entry).map_err(|e| match e {
                Error::HostileEntry {
                    layer: _,
                    entry,
                    reason,
                } => Error::HostileEntry {
                    layer: layer.clone(),
                    entry,
                    reason,
                },
                e => e,
            })?;
        }
        self.finish_dirs();
        Ok(self.layer_stats)
    }

    fn finish_dirs(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, mtime) in dirs.iter().rev() {
            let fd = if comps.is_empty() {
                Ok(self.root.clone())
            } else {
                self.walk(b"", comps, false)
            };
            if let Ok(fd) = fd {
                let _ = fsops::futimes(fd.as_raw_fd(), *mtime);
            }
        }
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let comps = components(&raw).map_err(|r| hostile(&raw, r))?;
        let hdr = entry.header();
        let mode = hdr.mode().map_err(|e| entry_err(&raw, "bad mode", e))? & 0o7777;
        let uid = hdr.uid().map_err(|e| entry_err(&raw, "bad uid", e))?;
        let gid = hdr.gid().map_err(|e| entry_err(&raw, "bad gid", e))?;
        let mtime = hdr.mtime().unwrap_or(0);
        let (uid, gid) = (
            u32::try_from(uid).map_err(|_| hostile(&raw, "uid out of range"))?,
            u32::try_from(gid).map_err(|_| hostile(&raw, "gid out of range"))?,
        );

        let Some((name, parent)) = comps.split_last() else {
            // The root directory itself ("./"): take its metadata.
            if kind == EntryType::Directory {
                let root = self.root.clone();
                self.set_owner_mode_fd(&raw, &root, uid, gid, mode)?;
                self.dirs.push((Vec::new(), mtime));
            }
            return Ok(());
        };

        if let Some(target) = name.strip_prefix(WH_PREFIX) {
            return self.whiteout(&raw, parent, name, target);
        }

        let pfd = self.walk(&raw, parent, true)?;
        let cname_ = cname(name).map_err(|e| entry_err(&raw, "bad path", e))?;
        let full = join(&comps);
        // Creation is tried first; only a name that exists costs an lstat.

        match kind {
            EntryType::Directory => {
                match fsops::mkdir(pfd.as_fd_ref(), &cname_, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        let st = fsops::lstat(pfd.as_fd_ref(), &cname_)
                            .map_err(|e| entry_err(&raw, "stat", e))?;
                        if !st.as_ref().is_some_and(fsops::is_dir) {
                            self.remove(&raw, &pfd, &cname_)?;
                            fsops::mkdir(pfd.as_fd_ref(), &cname_, 0o700)
                                .map_err(|e| entry_err(&raw, "mkdir", e))?;
                        }
                    }
                    Err(e) => return Err(entry_err(&raw, "mkdir", e)),
                }
                let dfd = fsops::open_child_dir(pfd.as_fd_ref(), &cname_)
                    .map_err(|e| entry_err(&raw, "open directory", e))?;
                self.set_owner_mode_fd(&raw, &dfd, uid, gid, mode)?;
                self.set_xattrs(&raw, entry, dfd.as_raw_fd())?;
                self.dirs.push((comps.clone(), mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if kind == EntryType::GNUSparse {
                    return Err(hostile(&raw, "sparse files are not supported"));
                }
                let mut f = self
                    .replacing(&raw, &pfd, &cname_, || {
                        fsops::create_file(pfd.as_fd_ref(), &cname_)
                    })?
                    .map_err(|e| entry_err(&raw, "create file", e))?;
                self.copy_data(&raw, entry, &mut f)?;
                self.set_owner_mode_fd_raw(&raw, f.as_raw_fd(), uid, gid, mode)?;
                self.set_xattrs(&raw, entry, f.as_raw_fd())?;
                fsops::futimes(f.as_raw_fd(), mtime)
                    .map_err(|e| entry_err(&raw, "set mtime", e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile(&raw, "symlink without a target"))?
                    .into_owned();
                let ctarget =
                    cname(&target).map_err(|e| entry_err(&raw, "bad symlink target", e))?;
                self.replacing(&raw, &pfd, &cname_, || {
                    fsops::symlink(&ctarget, pfd.as_fd_ref(), &cname_)
                })?
                .map_err(|e| entry_err(&raw, "symlink", e))?;
                self.chown_at(&raw, &pfd, &cname_, uid, gid)?;
                let _ = fsops::utimes_at(pfd.as_fd_ref(), &cname_, mtime);
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile(&raw, "hard link without a target"))?
                    .into_owned();
                let tcomps = components(&target)
                    .map_err(|r| hostile(&raw, format!("hard link target: {r}")))?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(hostile(&raw, "hard link to the root directory"));
                };
                let tpfd = self.walk(&raw, tparent, false).map_err(|_| {
                    hostile(
                        &raw,
                        format!(
                            "hard link target {:?} does not exist in the layer root",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                let ctname = cname(tname).map_err(|e| entry_err(&raw, "bad link target", e))?;
                let tst = fsops::lstat(tpfd.as_fd_ref(), &ctname)
                    .map_err(|e| entry_err(&raw, "stat link target", e))?
                    .ok_or_else(|| {
                        hostile(
                            &raw,
                            format!(
                                "hard link target {:?} does not exist in the layer root",
                                String::from_utf8_lossy(&target)
                            ),
                        )
                    })?;
                if fsops::is_dir(&tst) {
                    return Err(hostile(&raw, "hard link to a directory"));
                }
                let existing = fsops::lstat(pfd.as_fd_ref(), &cname_)
                    .map_err(|e| entry_err(&raw, "stat", e))?;
                if let Some(st) = existing {
                    if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino {
                        self.written.insert(full);
                        return Ok(());
                    }
                    self.remove(&raw, &pfd, &cname_)?;
                }
                fsops::hardlink(tpfd.as_fd_ref(), &ctname, pfd.as_fd_ref(), &cname_)
                    .map_err(|e| entry_err(&raw, "hard link", e))?;
            }
            EntryType::Char | EntryType::Block => {
                let dev = |v: io::Result<Option<u32>>| {
                    v.map(|d| d.unwrap_or(0))
                        .map_err(|e| entry_err(&raw, "bad device number", e))
                };
                let major = dev(entry.header().device_major())?;
                let minor = dev(entry.header().device_minor())?;
                if kind == EntryType::Char && major == 0 && minor == 0 {
                    // The overlay whiteout itself (layers made from an overlay upper
                    // directory): the same as a `.wh.` file.
                    return self.whiteout_target(&raw, parent, name);
                }
                return Err(hostile(
                    &raw,
                    format!(
                        "{} device {major}:{minor}: device nodes are refused (only the overlay whiteout, char 0:0, is allowed)",
                        if kind == EntryType::Char { "character" } else { "block" }
                    ),
                ));
            }
            EntryType::Fifo => {
                // A FIFO is not a device: harmless on the host (and in images, rarely).
                self.replacing(&raw, &pfd, &cname_, || {
                    fsops::mknod(pfd.as_fd_ref(), &cname_, libc::S_IFIFO | (mode & 0o777), 0)
                })?
                .map_err(|e| entry_err(&raw, "mkfifo", e))?;
                self.chown_at(&raw, &pfd, &cname_, uid, gid)?;
                fsops::chmod_at(pfd.as_fd_ref(), &cname_, mode & 0o777)
                    .map_err(|e| entry_err(&raw, "chmod", e))?;
                let _ = fsops::utimes_at(pfd.as_fd_ref(), &cname_, mtime);
            }
            other => {
                return Err(hostile(&raw, format!("unsupported entry type {other:?}")));
            }
        }
        self.written.insert(full);
        Ok(())
    }

    fn whiteout(
        &mut self,
        raw: &[u8],
        parent: &[Vec<u8>],
        name: &[u8],
        target: &[u8],
    ) -> Result<()> {
        if name == WH_OPAQUE {
            let pfd = match self.mode {
                Mode::Overlay => self.walk(raw, parent, true)?,
                Mode::Flatten => match self.walk(raw, parent, false) {
                    Ok(fd) => fd,
                    Err(Error::HostileEntry { .. }) | Err(Error::Entry { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                },
            };
            match self.mode {
                Mode::Overlay => {
                    let key = CString::new("trusted.overlay.opaque")
                        .map_err(|_| hostile(raw, "xattr"))?;
                    fsops::fsetxattr(pfd.as_raw_fd(), &key, b"y")
                        .map_err(|e| entry_err(raw, "set trusted.overlay.opaque", e))?;
                }
                Mode::Flatten => {
                    let children = fsops::list(pfd.as_fd_ref())
                        .map_err(|e| entry_err(raw, "list directory", e))?;
                    for child in children {
                        let mut p = parent.to_vec();
                        p.push(child.to_bytes().to_vec());
                        if !self.written.contains(&join(&p)) {
                            self.remove(raw, &pfd, &child)?;
                        }
                    }
                }
            }
            return Ok(());
        }
        self.whiteout_target(raw, parent, target)
    }

    /// Whites out `target` in `parent`: a 0/0 char device (overlay) or a removal
    /// (flatten).
    fn whiteout_target(&mut self, raw: &[u8], parent: &[Vec<u8>], target: &[u8]) -> Result<()> {
        if target.is_empty() || target == b"." || target == b".." || target.starts_with(WH_PREFIX) {
            return Err(hostile(raw, "malformed whiteout"));
        }
        let ctarget = cname(target).map_err(|e| entry_err(raw, "bad whiteout", e))?;
        let mut full = parent.to_vec();
        full.push(target.to_vec());
        let full = join(&full);
        match self.mode {
            Mode::Overlay => {
                let pfd = self.walk(raw, parent, true)?;
                if fsops::lstat(pfd.as_fd_ref(), &ctarget)
                    .map_err(|e| entry_err(raw, "stat", e))?
                    .is_some()
                {
                    self.remove(raw, &pfd, &ctarget)?;
                }
                match fsops::mknod(pfd.as_fd_ref(), &ctarget, libc::S_IFCHR, 0) {
                    Ok(()) => {}
                    Err(e) if !self.privileged && e.raw_os_error() == Some(libc::EPERM) => {
                        log::warn!(
                            "cannot create whiteout {:?}: not privileged",
                            fsops::os(raw)
                        );
                    }
                    Err(e) => return Err(entry_err(raw, "create whiteout", e)),
                }
                self.written.insert(full);
            }
            Mode::Flatten => {
                if self.written.contains(&full) {
                    return Ok(());
                }
                let pfd = match self.walk(raw, parent, false) {
                    Ok(fd) => fd,
                    Err(Error::HostileEntry { .. }) | Err(Error::Entry { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                };
                self.remove(raw, &pfd, &ctarget)?;
            }
        }
        Ok(())
    }

    fn copy_data<R: Read>(
        &mut self,
        raw: &[u8],
        src: &mut R,
        dst: &mut std::fs::File,
    ) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.copy_with(raw, src, dst, &mut buf);
        self.buf = buf;
        r
    }

    fn copy_with<R: Read>(
        &mut self,
        raw: &[u8],
        src: &mut R,
        dst: &mut std::fs::File,
        buf: &mut [u8],
    ) -> Result<()> {
        loop {
            let n = match src.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Layer {
                        layer: format!("{} (entry {:?})", self.layer, fsops::os(raw)),
                        source: e,
                    })
                }
            };
            self.count_bytes(n as u64);
            dst.write_all(buf.get(..n).unwrap_or_default())
                .map_err(|e| entry_err(raw, "write file", e))?;
        }
    }

    fn set_owner_mode_fd(
        &self,
        raw: &[u8],
        fd: &OwnedFd,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<()> {
        self.set_owner_mode_fd_raw(raw, fd.as_raw_fd(), uid, gid, mode)
    }

    fn set_owner_mode_fd_raw(
        &self,
        raw: &[u8],
        fd: i32,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<()> {
        if let Err(e) = fsops::fchown(fd, uid, gid) {
            if self.privileged {
                return Err(entry_err(raw, "chown", e));
            }
        }
        // chmod after chown: chown clears set-id bits.
        fsops::fchmod(fd, mode).map_err(|e| entry_err(raw, "chmod", e))
    }

    fn chown_at(
        &self,
        raw: &[u8],
        pfd: &OwnedFd,
        name: &CString,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        match fsops::chown_at(pfd.as_fd_ref(), name, uid, gid) {
            Err(e) if self.privileged => Err(entry_err(raw, "chown", e)),
            _ => Ok(()),
        }
    }

    /// Applies `SCHILY.xattr.*` records, where the filesystem allows. Overlay
    /// control attributes are never taken from a layer.
    fn set_xattrs<R: Read>(
        &self,
        raw: &[u8],
        entry: &mut tar::Entry<'_, R>,
        fd: i32,
    ) -> Result<()> {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with("trusted.overlay.") {
                log::warn!("ignoring {name} on {:?}", fsops::os(raw));
                continue;
            }
            let Ok(cname_) = CString::new(name) else {
                continue;
            };
            if let Err(e) = fsops::fsetxattr(fd, &cname_, ext.value_bytes()) {
                log::debug!("xattr {name} on {:?} not applied: {e}", fsops::os(raw));
            }
        }
        Ok(())
    }
}
