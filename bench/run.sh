#!/bin/bash
# Benchmark: wall time of `bulkhead run --rm IMAGE true` in vm mode and in container mode,
# N interleaved rounds in ONE harness boot (so both modes see the same machine), with the
# median of every phase of the runtime's own timing log (`run --timings`: image, VM
# launch, VMM start, kernel boot, agent ready, rootfs, container create/start, run, exit).
#
# Usage: bench/run.sh [--rounds N] [--no-build]     (default 10 rounds; as root)
#   Builds bulkhead + bulkhead-vmm + bulkhead-agent (release) and the demo image layout
#   outside, then enters tests/harness/run-in-kvm.sh once (directly on hosts with vmx/svm).
#   Results: target/bench-run/{runs.tsv,summary.txt}. BULKHEAD_BIN=PATH uses another build
#   (with --no-build).
# Internal: bench/run.sh --inside N OUT_DIR
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
# BULKHEAD_BIN=path: another bulkhead build (its bulkhead-vmm and bulkhead-agent are the
# ones next to it).
bulkhead="${BULKHEAD_BIN:-$target/release/bulkhead}"
image="bulkhead/demo:latest"
layout="${BULKHEAD_CACHE:-/var/cache/bulkhead}/demo-image"

if [ "${1:-}" = --inside ]; then
    rounds="$2" out="$3"
    # The store and run root on a tmpfs (inside the level-1 VM /tmp is one).
    base="$(mktemp -d /tmp/bulkhead-bench.XXXXXX)"
    export BULKHEAD_ROOT="$base/store" BULKHEAD_RUN_ROOT="$base/run"
    "$bulkhead" image import --oci-layout "$layout" "$image" >/dev/null
    echo "bench: $(nproc) CPUs, kernel $(uname -r), harness=${BULKHEAD_IN_HARNESS:-0}" >&2
    printf 'mode\tround\twall_ms\tphase\tms\n' >"$out/runs.tsv"
    one() { # MODE ROUND
        local t0 t1 err rc=0
        err="$out/last.err"
        t0="$(date +%s%N)"
        # A run that hangs is ended (SIGTERM, which bulkhead passes on, then teardown);
        # just before, its sandbox logs (guest console, VMM, virtiofsd) are kept in OUT.
        (
            trap 'kill "$nap" 2>/dev/null; exit 0' TERM
            sleep 290 &
            nap=$!
            wait "$nap"
            mkdir -p "$out/hung-$1-$2"
            find "$base/run" -name '*.log' -exec cp --parents -t "$out/hung-$1-$2" {} + 2>/dev/null
        ) &
        local keeper=$!
        timeout 300 "$bulkhead" run --rm -q --isolation "$1" --timings "$image" true \
            2>"$err" || rc=$?
        kill "$keeper" 2>/dev/null || true
        wait "$keeper" 2>/dev/null || true
        t1="$(date +%s%N)"
        if [ "$rc" != 0 ]; then
            echo "bench: $1 round $2 failed (status $rc):" >&2
            cat "$err" >&2
            return 1
        fi
        local wall=$(((t1 - t0) / 1000000))
        echo "bench: $1 round $2: $wall ms" >&2
        sed -n 's/^bulkhead timings: *//p' "$err" | while read -r phase ms _; do
            printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$wall" "$phase" "$ms"
        done >>"$out/runs.tsv"
    }
    # Warm-up (first unpack of the layers, page cache), not counted.
    one container 0 && one vm 0
    sed -i '/\t0\t/d' "$out/runs.tsv"
    for r in $(seq 1 "$rounds"); do
        one vm "$r" || true
        one container "$r" || true
    done
    # The sandboxes directory stays bound onto itself (shared) after the first VM.
    umount "$base/run/sandboxes" 2>/dev/null || true
    rm -rf "$base" || true
    exit 0
fi

rounds=10 build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "usage: bench/run.sh [--rounds N] [--no-build]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root" >&2; exit 1; }
if [ "$build" = 1 ]; then
    # Container mode runs bulkhead-agent, found next to bulkhead.
    cargo build --release -p bulkhead-cli -p bulkhead-vmm -p bulkhead-agent
fi
echo "bench: $bulkhead, VMM: $("$bulkhead" check --json | python3 -c 'import json,sys; print([c["detail"] for c in json.load(sys.stdin)["checks"] if c["name"]=="vmm"][0])')" >&2
BULKHEAD="$bulkhead" scripts/build-demo-image.sh --no-import "$layout" >&2
out="$target/bench-run"
rm -rf "$out"
mkdir -p "$out"
tests/harness/run-in-kvm.sh bench/run.sh --inside "$rounds" "$out" \
    || echo "bench/run.sh: the harness run failed; summarising what was measured" >&2
[ -s "$out/runs.tsv" ] || exit 1

python3 - "$out/runs.tsv" "$rounds" >"$out/summary.txt" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
modes = ["vm", "container"]
wall = {m: {} for m in modes}
phases = {m: {} for m in modes}
order = []
for r in rows:
    m = r["mode"]
    wall[m][r["round"]] = float(r["wall_ms"])
    phases[m].setdefault(r["phase"], []).append(float(r["ms"]))
    if r["phase"] not in order:
        order.append(r["phase"])
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"bulkhead run --rm IMAGE true, {sys.argv[2]} interleaved rounds, medians in ms")
print(f"{'':18}{'vm':>12}{'container':>12}")
w = {m: med(list(wall[m].values())) for m in modes}
print(f"{'wall time':18}{w['vm']:>12.1f}{w['container']:>12.1f}")
for m in modes:
    xs = sorted(wall[m].values())
    if xs:
        print(f"  {m:<10} min {xs[0]:.1f}  max {xs[-1]:.1f}  n={len(xs)}")
print("phases (runtime's --timings log):")
for p in order:
    cells = []
    for m in modes:
        xs = phases[m].get(p)
        cells.append(f"{med(xs):>12.1f}" if xs else f"{'-':>12}")
    print(f"  {p:<16}{''.join(cells)}")
if w["container"] > 0:
    print(f"vm / container wall time: {w['vm'] / w['container']:.1f}x")
EOF
cat "$out/summary.txt"
