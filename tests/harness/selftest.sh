#!/bin/bash
# Checks tests/harness/run-in-kvm.sh on this machine: exit status, stdout and
# stderr pass through; inside: /dev/kvm, BULKHEAD_IN_HARNESS=1, environment
# pass-through, the caller's directory (writable), /tmp a tmpfs that takes a
# unix socket, and the kernel cache visible. Prints PASS or what failed.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "$here/.selftest.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

out="$(BULKHEAD_SELFTEST='a b$c' "$here/run-in-kvm.sh" bash -c '
    [ -c /dev/kvm ] || echo "FAIL: no /dev/kvm"
    [ "$BULKHEAD_IN_HARNESS" = 1 ] || echo "FAIL: BULKHEAD_IN_HARNESS not set"
    [ "$BULKHEAD_SELFTEST" = "a b\$c" ] || echo "FAIL: env not passed: [$BULKHEAD_SELFTEST]"
    [ "$(pwd -P)" = "'"$(pwd -P)"'" ] || echo "FAIL: wrong cwd $(pwd)"
    echo written > from-inside || echo "FAIL: cwd not writable"
    python3 -c "import socket; s=socket.socket(socket.AF_UNIX); s.bind(\"/tmp/selftest.sock\")" \
        || echo "FAIL: cannot bind a unix socket in /tmp"
    kdir="$('"$here"'/../../kernel-config/build-kernel.sh --print-dir)"
    [ -f "$kdir/vmlinux" ] || echo "NOTE: kernel not built or not visible at $kdir"
    echo to-stderr >&2
    exit 7' 2>"$work/stderr")"
rc=$?
fail=0
[ "$rc" = 7 ] || { echo "FAIL: exit status $rc, want 7"; fail=1; }
grep -q "^to-stderr" "$work/stderr" || { echo "FAIL: stderr lost: $(cat "$work/stderr")"; fail=1; }
[ "$(cat from-inside 2>/dev/null)" = written ] || { echo "FAIL: file written inside not on host"; fail=1; }
if [ -n "$out" ]; then echo "$out"; echo "$out" | grep -q FAIL && fail=1; fi
[ "$fail" = 0 ] && echo PASS
exit "$fail"
