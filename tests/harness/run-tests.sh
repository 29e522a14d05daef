#!/usr/bin/env bash
# Run several test binaries one after another (inside the harness), each with one test
# thread so guests do not compete for the level-1 VM's two CPUs. Runs them all, then exits
# non-zero if any failed, naming which. A binary still running after BULKHEAD_E2E_TIMEOUT
# seconds (default 1200) is killed and counts as failed.
#
# Usage: run-tests.sh BIN...
set -uo pipefail
failed=()
for bin in "$@"; do
    printf '\n--- %s (%s) ---\n' "$(basename "$bin")" "$(date -u +%H:%M:%S)"
    timeout -k 30 "${BULKHEAD_E2E_TIMEOUT:-1200}" "$bin" --test-threads 1 \
        || failed+=("$(basename "$bin")")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-tests.sh: failed: ${failed[*]}" >&2
    exit 1
fi
