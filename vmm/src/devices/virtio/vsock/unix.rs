//! The host's unix sockets: the listening socket host clients connect to (bound at a path,
//! or inherited already listening) and non-blocking connects to `<uds_path>_<port>` for
//! guest-initiated connections.
//!
//! The socket file is not removed when the VMM ends: whoever made the directory removes it
//! (the launcher removes its run directory), and a path-taking `unlink` at the end would need
//! a place on the main thread's seccomp list. A stale file left by a VMM run standalone is
//! replaced by the next [`HostListener::bind`] at that path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::VsockError;
use crate::devices::unix_fd::{self, Expect};

/// The listening socket host clients connect to.
#[derive(Debug)]
pub struct HostListener {
    listener: UnixListener,
    /// Where it was bound, when the VMM bound it.
    path: Option<PathBuf>,
}

impl HostListener {
    /// Take over an inherited listening unix stream socket (`--vsock fd=N`), made
    /// non-blocking.
    ///
    /// # Safety
    ///
    /// As [`unix_fd::take`]: `fd` is inherited for this listener only and owned by nothing
    /// else in the process.
    pub unsafe fn from_fd(fd: RawFd) -> Result<Self, VsockError> {
        // SAFETY: the caller's guarantee.
        let owned: OwnedFd =
            unsafe { unix_fd::take(fd, Expect::Listening) }.map_err(VsockError::Inherited)?;
        let listener = UnixListener::from(owned);
        listener
            .set_nonblocking(true)
            .map_err(|e| VsockError::Listener(fd, e))?;
        Ok(HostListener {
            listener,
            path: None,
        })
    }

    /// Bind at `path`. An existing socket file nobody listens on (connecting to it is
    /// refused) is replaced; one in use, or any other kind of file, is an error naming the
    /// path.
    pub fn bind(path: &Path) -> Result<Self, VsockError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_socket() {
                    return Err(VsockError::PathNotSocket(path.to_path_buf()));
                }
                match UnixStream::connect(path) {
                    Ok(_) => return Err(VsockError::PathInUse(path.to_path_buf())),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(path)
                            .map_err(|e| VsockError::RemoveStale(path.to_path_buf(), e))?;
                    }
                    Err(e) => return Err(VsockError::Bind(path.to_path_buf(), e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(VsockError::Bind(path.to_path_buf(), e)),
        }
        let listener =
            UnixListener::bind(path).map_err(|e| VsockError::Bind(path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| VsockError::Bind(path.to_path_buf(), e))?;
        Ok(HostListener {
            listener,
            path: Some(path.to_path_buf()),
        })
    }

    /// The socket path, when the VMM bound it.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Accept one pending client, non-blocking.
    pub fn accept(&self) -> io::Result<UnixStream> {
        let (stream, _) = self.listener.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

impl AsRawFd for HostListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

/// The socket a guest connection to host port `port` goes to: `<uds_path>_<port>`.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connect to a unix stream socket without ever blocking: a listener with a full backlog gives
/// `WouldBlock` instead of stalling the event loop.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;

    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };

    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Keep room for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Write to a stream socket without raising SIGPIPE when the peer is gone (the error comes
/// back as `BrokenPipe` either way; this keeps the VMM alive even if SIGPIPE is not ignored).
pub fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes and the fd is owned by `stream`.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // n >= 0 and at most buf.len().
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::test_utils::TempDir;

    #[test]
    fn bind_replaces_stale_socket_and_refuses_live_one() {
        let dir = TempDir::new();
        let path = dir.path().join("v.sock");
        // A stale socket file: bound, then the listener closed without removing the file.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l = HostListener::bind(&path).unwrap();
        // Now in use.
        assert!(matches!(
            HostListener::bind(&path),
            Err(VsockError::PathInUse(_))
        ));
        drop(l);
        assert!(
            path.exists(),
            "the socket file stays: the launcher removes its directory"
        );
        // ... and the next VMM at that path replaces it.
        let l = HostListener::bind(&path).unwrap();
        assert_eq!(l.path(), Some(path.as_path()));
        drop(l);
        std::fs::remove_file(&path).unwrap();

        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            HostListener::bind(&path),
            Err(VsockError::PathNotSocket(_))
        ));
        assert!(path.exists(), "a regular file is never removed");
    }

    #[test]
    fn an_inherited_listener_is_checked_and_taken_over() {
        use std::os::fd::IntoRawFd;
        let dir = TempDir::new();
        let path = dir.path().join("v.sock");
        let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
        // SAFETY: `fd` was just released by its listener; nothing else owns it.
        let l = unsafe { HostListener::from_fd(fd) }.unwrap();
        assert_eq!(l.path(), None);
        let _client = UnixStream::connect(&path).unwrap();
        assert!(l.accept().is_ok());
        drop(l);

        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.into_raw_fd();
        // SAFETY: as above; on error the descriptor is not taken and closed below.
        let err = crate::error_chain(&unsafe { HostListener::from_fd(fd) }.unwrap_err());
        assert!(err.contains(&format!("fd {fd}")), "{err}");
        // SAFETY: still ours after the refusal.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    #[test]
    fn connect_nonblocking_reaches_listener_and_reports_absence() {
        let dir = TempDir::new();
        let base = dir.path().join("v.sock");
        let target = port_path(&base, 52);
        assert!(target.to_string_lossy().ends_with("v.sock_52"));
        assert!(connect_nonblocking(&target).is_err());
        let l = UnixListener::bind(&target).unwrap();
        let _c = connect_nonblocking(&target).unwrap();
        assert!(l.accept().is_ok());
    }
}
