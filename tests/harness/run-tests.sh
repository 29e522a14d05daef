#!/usr/bin/env bash
# Run several test binaries one after another (inside the harness), each with one test
# thread so guests do not compete for the level-1 VM's two CPUs. Runs them all, then exits
# non-zero if any failed, naming which.
set -uo pipefail
failed=()
for bin in "$@"; do
    printf '\n--- %s ---\n' "$(basename "$bin")"
    "$bin" --test-threads 1 || failed+=("$(basename "$bin")")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-tests.sh: failed: ${failed[*]}" >&2
    exit 1
fi
