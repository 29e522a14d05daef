#!/usr/bin/env bash
# Runs Bulkhead's fuzz targets (fuzz/, cargo-fuzz + libFuzzer, nightly) one at a time and
# prints, per target, the executions, the rate and whether it crashed.
#
#   scripts/fuzz.sh [--ci] [--no-build] [SECONDS_PER_TARGET] [TARGET...]
#   scripts/fuzz.sh --merge [TARGET...]
#
# Defaults: 60 s per target, every target. --ci: 15 s per target unless given, starting from
# the committed corpus (fuzz/corpus/<target>) so a regression on a known input fails at once;
# new inputs go to a scratch directory, never into the committed corpus. Outside CI, new
# inputs go to fuzz/work/corpus/<target> (kept between runs, not committed).
# A crash (panic, failed invariant, sanitizer report, timeout, out-of-memory) leaves its input
# under fuzz/artifacts/<target>/ and makes the script exit 1. Reproduce one with
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> fuzz/artifacts/<target>/<file>
# --merge: fold what earlier runs found (fuzz/work/corpus) into the committed corpus, keeping
# only inputs that add coverage (libFuzzer -merge=1); that is how fuzz/corpus was made.
# Needs: rustup's nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
ci=0
build=1
merge=0
secs=""
targets=()
for a in "$@"; do
    case "$a" in
        --ci) ci=1 ;;
        --no-build) build=0 ;;
        --merge) merge=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *[!0-9]*) targets+=("$a") ;;
        *) secs="$a" ;;
    esac
done
[ -n "$secs" ] || { [ "$ci" = 1 ] && secs=15 || secs=60; }

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi

cd "$fuzz"
mapfile -t all < <(cargo +nightly fuzz list)
[ "${#targets[@]}" -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
    printf '%s\n' "${all[@]}" | grep -qx "$t" || { echo "fuzz.sh: no target $t" >&2; exit 2; }
done

if [ "$build" = 1 ]; then
    start=$(date +%s)
    cargo +nightly fuzz build -O >&2
    echo "fuzz.sh: build took $(( $(date +%s) - start )) s" >&2
fi
bindir="$fuzz/target/x86_64-unknown-linux-gnu/release"

if [ "$merge" = 1 ]; then
    for t in "${targets[@]}"; do
        mkdir -p "$fuzz/corpus/$t" "$fuzz/work/corpus/$t"
        "$bindir/$t" -merge=1 -max_len=8192 -rss_limit_mb=2048 -timeout=10 \
            "$fuzz/corpus/$t" "$fuzz/work/corpus/$t" 2>&1 | grep -E 'MERGE-OUTER: [0-9]+ new files' || true
        echo "fuzz.sh: $t: $(find "$fuzz/corpus/$t" -type f | wc -l) inputs, $(du -sh "$fuzz/corpus/$t" | cut -f1)" >&2
    done
    exit 0
fi

scratch=""
if [ "$ci" = 1 ]; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
fi
logs="$fuzz/work/logs"
# Targets make temp directories for every input (image stores, sockets): on tmpfs, the
# store's fsyncs cost nothing. FUZZ_TMPDIR overrides.
if [ -n "${FUZZ_TMPDIR:-}" ]; then
    export TMPDIR="$FUZZ_TMPDIR"
elif [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
mkdir -p "$logs"

crashed=0
rows=()
for t in "${targets[@]}"; do
    seeds="$fuzz/corpus/$t"
    mkdir -p "$seeds" "$fuzz/artifacts/$t"
    if [ "$ci" = 1 ]; then
        work="$scratch/$t"
    else
        work="$fuzz/work/corpus/$t"
    fi
    mkdir -p "$work"
    log="$logs/$t.log"
    echo "fuzz.sh: $t for ${secs}s (log: $log)" >&2
    rc=0
    "$bindir/$t" "$work" "$seeds" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$fuzz/artifacts/$t/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ -z "$execs" ]; then
        # No final stats (a crash ends the run first): the last status line has the count.
        execs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    fi
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    crash=0
    if [ "$rc" != 0 ] || [ -n "$artifact" ]; then
        crash=1
        crashed=1
    fi
    rows+=("$(printf '%-24s %14s %10s %8s  %s' "$t" "${execs:-?}" "${rate:-?}" "$crash" "${artifact:-}")")
done

printf '%-24s %14s %10s %8s  %s\n' target executions exec/s crashes artifact
printf '%s\n' "${rows[@]}"
exit "$crashed"
