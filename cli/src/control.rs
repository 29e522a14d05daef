//! The supervisor's control socket (`<state dir>/control.sock`): one JSON request line,
//! one JSON response line. After an `attach` response the connection carries the raw bytes
//! of one stdio stream. Used by `exec`, `kill`, `stop` and for the tty resize of execs.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest request or response line accepted.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
    Tty,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Signal a process (`exec_id` empty: the container's init).
    Kill {
        exec_id: String,
        signal: i32,
    },
    /// SIGTERM, then SIGKILL after `timeout_secs`; answered once the container exited.
    Stop {
        timeout_secs: u64,
    },
    /// Start an extra process; the supervisor fills in the rest of the OCI process.
    Exec {
        exec_id: String,
        args: Vec<String>,
        env: Vec<String>,
        cwd: Option<String>,
        user: Option<String>,
        tty: bool,
        stdin: bool,
    },
    /// Turn this connection into one stdio stream of a process.
    Attach {
        exec_id: String,
        stream: Stream,
    },
    /// Answered when the process exits, with its status.
    Wait {
        exec_id: String,
    },
    Resize {
        exec_id: String,
        rows: u16,
        cols: u16,
    },
    CloseStdin {
        exec_id: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }
    pub fn exited(code: i32) -> Self {
        Response {
            ok: true,
            exit_code: Some(code),
            error: None,
        }
    }
    pub fn error(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            exit_code: None,
        }
    }
}

/// Reads one line (without the newline), at most [`MAX_LINE`] bytes.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            bail!("connection closed");
        }
        if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            break;
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        r.consume(n);
        if buf.len() > MAX_LINE {
            bail!("line too long");
        }
    }
    Ok(String::from_utf8(buf)?)
}

pub async fn write_json<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

/// Sends one request and returns its response and the connection (positioned after the
/// response line; for `attach`, any stream bytes already read are in the reader).
pub async fn call(
    socket: &Path,
    req: &Request,
) -> anyhow::Result<(Response, BufReader<UnixStream>)> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "connecting to the container's supervisor at {}",
            socket.display()
        )
    })?;
    let mut conn = BufReader::new(stream);
    write_json(conn.get_mut(), req).await?;
    let line = read_line(&mut conn)
        .await
        .context("reading the supervisor's answer")?;
    let resp: Response = serde_json::from_str(&line).context("parsing the supervisor's answer")?;
    Ok((resp, conn))
}

/// `call` that turns a refusal into an error.
pub async fn call_ok(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    let (resp, _) = call(socket, req).await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "request refused".into()));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request::Kill {
            exec_id: String::new(),
            signal: 15,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"kill","exec_id":"","signal":15}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let a: Request =
            serde_json::from_str(r#"{"op":"attach","exec_id":"e","stream":"tty"}"#).unwrap();
        assert!(matches!(
            a,
            Request::Attach {
                stream: Stream::Tty,
                ..
            }
        ));
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Response::exited(3)).unwrap(),
            r#"{"ok":true,"exit_code":3}"#
        );
    }

    #[tokio::test]
    async fn line_reading_is_bounded() {
        let data = b"hello\nrest".to_vec();
        let mut r = BufReader::new(&data[..]);
        assert_eq!(read_line(&mut r).await.unwrap(), "hello");
        assert!(read_line(&mut r).await.is_err());
        let big = vec![b'x'; MAX_LINE + 10];
        let mut r = BufReader::new(&big[..]);
        assert!(read_line(&mut r).await.is_err());
    }
}
