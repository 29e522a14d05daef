#!/usr/bin/env bash
# Run several test binaries one after another (inside the harness), each with one test
# thread so guests do not compete for the level-1 VM's two CPUs. Runs them all, then exits
# non-zero if any failed, naming which. A binary still running after BULKHEAD_E2E_TIMEOUT
# seconds (default 1200) is killed and counts as failed. Tests named in BULKHEAD_E2E_SKIP
# (space separated, exact names) are not run: scripts/test.sh lists there the tests that
# passed in a level-1 VM that then froze.
#
# For each binary it prints `run-tests.sh: NAME exit STATUS after SECONDS s`, which
# scripts/test.sh puts in its timeline.
#
# With --check-no-skip BIN first, BIN (the `vmm_boot` test binary of crate bulkhead-e2e)
# runs one test with its VMM missing on purpose, and that test must FAIL saying it cannot
# run (BULKHEAD_NO_SKIP=1, set by run-in-kvm.sh) instead of passing by skipping. The result
# is printed as `run-tests.sh: no-skip check passed` or `... FAILED: why` (and counts as a
# failure). It boots no guest.
#
# Usage: run-tests.sh [--check-no-skip VMM_BOOT_BIN] BIN...
set -uo pipefail
failed=()

if [ "${1:-}" = --check-no-skip ]; then
    check_bin="$2"
    shift 2
    check_out="$(mktemp)"
    if [ "${BULKHEAD_NO_SKIP:-}" != 1 ]; then
        echo "run-tests.sh: no-skip check FAILED: BULKHEAD_NO_SKIP is not 1 here" >&2
        failed+=(no-skip-check)
    elif BULKHEAD_VMM=/nonexistent/bulkhead-vmm "$check_bin" --exact \
        vmm_exits_0_on_guest_poweroff --test-threads 1 >"$check_out" 2>&1; then
        echo "run-tests.sh: no-skip check FAILED: a test without its VMM passed" >&2
        tail -n 5 "$check_out" >&2
        failed+=(no-skip-check)
    elif ! grep -q "cannot run here: .*BULKHEAD_NO_SKIP is set" "$check_out"; then
        echo "run-tests.sh: no-skip check FAILED: the test failed for another reason" >&2
        tail -n 5 "$check_out" >&2
        failed+=(no-skip-check)
    else
        echo "run-tests.sh: no-skip check passed (a test without its VMM failed, not skipped)"
    fi
    rm -f "$check_out"
fi

skip=()
for t in ${BULKHEAD_E2E_SKIP:-}; do skip+=(--skip "$t"); done
[ "${#skip[@]}" -eq 0 ] || skip=(--exact "${skip[@]}")
for bin in "$@"; do
    name="$(basename "$bin")"
    name="${name%-*}" # cargo's hash suffix
    began=$SECONDS
    printf '\n--- %s (%s) ---\n' "$name" "$(date -u +%H:%M:%S)"
    timeout -k 30 "${BULKHEAD_E2E_TIMEOUT:-1200}" "$bin" --test-threads 1 "${skip[@]}"
    status=$?
    echo "run-tests.sh: $name exit $status after $((SECONDS - began)) s"
    if [ "$status" -gt 128 ]; then
        # Killed by a signal: say whether the kernel did it (OOM) and what else died.
        echo "run-tests.sh: $name ended by signal $((status - 128)); the kernel's last words:"
        dmesg 2>/dev/null | grep -iE "oom|killed process|segfault|traps:" | tail -n 20
    fi
    [ "$status" = 0 ] || failed+=("$name")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-tests.sh: failed: ${failed[*]}" >&2
    exit 1
fi
