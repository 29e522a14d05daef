//! Thin, symlink-safe `*at` wrappers used by the unpacker. Every function
//! takes a directory fd and a single path component; nothing here follows a
//! symlink in the final component, so a walk built from them never leaves
//! the directory it started in.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Path component as a C string (a component never contains NUL or '/').
pub fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Opens a directory by path (the unpack target; trusted).
pub fn open_dir_path(p: &Path) -> io::Result<OwnedFd> {
    let c = cname(p.as_os_str().as_bytes())?;
    // SAFETY: valid C string; we take ownership of the returned fd.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens child directory `name` of `dir` without following a symlink.
/// Fails with ENOTDIR or ELOOP when `name` is not a real directory.
pub fn open_child_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid dirfd and C string; we own the result.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates and opens a new regular file (fails if anything exists there).
pub fn create_file(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<std::fs::File> {
    // SAFETY: as above.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

pub fn mkdir(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid dirfd and C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn symlink(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid pointers and dirfd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn hardlink(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
) -> io::Result<()> {
    // SAFETY: valid dirfds and names; flags 0 never follows a symlink target.
    cvt(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub fn mknod(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: valid dirfd and name.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, dev) })
        .map(drop)
}

/// lstat of `name` in `dir`; `None` when it does not exist.
pub fn lstat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is a valid out-pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: fstatat succeeded and filled st.
    Ok(Some(unsafe { st.assume_init() }))
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Owner of `name` (not following symlinks).
pub fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid dirfd and name.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Mode of `name`, which the caller just created and is not a symlink.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid dirfd and name.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })
        .map(drop)
}

pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fd is owned by the caller.
    cvt(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: fd is owned by the caller.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(drop)
}

fn timespecs(mtime: u64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    [t, t]
}

pub fn futimes(fd: RawFd, mtime: u64) -> io::Result<()> {
    let ts = timespecs(mtime);
    // SAFETY: ts points to two timespecs.
    cvt(unsafe { libc::futimens(fd, ts.as_ptr()) }).map(drop)
}

pub fn utimes_at(dir: BorrowedFd<'_>, name: &CStr, mtime: u64) -> io::Result<()> {
    let ts = timespecs(mtime);
    // SAFETY: ts points to two timespecs; NOFOLLOW sets a symlink's own time.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn fsetxattr(fd: RawFd, key: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid pointers and lengths.
    cvt(unsafe { libc::fsetxattr(fd, key.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
        .map(drop)
}

pub fn syncfs(fd: RawFd) -> io::Result<()> {
    // SAFETY: fd is valid.
    cvt(unsafe { libc::syncfs(fd) }).map(drop)
}

/// Names of the entries of directory `dir` (without `.` and `..`).
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // SAFETY: dup of a valid fd; fdopendir takes ownership of the dup.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: dup is a valid directory fd.
    let dp = unsafe { libc::fdopendir(dup) };
    if dp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own dup.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // SAFETY: rewind so a reused fd lists from the start.
    unsafe { libc::rewinddir(dp) };
    let mut out = Vec::new();
    loop {
        // SAFETY: dp is a valid DIR*.
        let ent = unsafe { libc::readdir(dp) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated inside the dirent.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push(name.to_owned());
        }
    }
    // SAFETY: closes dp and the dup fd.
    unsafe { libc::closedir(dp) };
    Ok(out)
}

/// Removes `name` from `dir`, recursively if it is a directory. Never
/// follows symlinks. Missing is fine.
pub fn remove_all(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let child = open_child_dir(dir, name)?;
        for n in list(child.as_fd_ref())? {
            remove_all(child.as_fd_ref(), &n)?;
        }
        // SAFETY: valid dirfd and name.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })?;
    } else {
        // SAFETY: valid dirfd and name.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
    }
    Ok(())
}

/// Shorthand for borrowing an `OwnedFd`.
pub trait AsFdRef {
    fn as_fd_ref(&self) -> BorrowedFd<'_>;
}

impl AsFdRef for OwnedFd {
    fn as_fd_ref(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.as_fd()
    }
}

/// Converts raw bytes to an `OsStr` for messages and paths.
pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}
