#!/bin/bash
# Checks tests/harness/run-in-kvm.sh on this machine: exit status, stdout and
# stderr pass through; inside: /dev/kvm, BULKHEAD_IN_HARNESS=1 and
# BULKHEAD_NO_SKIP=1, environment pass-through, the caller's directory
# (writable), /tmp a tmpfs that takes a unix socket, and the kernel cache
# visible. Prints PASS or what failed.
#
# Usage: selftest.sh [VMM_BOOT_TEST_BINARY]
# With the `vmm_boot` test binary of crate bulkhead-e2e (cargo test -p bulkhead-e2e
# --test vmm_boot --no-run), it also runs one of its tests with the VMM missing on
# purpose (BULKHEAD_VMM=/nonexistent/...) and checks that the test FAILS there,
# saying it cannot run, instead of skipping (scripts/test.sh does this).
set -uo pipefail
no_skip_bin=""
if [ $# -ge 1 ]; then
    no_skip_bin="$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")"
    [ -x "$no_skip_bin" ] || { echo "FAIL: $1 is not an executable test binary"; exit 1; }
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "$here/.selftest.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

out="$(BULKHEAD_SELFTEST='a b$c' BULKHEAD_SELFTEST_BIN="$no_skip_bin" "$here/run-in-kvm.sh" bash -c '
    [ -c /dev/kvm ] || echo "FAIL: no /dev/kvm"
    [ "$BULKHEAD_IN_HARNESS" = 1 ] || echo "FAIL: BULKHEAD_IN_HARNESS not set"
    [ "$BULKHEAD_NO_SKIP" = 1 ] || echo "FAIL: BULKHEAD_NO_SKIP not set"
    if [ -n "$BULKHEAD_SELFTEST_BIN" ]; then
        # A test whose prerequisite (the VMM) is missing must fail here, not skip.
        if BULKHEAD_VMM=/nonexistent/bulkhead-vmm "$BULKHEAD_SELFTEST_BIN" --exact \
            vmm_exits_0_on_guest_poweroff --test-threads 1 >/tmp/no-skip.out 2>&1; then
            echo "FAIL: a test without its VMM passed in the harness: $(tail -n 5 /tmp/no-skip.out)"
        elif ! grep -q "cannot run here: .*BULKHEAD_NO_SKIP is set" /tmp/no-skip.out; then
            echo "FAIL: a test without its VMM failed for another reason: $(tail -n 5 /tmp/no-skip.out)"
        fi
    fi
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
