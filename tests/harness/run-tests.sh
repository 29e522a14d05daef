#!/usr/bin/env bash
# Run several test binaries one after another (inside the harness), each with one test
# thread so guests do not compete for the level-1 VM's two CPUs. Runs them all, then exits
# non-zero if any failed, naming which. A binary still running after BULKHEAD_E2E_TIMEOUT
# seconds (default 1800) is killed and counts as failed.
#
# Usage: run-tests.sh [--skip PATTERN]... BIN...
#   --skip PATTERN  passed to every binary (libtest: skip tests whose name contains it)
set -uo pipefail
skips=()
while [ "${1:-}" = --skip ]; do
    [ $# -ge 2 ] || { echo "run-tests.sh: --skip needs a pattern" >&2; exit 2; }
    skips+=(--skip "$2")
    shift 2
done
failed=()
for bin in "$@"; do
    printf '\n--- %s (%s) ---\n' "$(basename "$bin")" "$(date -u +%H:%M:%S)"
    timeout -k 30 "${BULKHEAD_E2E_TIMEOUT:-1800}" "$bin" --test-threads 1 "${skips[@]}" \
        || failed+=("$(basename "$bin")")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-tests.sh: failed: ${failed[*]}" >&2
    exit 1
fi
