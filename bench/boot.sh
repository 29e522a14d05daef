#!/bin/bash
# Build the guest kernel, boot-bench and bulkhead-vmm (release), then run the
# boot benchmark inside the KVM host harness. Extra arguments go to
# boot-bench (e.g. --rounds 20, --only qemu).
#   BULKHEAD_VMM=PATH   use this VMM binary instead of building one
#   BENCH_NO_VMM=1      do not build the VMM (QEMU only unless BULKHEAD_VMM)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

kdir="$(kernel-config/build-kernel.sh | tail -n 1)"
cargo build --release -p bulkhead-e2e --bin boot-bench
args=(--kernel-dir "$kdir")
if [ -n "${BULKHEAD_VMM:-}" ]; then
    args+=(--vmm "$BULKHEAD_VMM")
elif [ "${BENCH_NO_VMM:-0}" != 1 ]; then
    cargo build --release -p bulkhead-vmm --bin bulkhead-vmm
    args+=(--vmm "$target/release/bulkhead-vmm")
else
    args+=(--only qemu)
fi
exec tests/harness/run-in-kvm.sh "$target/release/boot-bench" "${args[@]}" "$@"
