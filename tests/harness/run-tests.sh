#!/usr/bin/env bash
# Run several test binaries one after another (inside the harness), each with one test
# thread so guests do not compete for the level-1 VM's two CPUs. Runs them all, then exits
# non-zero if any failed, naming which. A binary still running after BULKHEAD_E2E_TIMEOUT
# seconds (default 1200) is killed and counts as failed. Tests named in BULKHEAD_E2E_SKIP
# (space separated, exact names) are not run: scripts/test.sh lists there the tests that
# passed in a level-1 VM that then froze.
#
# Usage: run-tests.sh BIN...
set -uo pipefail
skip=()
for t in ${BULKHEAD_E2E_SKIP:-}; do skip+=(--skip "$t"); done
[ "${#skip[@]}" -eq 0 ] || skip=(--exact "${skip[@]}")
failed=()
for bin in "$@"; do
    printf '\n--- %s (%s) ---\n' "$(basename "$bin")" "$(date -u +%H:%M:%S)"
    timeout -k 30 "${BULKHEAD_E2E_TIMEOUT:-1200}" "$bin" --test-threads 1 "${skip[@]}" \
        || failed+=("$(basename "$bin")")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-tests.sh: failed: ${failed[*]}" >&2
    exit 1
fi
