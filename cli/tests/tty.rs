//! `bulkhead run -it` driven through a pseudo-terminal: an interactive shell, the window
//! size at start and after a resize (SIGWINCH), Ctrl-C reaching the container, and the
//! shell's exit status as the command's. Container mode, on this host (the same session
//! in a microVM is in vm_e2e.rs).

mod support;

use std::time::Duration;

use support::{host_ready, pty, skip, Env};

#[test]
fn interactive_shell_with_resize() {
    if let Err(r) = host_ready() {
        skip(&r);
        return;
    }
    let env = Env::new("container");
    let cmd = env.cmd(&["run", "-it", "--rm", "-q", "bulkhead/demo", "sh"]);
    pty::interactive_session(cmd, Duration::from_secs(30));
    env.assert_clean();
}
