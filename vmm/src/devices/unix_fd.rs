//! Inherited unix sockets (`--vsock fd=N`, `--fs TAG=fd=N`): checking that a descriptor is
//! the kind of socket its flag says (an `AF_UNIX` stream socket, listening or not) before a
//! device takes it over, with an error that says what it is instead.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// What an inherited descriptor must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A listening unix stream socket (the vsock listener).
    Listening,
    /// A unix stream socket that is not listening (a connection, e.g. to virtiofsd).
    Connected,
}

/// Why an inherited descriptor cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UnixFdError {
    #[error("fd {fd} is not open")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not a socket")]
    NotSocket {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not a unix stream socket (domain {domain}, type {type_})")]
    NotUnixStream { fd: RawFd, domain: i32, type_: i32 },
    #[error("fd {fd} is a unix stream socket that is not listening (listen(2) it first)")]
    NotListening { fd: RawFd },
    #[error("fd {fd} is a listening socket, a connected one is needed")]
    Listening { fd: RawFd },
}

fn sockopt(fd: RawFd, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, an int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Check that `fd` is open and an `AF_UNIX` `SOCK_STREAM` socket as `expect` says
/// (`SO_DOMAIN`, `SO_TYPE`, `SO_ACCEPTCONN`).
pub fn check(fd: RawFd, expect: Expect) -> Result<(), UnixFdError> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let source = io::Error::last_os_error();
        return Err(UnixFdError::NotOpen { fd, source });
    }
    let domain =
        sockopt(fd, libc::SO_DOMAIN).map_err(|source| UnixFdError::NotSocket { fd, source })?;
    let type_ =
        sockopt(fd, libc::SO_TYPE).map_err(|source| UnixFdError::NotSocket { fd, source })?;
    if domain != libc::AF_UNIX || type_ != libc::SOCK_STREAM {
        return Err(UnixFdError::NotUnixStream { fd, domain, type_ });
    }
    let listening = sockopt(fd, libc::SO_ACCEPTCONN)
        .map_err(|source| UnixFdError::NotSocket { fd, source })?
        != 0;
    match (expect, listening) {
        (Expect::Listening, false) => Err(UnixFdError::NotListening { fd }),
        (Expect::Connected, true) => Err(UnixFdError::Listening { fd }),
        _ => Ok(()),
    }
}

/// Check `fd` ([`check`]) and take ownership of it, with `FD_CLOEXEC` set (the VMM runs
/// nothing, but nothing it inherits on purpose should outlive it in a child either).
///
/// # Safety
///
/// `fd` must have been inherited for this one use (named by one flag only, kept open by
/// `close_inherited_fds`) and be owned by nothing else in the process: the returned
/// [`OwnedFd`] closes it.
pub unsafe fn take(fd: RawFd, expect: Expect) -> Result<OwnedFd, UnixFdError> {
    check(fd, expect)?;
    // SAFETY: F_SETFD on an open descriptor; no pointers.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the caller guarantees the descriptor is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    #[test]
    fn tells_listeners_connections_and_other_things_apart() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/bulkhead-ufd-").unwrap();
        let listener = UnixListener::bind(dir.as_path().join("l")).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let dgram = UnixDatagram::unbound().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();

        check(listener.as_raw_fd(), Expect::Listening).unwrap();
        check(a.as_raw_fd(), Expect::Connected).unwrap();
        let err = |fd, e| check(fd, e).unwrap_err();
        assert!(matches!(
            err(a.as_raw_fd(), Expect::Listening),
            UnixFdError::NotListening { .. }
        ));
        assert!(matches!(
            err(listener.as_raw_fd(), Expect::Connected),
            UnixFdError::Listening { .. }
        ));
        assert!(matches!(
            err(dgram.as_raw_fd(), Expect::Connected),
            UnixFdError::NotUnixStream { .. }
        ));
        assert!(matches!(
            err(tcp.as_raw_fd(), Expect::Listening),
            UnixFdError::NotUnixStream { .. }
        ));
        assert!(matches!(
            err(file.as_raw_fd(), Expect::Listening),
            UnixFdError::NotSocket { .. }
        ));
        let msg = err(file.as_raw_fd(), Expect::Listening).to_string();
        assert!(msg.contains(&format!("fd {}", file.as_raw_fd())), "{msg}");
        assert!(matches!(
            err(100_000, Expect::Listening),
            UnixFdError::NotOpen { .. }
        ));
    }
}
