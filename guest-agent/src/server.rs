//! Listeners: the ttrpc API and the stdio stream port, on vsock (guest) or
//! unix sockets (tests and host-side use). On vsock both take connections from the host
//! only ([`crate::host_only`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_protocol::stdio::{AttachStatus, Decoded, StdioHeader, FIXED_LEN};
use futures_util::StreamExt;
use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::Server;

use crate::error::AgentError;
use crate::host_only::{accepts, host_only};
use crate::sandbox::Sandbox;
use crate::service::AgentService;

/// A host that connects and sends nothing is dropped after this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Vsock(u32),
}

impl FromStr for ListenAddr {
    type Err = String;

    /// `unix:PATH` or `vsock:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: empty unix socket path"));
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else if let Some(port) = s.strip_prefix("vsock:") {
            port.parse()
                .map(ListenAddr::Vsock)
                .map_err(|_| format!("{s:?}: bad vsock port"))
        } else {
            Err(format!("{s:?}: expected unix:PATH or vsock:PORT"))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

fn bind_unix(path: &PathBuf) -> Result<UnixListener, AgentError> {
    // A socket file left by an earlier run would make bind fail.
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .map_err(|e| AgentError::io(format!("cannot listen on {}", path.display()), e))
}

fn bind_vsock(port: u32) -> Result<VsockListener, AgentError> {
    VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .map_err(|e| AgentError::io(format!("cannot listen on vsock port {port}"), e))
}

/// Starts the ttrpc server and the stdio listener. Keep the returned server
/// alive; it stops when dropped.
pub async fn start(
    sandbox: Arc<Sandbox>,
    api: &ListenAddr,
    stdio: &ListenAddr,
    shutdown: watch::Sender<bool>,
) -> Result<Server, AgentError> {
    let listener = match api {
        ListenAddr::Unix(p) => Listener::from(bind_unix(p)?),
        ListenAddr::Vsock(port) => Listener::new(
            host_only(accepts(bind_vsock(*port)?), "agent API").map(Ok::<_, std::io::Error>),
        ),
    };
    let service = AgentService::new(Arc::clone(&sandbox), shutdown);
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(service.into_ttrpc());
    server
        .start()
        .await
        .map_err(|e| AgentError::io("cannot start ttrpc server", std::io::Error::other(e)))?;
    info!("agent API listening on {api}");

    match stdio {
        ListenAddr::Unix(p) => {
            let l = bind_unix(p)?;
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((conn, _)) => spawn_stdio_conn(Arc::clone(&sandbox), conn),
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
        }
        ListenAddr::Vsock(port) => {
            let mut conns = Box::pin(host_only(accepts(bind_vsock(*port)?), "stdio"));
            tokio::spawn(async move {
                while let Some(conn) = conns.next().await {
                    spawn_stdio_conn(Arc::clone(&sandbox), conn);
                }
            });
        }
    }
    info!("stdio streams listening on {stdio}");
    Ok(server)
}

async fn accept_failed(e: std::io::Error) {
    warn!("stdio accept failed: {e}");
    // Out of fds and the like: do not spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_stdio_conn<S>(sandbox: Arc<Sandbox>, conn: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = handle_stdio_conn(&sandbox, conn).await {
            debug!("stdio connection: {e}");
        }
    });
}

/// Reads exactly the header (stream data may follow it at once), answers
/// with a status byte and hands the connection to the process.
async fn handle_stdio_conn<S>(sandbox: &Sandbox, mut conn: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut conn)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            conn.write_all(&[AttachStatus::BadHeader.to_byte()]).await?;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("no stdio header in time")),
    };
    let claim = sandbox.claim_stream(&header);
    let status = match &claim {
        Ok(_) => AttachStatus::Ok,
        Err(status) => *status,
    };
    // Answer first: the host waits for it before sending stdin.
    conn.write_all(&[status.to_byte()]).await?;
    match claim {
        Ok(claim) => claim.spawn(conn),
        Err(status) => {
            debug!(
                "stdio attach {}/{} {:?}: {status:?}",
                header.container_id, header.exec_id, header.stream
            );
            Ok(())
        }
    }
}

async fn read_header<S: AsyncRead + Unpin>(conn: &mut S) -> std::io::Result<Option<StdioHeader>> {
    let mut buf = vec![0u8; FIXED_LEN];
    conn.read_exact(&mut buf).await?;
    loop {
        match StdioHeader::decode(&buf) {
            Ok(Decoded::Complete(h, _)) => return Ok(Some(h)),
            Ok(Decoded::NeedMore(n)) => {
                let have = buf.len();
                buf.resize(n, 0);
                conn.read_exact(&mut buf[have..]).await?;
            }
            Err(e) => {
                debug!("bad stdio header: {e}");
                return Ok(None);
            }
        }
    }
}
