#!/usr/bin/env python3
"""Test double of bulkhead-vmm for the sandbox tests.

Takes the VMM's flags. `--kernel DIR` names the fake "guest": a hybrid vsock
`CONNECT <port>` on the `--vsock` socket is relayed to the unix socket
`DIR/port_<port>.sock` (closed without an answer when nothing listens there, as the
real VMM does). The guest "powers off" (exit 0) when `DIR/poweroff` appears.
`--cmdline` picks a failure instead: `panic` (console panic text, exit 3),
`vmm-error` (log line on stderr, exit 1).
`agent=PATH` runs the real bulkhead-agent on the host as the guest's init: serving on
`DIR/port_<port>.sock` in its own mount namespace with cgroup2 at /sys/fs/cgroup, logging
to the console; the "guest" powers off (exit 0) when the agent exits.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def main():
    args = sys.argv[1:]
    opts = {}
    i = 0
    while i < len(args):
        if args[i].startswith("--") and i + 1 < len(args):
            opts.setdefault(args[i], []).append(args[i + 1])
            i += 2
        else:
            i += 1
    guest = opts["--kernel"][0]
    serial = opts.get("--serial", ["off"])[0]
    mode = opts.get("--cmdline", [""])[0]
    if serial.startswith("file:"):
        console = open(serial[5:], "a")
    elif serial == "stdout":
        console = sys.stdout
    else:
        console = None

    def log(line):
        if console:
            console.write(line + "\r\n")
            console.flush()

    log("[    0.000000] fake-vmm " + " ".join(args))
    if mode == "panic":
        log("[    0.500000] Kernel panic - not syncing: No working init found.")
        sys.exit(3)
    if mode == "vmm-error":
        print("[vmm] error: cannot open /dev/kvm: No such file or directory", file=sys.stderr)
        sys.exit(1)

    vsock = opts["--vsock"][0]
    if vsock.startswith("fd="):
        # An inherited listener, as the sandbox hands it over.
        srv = socket.socket(fileno=int(vsock[3:]))
    else:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(vsock)
        srv.listen(64)

    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def handle(client):
        line = b""
        while not line.endswith(b"\n"):
            data = client.recv(1)
            if not data or len(line) > 32:
                client.close()
                return
            line += data
        port = int(line.split()[1])
        guest_conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            guest_conn.connect(os.path.join(guest, "port_%d.sock" % port))
        except OSError:
            client.close()
            return
        client.sendall(b"OK 1073741824\n")
        threading.Thread(target=pump, args=(client, guest_conn), daemon=True).start()
        threading.Thread(target=pump, args=(guest_conn, client), daemon=True).start()

    def accept():
        while True:
            client, _ = srv.accept()
            threading.Thread(target=handle, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    log("[    0.100000] fake guest up")
    if mode.startswith("agent="):
        sys.exit(run_agent(mode[len("agent="):], guest, console))
    poweroff = os.path.join(guest, "poweroff")
    while not os.path.exists(poweroff):
        time.sleep(0.02)
    log("[    1.000000] reboot: Power down")
    if not vsock.startswith("fd="):
        os.unlink(vsock)
    sys.exit(0)


def run_agent(agent, guest, console):
    setup = (
        'if [ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then '
        "mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup || exit 1; fi; "
        'exec "$@"'
    )
    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_parent():
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    cmd = [
        "unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "agent",
        agent,
        "--listen", "unix:" + os.path.join(guest, "port_1024.sock"),
        "--stdio-listen", "unix:" + os.path.join(guest, "port_1025.sock"),
        "--state-dir", os.path.join(guest, "state"),
        "--log", "debug",
    ]
    child = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
        preexec_fn=die_with_parent,
    )
    child.wait()
    console.write("[    9.000000] reboot: Power down (agent status %d)\r\n" % child.returncode)
    console.flush()
    return 0


if __name__ == "__main__":
    main()
