//! Network namespaces by path: opening one (`/var/run/netns/cni-…`, `/proc/<pid>/ns/net`),
//! running code inside it, and named namespaces of our own (`/run/bulkhead/netns/<name>`)
//! for the CLI.
//!
//! `setns(2)` changes the namespace of the calling thread only, so [`NetNs::run`] does it on
//! a fresh std thread that ends with the closure: no tokio worker and no thread of the
//! caller ever changes namespace. Netlink sockets belong to the namespace they were opened
//! in, so whatever the closure opens (rtnetlink connections, `/dev/net/tun`) works there and
//! keeps working from any thread afterwards.

use std::ffi::CString;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// `NSFS_MAGIC` from `<linux/magic.h>`: the filesystem of `/proc/*/ns/*` and their binds.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, Error)]
pub enum NetNsError {
    #[error("cannot open the network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a namespace file")]
    NotANamespace { path: PathBuf },
    #[error("cannot enter the network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a thread for the network namespace {path}")]
    Thread {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread working in the network namespace {path} panicked")]
    Panicked { path: PathBuf },
    #[error("invalid network namespace name {0:?}")]
    BadName(String),
    #[error("cannot create the network namespace {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the network namespace {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    fd: OwnedFd,
}

impl NetNs {
    /// Opens the namespace file at `path` (checked to be on nsfs).
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, NetNsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetNsError::Open {
            path: path.clone(),
            source,
        })?;
        // SAFETY: fstatfs fills a statfs struct we own from an fd we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
            let source = io::Error::last_os_error();
            return Err(NetNsError::Open { path, source });
        }
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
        if st.f_type as i64 != NSFS_MAGIC {
            return Err(NetNsError::NotANamespace { path });
        }
        Ok(NetNs {
            path,
            fd: file.into(),
        })
    }

    /// The path it was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread inside the namespace and returns its result. Blocks until
    /// the thread ends (call from `spawn_blocking` or a plain thread in async code).
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path.clone();
        let fd = self.fd.try_clone().map_err(|source| NetNsError::Open {
            path: path.clone(),
            source,
        })?;
        let thread_path = path.clone();
        let handle = std::thread::Builder::new()
            .name("bh-netns".into())
            .spawn(move || {
                // SAFETY: setns on an fd we own; it moves only this thread, which ends with
                // the closure.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let source = io::Error::last_os_error();
                    return Err(NetNsError::Enter {
                        path: thread_path,
                        source,
                    });
                }
                drop(fd);
                Ok(f())
            })
            .map_err(|source| NetNsError::Thread {
                path: path.clone(),
                source,
            })?;
        handle
            .join()
            .map_err(|_| NetNsError::Panicked { path: path.clone() })?
    }

    /// Like [`NetNs::run`] for async work (rtnetlink): `f`'s future runs to completion on a
    /// current-thread tokio runtime of the namespace's thread.
    pub fn run_async<T, F, Fut>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = self.path.clone();
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|source| NetNsError::Thread { path, source })?;
            Ok(rt.block_on(f()))
        })?
    }

    /// Creates a new, empty network namespace (only a loopback, down) kept alive by a bind
    /// mount on `dir/name`, as `ip netns add` does; `dir` is created if missing. Fails if
    /// `dir/name` exists. Blocking.
    pub fn create_named(dir: &Path, name: &str) -> Result<PathBuf, NetNsError> {
        let path = named_path(dir, name)?;
        let create = |source| NetNsError::Create {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(create)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(create)?;
        let target = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| create(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let made = std::thread::Builder::new()
            .name("bh-netns-new".into())
            .spawn(move || -> io::Result<()> {
                // SAFETY: unshare moves only this thread (which then ends) to a new netns.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                // This thread's namespace, not the thread group leader's (`/proc/self`).
                let source = c"/proc/thread-self/ns/net";
                // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
                let rc = unsafe {
                    libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
            .map_err(create)?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
        if let Err(source) = made {
            let _ = std::fs::remove_file(&path);
            return Err(NetNsError::Create { path, source });
        }
        Ok(path)
    }

    /// Removes a namespace made by [`NetNs::create_named`]: detaches its bind mount and
    /// unlinks the file. The namespace itself ends when nothing else holds it (processes,
    /// open fds). Removing one that is not there is fine. Blocking.
    pub fn remove_named(dir: &Path, name: &str) -> Result<(), NetNsError> {
        let path = named_path(dir, name)?;
        let remove = |source| NetNsError::Remove {
            path: path.clone(),
            source,
        };
        crate::mount::detach(&path).map_err(remove)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(remove(e)),
            _ => Ok(()),
        }
    }
}

/// `dir/name` for a name that is one plain path component.
fn named_path(dir: &Path, name: &str) -> Result<PathBuf, NetNsError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if !plain {
        return Err(NetNsError::BadName(name.to_owned()));
    }
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_path_component() {
        let dir = Path::new("/run/bulkhead/netns");
        assert_eq!(
            named_path(dir, "pod-1").unwrap(),
            dir.join("pod-1").as_path()
        );
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(named_path(dir, bad), Err(NetNsError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_plain_file_is_not_a_namespace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            NetNs::open(file.path()),
            Err(NetNsError::NotANamespace { .. })
        ));
        assert!(matches!(
            NetNs::open("/nonexistent/netns"),
            Err(NetNsError::Open { .. })
        ));
    }

    #[test]
    fn run_stays_in_our_own_namespace_and_returns_the_result() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return bulkhead_test_skip::skip("needs root (setns)");
        }
        let ns = NetNs::open("/proc/self/ns/net").unwrap();
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let theirs = ns
            .run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
            .unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ns.run_async(|| async { 7 }).unwrap(), 7);
    }
}
