#!/usr/bin/env bash
# Replays the committed fuzz corpus (fuzz/corpus/<target>/*) through every fuzz target, so
# a regression on a known input fails CI without the cost of a sanitizer build: stable
# Rust, no coverage instrumentation, each input run once (libFuzzer's "run these files"
# mode). Finding new inputs is scripts/fuzz.sh's job (nightly, ASan, libFuzzer).
# Exits 1 when a target crashes or fails an invariant on a corpus input.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="$root/fuzz/target/replay"
echo "fuzz-replay.sh: building the fuzz targets (stable, debug, no sanitizer)" >&2
CARGO_TARGET_DIR="$target_dir" cargo build --manifest-path fuzz/Cargo.toml --bins >&2
# The image targets unpack into temp directories: keep them on tmpfs when there is one.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi
failed=()
printf '%-24s %8s %10s\n' target inputs seconds
for dir in fuzz/corpus/*/; do
    name="$(basename "$dir")"
    bin="$target_dir/debug/$name"
    [ -x "$bin" ] || { echo "fuzz-replay.sh: no binary for $name" >&2; failed+=("$name"); continue; }
    mapfile -t inputs < <(find "$dir" -type f | sort)
    start=$SECONDS
    log="$(mktemp)"
    # In chunks: argument lists stay short.
    status=0
    for ((i = 0; i < ${#inputs[@]}; i += 200)); do
        "$bin" -rss_limit_mb=2048 -timeout=30 "${inputs[@]:i:200}" >"$log" 2>&1 || { status=$?; break; }
    done
    printf '%-24s %8d %10d\n' "$name" "${#inputs[@]}" $((SECONDS - start))
    if [ "$status" != 0 ]; then
        echo "fuzz-replay.sh: $name failed on its corpus (status $status):" >&2
        tail -n 30 "$log" >&2
        failed+=("$name")
    fi
    rm -f "$log"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-replay.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-replay.sh: every corpus input passes" >&2
