//! Host side of hybrid vsock: reach a guest vsock port through the VMM's unix socket.
//!
//! The VMM listens on a unix socket; a client connects, writes `CONNECT <port>\n` and reads
//! `OK <hostport>\n` once the guest accepted. From then on the socket is a byte stream to the
//! guest port. When nothing listens on the port in the guest (yet), the VMM closes the
//! connection instead of answering: [`connect`] retries that, and a missing socket (the VMM
//! has not bound it yet), with a short backoff until a deadline.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Longest reply line we read (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY_LEN: usize = 32;
/// First pause between two attempts; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Why one attempt, or the whole connect, failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// Nothing listens on the unix socket (missing file or refused): the VMM is not up.
    #[error("no VMM vsock socket at {path}")]
    NoSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The VMM closed the connection without `OK`: nothing listens on the guest port.
    #[error("the guest refused vsock port {port} (nothing listening there)")]
    Refused { port: u32 },
    /// The peer answered something that is not `OK <n>`: not a hybrid vsock socket.
    #[error("unexpected reply to CONNECT {port}: {reply:?}")]
    BadReply { port: u32, reply: String },
    /// Reading or writing the socket failed.
    #[error("i/o on vsock socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The deadline passed; `last` says why the last attempt failed.
    #[error("timed out after {tries} tries in {elapsed:?} connecting to guest vsock port {port}")]
    TimedOut {
        port: u32,
        tries: u32,
        elapsed: Duration,
        #[source]
        last: Box<ConnectError>,
    },
}

impl ConnectError {
    /// Whether another attempt may succeed (the VMM or the guest listener may not be up yet).
    fn is_transient(&self) -> bool {
        match self {
            ConnectError::NoSocket { .. } | ConnectError::Refused { .. } => true,
            // A reset during the handshake is the VMM dropping us, as for a refusal.
            ConnectError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            ConnectError::BadReply { .. } | ConnectError::TimedOut { .. } => false,
        }
    }
}

