//! `bulkhead run -it` driven through a pseudo-terminal: an interactive shell, the window
//! size at start and after a resize (SIGWINCH), Ctrl-C reaching the container, and the
//! shell's exit status as the command's. Container mode, on this host.

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{host_ready, skip, Env};

fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
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

struct Term {
    master: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Term {
    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }

    fn expect(&self, needle: &str, timeout: Duration) -> String {
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
}

#[test]
fn interactive_shell_with_resize() {
    if let Err(r) = host_ready() {
        skip(&r);
        return;
    }
    let env = Env::new("container");
    let pty = nix::pty::openpty(None, None).unwrap();
    set_size(&pty.master, 24, 80);
    let slave = pty.slave;
    let mut cmd = env.cmd(&["run", "-it", "--rm", "-q", "bulkhead/demo", "sh"]);
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
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let master_fd = pty.master;
    let reader = std::fs::File::from(master_fd.try_clone().unwrap());
    let out = Arc::new(Mutex::new(Vec::new()));
    {
        let out = Arc::clone(&out);
        let mut reader = reader;
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
    let mut term = Term {
        master: std::fs::File::from(master_fd.try_clone().unwrap()),
        out,
    };
    let long = Duration::from_secs(30);
    term.send("echo calc=$((6*7))\n");
    term.expect("calc=42", long);
    term.send("stty size\n");
    term.expect("24 80", long);
    set_size(&master_fd, 33, 101);
    std::thread::sleep(Duration::from_millis(500));
    term.send("stty size\n");
    term.expect("33 101", long);
    // Ctrl-C interrupts the foreground job in the container, not bulkhead.
    term.send("sleep 100\n");
    std::thread::sleep(Duration::from_millis(700));
    term.send("\x03");
    std::thread::sleep(Duration::from_millis(300));
    term.send("echo status=$?\n");
    term.expect("status=130", long);
    term.send("exit 3\n");
    let end = Instant::now() + long;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "bulkhead did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3));
    env.assert_clean();
}
