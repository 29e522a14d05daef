//! The user's terminal: raw mode for `-t` sessions (restored on drop), the window size,
//! and byte pumps between local stdio, the container's streams and the log file.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Puts stdin's terminal into raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// `None` when stdin is not a terminal.
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The window size of the terminal on `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TIOCGWINSZ,
            &mut ws,
        )
    };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The size of the local terminal (stdin, else stdout).
pub fn local_window_size() -> Option<(u16, u16)> {
    window_size(std::io::stdin().as_fd()).or_else(|| window_size(std::io::stdout().as_fd()))
}

/// An append-only log shared by the output pumps.
pub type Log = Arc<Mutex<std::fs::File>>;

pub fn open_log(path: &std::path::Path) -> std::io::Result<Log> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(Arc::new(Mutex::new(f)))
}

/// Copies `from` to `to` (when given) and to the log until EOF. A local output that fails
/// (the user closed the terminal) does not stop the log.
pub async fn pump_out<R, W>(mut from: R, mut to: Option<W>, log: Option<Log>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        if let Some(log) = &log {
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(data);
            }
        }
        if let Some(w) = to.as_mut() {
            if w.write_all(data).await.is_err() || w.flush().await.is_err() {
                to = None;
            }
        }
    }
    if let Some(mut w) = to {
        let _ = w.flush().await;
    }
}

/// Copies local stdin into `to` until EOF, then shuts `to`'s write side.
pub async fn pump_in<W: AsyncWrite + Unpin>(mut to: W) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_goes_to_both_and_survives_a_dead_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(&dir.path().join("log")).unwrap();
        let (mut a, b) = tokio::io::duplex(64);
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let pump = tokio::spawn(pump_out(b, Some(out_w), Some(log.clone())));
        a.write_all(b"hello ").await.unwrap();
        a.write_all(b"world").await.unwrap();
        drop(a);
        pump.await.unwrap();
        let mut s = String::new();
        out_r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "hello world"
        );

        // The local side goes away: the log still gets everything.
        let (mut a, b) = tokio::io::duplex(64);
        let (out_w, out_r) = tokio::io::duplex(4);
        drop(out_r);
        let pump = tokio::spawn(pump_out(b, Some(out_w), Some(log)));
        a.write_all(b"!more").await.unwrap();
        drop(a);
        pump.await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "hello world!more"
        );
    }
}