/// Parses the VMM's reply line (without its `\n`): `OK <hostport>`.
pub fn parse_ok_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("OK ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to guest vsock `port` through the VMM socket `uds`, retrying while the VMM or
/// the guest listener is not up yet, until `deadline`. Returns the stream positioned right
/// after the `OK` line.
pub async fn connect(uds: &Path, port: u32, deadline: Instant) -> Result<UnixStream, ConnectError> {
    let start = Instant::now();
    let mut tries = 0u32;
    let mut backoff = FIRST_BACKOFF;
    loop {
        tries += 1;
        let attempt = match tokio::time::timeout_at(deadline, connect_once(uds, port)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Io {
                path: uds.to_path_buf(),
                source: io::Error::new(io::ErrorKind::TimedOut, "no reply before the deadline"),
            }),
        };
        let err = match attempt {
            Ok((stream, _host_port)) => return Ok(stream),
            Err(e) => e,
        };
        let now = Instant::now();
        if !err.is_transient() && now < deadline {
            return Err(err);
        }
        if now + backoff >= deadline {
            return Err(ConnectError::TimedOut {
                port,
                tries,
                elapsed: now.duration_since(start),
                last: Box::new(err),
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt: connect, send `CONNECT <port>\n`, read the reply line.
pub async fn connect_once(uds: &Path, port: u32) -> Result<(UnixStream, u32), ConnectError> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ConnectError::NoSocket {
                path: uds.to_path_buf(),
                source,
            },
            _ => ConnectError::Io {
                path: uds.to_path_buf(),
                source,
            },
        })?;
    let io_err = |source| ConnectError::Io {
        path: uds.to_path_buf(),
        source,
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io_err)?;
    // Byte by byte: whatever follows the newline already belongs to the guest stream.
    let mut line = Vec::with_capacity(MAX_REPLY_LEN);
    loop {
        let mut byte = [0u8; 1];
        let n = match stream.read(&mut byte).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && line.is_empty() => 0,
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            return Err(if line.is_empty() {
                ConnectError::Refused { port }
            } else {
                ConnectError::BadReply {
                    port,
                    reply: String::from_utf8_lossy(&line).into_owned(),
                }
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LEN {
            return Err(ConnectError::BadReply {
                port,
                reply: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
    match parse_ok_line(&line) {
        Some(host_port) => Ok((stream, host_port)),
        None => Err(ConnectError::BadReply {
            port,
            reply: String::from_utf8_lossy(&line).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    #[test]
    fn parses_ok_lines() {
        assert_eq!(parse_ok_line(b"OK 1073741824"), Some(1_073_741_824));
        assert_eq!(parse_ok_line(b"OK 0"), Some(0));
        assert_eq!(parse_ok_line(b"OK 52\r"), Some(52));
        assert_eq!(parse_ok_line(b"OK 4294967295"), Some(u32::MAX));
        assert_eq!(parse_ok_line(b"OK 4294967296"), None);
        assert_eq!(parse_ok_line(b"OK"), None);
        assert_eq!(parse_ok_line(b"OK "), None);
        assert_eq!(parse_ok_line(b"OK +5"), None);
        assert_eq!(parse_ok_line(b"OK -1"), None);
        assert_eq!(parse_ok_line(b"OK 12 34"), None);
        assert_eq!(parse_ok_line(b"ok 12"), None);
        assert_eq!(parse_ok_line(b"ERR 12"), None);
        assert_eq!(parse_ok_line(b"OK \xff"), None);
    }

    /// A test double of the VMM socket: refuses the first `refusals` connections by closing
    /// them after the CONNECT line, then answers `OK 7000` and echoes the stream.
    async fn fake_vmm(listener: UnixListener, refusals: usize, expect_port: u32) {
        for i in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).await.is_err() {
                continue;
            }
            assert_eq!(line, format!("CONNECT {expect_port}\n"));
            if i < refusals {
                drop(reader);
                continue;
            }
            let mut stream = reader.into_inner();
            // The reply and the first stream bytes in one write: the client must not
            // swallow what follows the newline.
            stream.write_all(b"OK 7000\nhello").await.unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }

    #[tokio::test]
    async fn connects_after_refusals_and_keeps_the_stream_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_vmm(listener, 3, 1024));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = connect(&path, 1024, deadline).await.unwrap();
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        stream.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
    }

    #[tokio::test]
    async fn waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let bind_path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let listener = UnixListener::bind(&bind_path).unwrap();
            fake_vmm(listener, 0, 1025).await;
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let start = Instant::now();
        let mut stream = connect(&path, 1025, deadline).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
    }

    #[tokio::test]
    async fn refusals_until_the_deadline_time_out_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_vmm(listener, usize::MAX, 1024));
        let deadline = Instant::now() + Duration::from_millis(300);
        let err = connect(&path, 1024, deadline).await.unwrap_err();
        match &err {
            ConnectError::TimedOut {
                port, tries, last, ..
            } => {
                assert_eq!(*port, 1024);
                assert!(*tries > 1, "retried only {tries} times");
                assert!(matches!(**last, ConnectError::Refused { port: 1024 }));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("timed out"));
    }

    #[tokio::test]
    async fn missing_socket_times_out_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let deadline = Instant::now() + Duration::from_millis(100);
        let err = connect(&path, 1024, deadline).await.unwrap_err();
        let ConnectError::TimedOut { last, .. } = err else {
            panic!("expected a timeout");
        };
        assert!(matches!(*last, ConnectError::NoSocket { .. }));
        assert!(last.to_string().contains("absent.sock"));
    }

    #[tokio::test]
    async fn a_garbage_reply_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n").await;
            }
        });
        let start = Instant::now();
        let err = connect(&path, 1024, start + Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::BadReply { port: 1024, .. }),
            "{err:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                kept.push(s);
            }
        });
        let start = Instant::now();
        let err = connect(&path, 1024, start + Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::TimedOut { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        held.abort();
    }
}
