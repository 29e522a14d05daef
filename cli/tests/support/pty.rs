//! Drives `bulkhead run -it` through a pseudo-terminal: the command gets the slave side as
//! its controlling terminal, the test types into the master and watches the output.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass.
    assert_eq!(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
}

pub struct Term {
    pub master_fd: OwnedFd,
    master: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
    pub child: Child,
}

impl Term {
    /// Starts `cmd` on a new pty of `rows` x `cols` as its controlling terminal.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Term {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_size(&pty.master, rows, cols);
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: setsid and TIOCSCTTY in the child, both async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(slave);
        let master_fd = pty.master;
        let out = Arc::new(Mutex::new(Vec::new()));
        {
            let out = Arc::clone(&out);
            let mut reader = std::fs::File::from(master_fd.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Term {
            master: std::fs::File::from(master_fd.try_clone().unwrap()),
            master_fd,
            out,
            child,
        }
    }

    pub fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }

    /// Waits until `needle` appeared in the output; returns the output so far.
    pub fn expect(&self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned();
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > end {
                panic!("{needle:?} not seen; terminal so far:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the command's exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < end, "bulkhead did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The interactive session both isolation modes must support: arithmetic, the window size
/// at start and after a resize, Ctrl-C reaching the container's foreground job, and the
/// shell's exit status as bulkhead's. `ready` is how long the shell may take to answer
/// the first time (a microVM boots first).
pub fn interactive_session(cmd: Command, ready: Duration) {
    let mut term = Term::spawn(cmd, 24, 80);
    let long = Duration::from_secs(60);
    term.send("echo calc=$((6*7))\n");
    term.expect("calc=42", ready);
    term.send("stty size\n");
    term.expect("24 80", long);
    set_size(&term.master_fd, 33, 101);
    std::thread::sleep(Duration::from_millis(500));
    term.send("stty size\n");
    term.expect("33 101", long);
    // Ctrl-C interrupts the foreground job in the container, not bulkhead.
    term.send("sleep 100\n");
    std::thread::sleep(Duration::from_millis(1500));
    term.send("\x03");
    std::thread::sleep(Duration::from_millis(500));
    term.send("echo status=$?\n");
    term.expect("status=130", long);
    term.send("exit 3\n");
    assert_eq!(term.wait(long), Some(3));
}
