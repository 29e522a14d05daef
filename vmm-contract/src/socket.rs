//! [`HostSocket`]: how the VMM gets the host side of a unix socket device (the vsock listener,
//! a virtiofsd vhost-user connection): a path it binds or connects to itself, or a descriptor
//! it inherits already set up (`fd=N`), which is how a jailed VMM, with no path to reach,
//! gets every socket.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The host side of a unix socket: a path, or an inherited descriptor (`fd=N`, 3 or more).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostSocket {
    /// A socket path (a path that itself starts with `fd=` is written `./fd=...`).
    Path(PathBuf),
    /// A descriptor open in the VMM process at this number (passed without `FD_CLOEXEC`).
    Fd(i32),
}

/// A bad `PATH|fd=N` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostSocketError {
    #[error("the socket path is empty")]
    Empty,
    #[error("{0:?} is not a descriptor number of 3 or more (fd=N)")]
    Fd(String),
}

impl HostSocket {
    /// The descriptor, for an inherited one.
    pub fn fd(&self) -> Option<i32> {
        match self {
            HostSocket::Fd(fd) => Some(*fd),
            HostSocket::Path(_) => None,
        }
    }

    /// The path, for a path.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            HostSocket::Path(p) => Some(p),
            HostSocket::Fd(_) => None,
        }
    }

    /// Check the value: a path is not empty, a descriptor is 3 or more (0-2 are stdio).
    pub fn validate(&self) -> Result<(), HostSocketError> {
        match self {
            HostSocket::Path(p) if p.as_os_str().is_empty() => Err(HostSocketError::Empty),
            HostSocket::Fd(fd) if *fd < 3 => Err(HostSocketError::Fd(fd.to_string())),
            _ => Ok(()),
        }
    }

    /// The flag value: the path (any bytes), or `fd=N`.
    pub fn to_arg(&self) -> OsString {
        match self {
            HostSocket::Path(p) => p.clone().into_os_string(),
            HostSocket::Fd(fd) => format!("fd={fd}").into(),
        }
    }
}

impl fmt::Display for HostSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostSocket::Path(p) => write!(f, "{}", p.display()),
            HostSocket::Fd(fd) => write!(f, "fd={fd}"),
        }
    }
}

/// Parses `fd=N` as a descriptor, anything else as a path.
impl FromStr for HostSocket {
    type Err = HostSocketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let socket = match s.strip_prefix("fd=") {
            Some(n) => match n.parse::<i32>() {
                Ok(fd) if n.bytes().all(|b| b.is_ascii_digit()) => HostSocket::Fd(fd),
                _ => return Err(HostSocketError::Fd(n.to_owned())),
            },
            None => HostSocket::Path(PathBuf::from(s)),
        };
        socket.validate()?;
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_descriptors() {
        assert_eq!("fd=7".parse(), Ok(HostSocket::Fd(7)));
        assert_eq!(
            "/run/b/v.sock".parse(),
            Ok(HostSocket::Path("/run/b/v.sock".into()))
        );
        assert_eq!("./fd=7".parse(), Ok(HostSocket::Path("./fd=7".into())));
        assert_eq!("".parse::<HostSocket>(), Err(HostSocketError::Empty));
        for bad in ["fd=", "fd=2", "fd=-4", "fd=+4", "fd=x", "fd=99999999999"] {
            assert!(bad.parse::<HostSocket>().is_err(), "{bad}");
        }
        for s in [HostSocket::Fd(3), HostSocket::Path("/a b/c".into())] {
            assert_eq!(s.to_arg().into_string().unwrap().parse(), Ok(s.clone()));
        }
        assert_eq!(HostSocket::Fd(9).fd(), Some(9));
        assert_eq!(HostSocket::Fd(9).path(), None);
    }
}
