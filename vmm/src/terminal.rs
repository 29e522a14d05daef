//! The VMM's own terminal: when the guest console is on stdout and stdin is a terminal, keys
//! go to the guest unprocessed (Ctrl-C included), as on a serial line.

/// Puts a terminal stdin in raw mode and restores it when dropped.
pub struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal; otherwise (or on failure) nothing to restore.
    pub fn enter() -> Self {
        let fd = libc::STDIN_FILENO;
        // SAFETY: isatty/tcgetattr/tcsetattr only read and write the termios struct we own.
        unsafe {
            if libc::isatty(fd) != 1 {
                return RawTerminal(None);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return RawTerminal(None);
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return RawTerminal(None);
            }
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}
