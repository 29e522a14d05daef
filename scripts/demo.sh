#!/bin/bash
# The README's main command, on a fresh Debian 12 machine (as root): set up the host
# (packages, guest kernel, virtiofsd, agent initramfs: scripts/setup.sh), build the
# workspace (release), build the demo image (scripts/build-demo-image.sh), then run the
# same image with the same command in a microVM (--isolation vm) and as a plain
# container (--isolation container) and show both side by side with their timings;
# then the isolation lab, `bulkhead compare` (docs/lab.md): the probe in a microVM, a
# hardened and a privileged container, as a table and a report page.
#
# On a host whose CPU has neither vmx nor svm (nested "PVM" KVM: Linux does not boot on
# its /dev/kvm), the microVM half runs inside the KVM host harness
# (tests/harness/run-in-kvm.sh, entered once); the output says so.
#
# Usage: scripts/demo.sh [--no-setup] [--no-build]
#   --no-setup   skip scripts/setup.sh (packages, kernel, virtiofsd, initramfs present)
#   --no-build   skip the cargo build (target/release/bulkhead{,-vmm,-agent} present)
# Internal: scripts/demo.sh --vm-half OUT_DIR (what runs inside the harness).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
# BULKHEAD_BIN=path: another bulkhead build (with --no-build; its bulkhead-vmm and
# bulkhead-agent are the ones next to it).
bulkhead="${BULKHEAD_BIN:-$target/release/bulkhead}"
image="bulkhead/demo:latest"
layout="${BULKHEAD_CACHE:-/var/cache/bulkhead}/demo-image"
# shellcheck disable=SC2016 # expanded in the container
script='echo "hello from $(uname -r)"; cat /etc/os-release'

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
now() { date +%s.%N; }

# run_one MODE OUT_DIR: one `bulkhead run --rm` with timings; stdout, stderr and the wall
# time land in OUT_DIR/MODE.{out,err,wall}.
# The isolation lab on the demo image (needs the static probe; without it, says so).
lab() {
    local out="$1"
    if [ ! -x "${BULKHEAD_PROBE:-}" ]; then
        echo "demo.sh: no static bulkhead-probe: the isolation lab is left out" >"$out/compare.txt"
        return 0
    fi
    "$bulkhead" compare --no-costs --report "$out/lab" "$image" >"$out/compare.txt" 2>"$out/compare.err" || {
        echo "demo.sh: bulkhead compare failed:" >&2
        cat "$out/compare.err" >&2
        return 1
    }
}

run_one() {
    local mode="$1" out="$2" t0 t1 rc=0
    t0="$(now)"
    "$bulkhead" run --rm --isolation "$mode" --timings "$image" sh -c "$script" \
        >"$out/$mode.out" 2>"$out/$mode.err" || rc=$?
    t1="$(now)"
    echo "$t0 $t1" | awk '{printf "%.2f\n", $2 - $1}' >"$out/$mode.wall"
    if [ "$rc" != 0 ]; then
        echo "demo.sh: bulkhead run --isolation $mode failed (status $rc):" >&2
        cat "$out/$mode.err" >&2
        return "$rc"
    fi
}

# Inside the harness: the image store and run root go on the level-1 VM's tmpfs /tmp
# (overlayfs cannot stack on its 9p root); the OCI layout built outside is imported.
if [ "${1:-}" = --vm-half ]; then
    out="$2"
    export BULKHEAD_ROOT=/tmp/bulkhead/store BULKHEAD_RUN_ROOT=/tmp/bulkhead/run
    "$bulkhead" image import --oci-layout "$layout" "$image" >/dev/null
    echo "demo.sh: inside the KVM harness: $(nproc) vCPUs, kernel $(uname -r), /dev/kvm from kvm_amd" >&2
    # Container mode here too: the same level-1 kernel, so the two wall times compare.
    run_one container "$out" && cp "$out/container.wall" "$out/container-in-harness.wall"
    run_one vm "$out"
    lab "$out"
    exit 0
fi

setup=1 build=1
for a in "$@"; do
    case "$a" in
        --no-setup) setup=0 ;;
        --no-build) build=0 ;;
        *) echo "usage: scripts/demo.sh [--no-setup] [--no-build]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }

if [ "$setup" = 1 ]; then
    step "1/4 set-up: Debian packages, guest kernel, virtiofsd, agent initramfs (scripts/setup.sh)"
    scripts/setup.sh
fi
if [ "$build" = 1 ]; then
    step "2/4 build the workspace (release)"
    cargo build --release --workspace
    # The lab's probe is copied into containers of any image: a static build.
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --target x86_64-unknown-linux-gnu -p bulkhead-probe
fi
export BULKHEAD_PROBE="${BULKHEAD_PROBE:-$target/x86_64-unknown-linux-gnu/release/bulkhead-probe}"
step "3/4 demo image $image (scripts/build-demo-image.sh)"
BULKHEAD="$bulkhead" scripts/build-demo-image.sh "$layout"
step "4/4 the same image, twice: a microVM and a plain container; then the isolation lab"
echo "    bulkhead run --rm --isolation vm|container $image sh -c '$script'" >&2
"$bulkhead" check || true

out="$target/demo"
rm -rf "$out"
mkdir -p "$out"
where="this host"
if grep -qwE 'vmx|svm' /proc/cpuinfo; then
    run_one vm "$out"
    lab "$out"
else
    where="the KVM host harness (level-1 QEMU VM with nested KVM: this CPU has no vmx/svm)"
    echo "demo.sh: no vmx/svm on this CPU: the microVM runs inside $where" >&2
    tests/harness/run-in-kvm.sh scripts/demo.sh --vm-half "$out"
fi
run_one container "$out"

col() { # MODE TITLE
    echo "$2"
    echo "------------------------------------------------"
    cat "$out/$1.out"
    echo
    echo "wall time: $(cat "$out/$1.wall") s"
    sed -n 's/^bulkhead timings: *//p' "$out/$1.err"
}
col vm "microVM (--isolation vm)" >"$out/vm.col"
col container "plain container (--isolation container)" >"$out/container.col"
echo
paste -d '\t' "$out/vm.col" "$out/container.col" | awk -F'\t' '{ printf "%-56s %s\n", $1, $2 }'
echo
echo "The microVM ran in $where; the plain container on this host's kernel."
if [ -f "$out/container-in-harness.wall" ]; then
    echo "Under the harness's nested emulation every guest instruction is slow: there the"
    echo "same plain container took $(cat "$out/container-in-harness.wall") s (vs $(cat "$out/vm.wall") s for the microVM)."
    echo "Compare modes only within one environment (bench/run.sh does, over many rounds)."
fi
echo
echo "The isolation lab (bulkhead compare; report page: $out/lab/report.html):"
cat "$out/compare.txt"
