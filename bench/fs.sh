#!/bin/bash
# Build fs-bench and bulkhead-vmm (release), then run the virtio-fs benchmark inside the KVM
# host harness: in-guest sequential read of a 1 GiB file and `find` over 20,000 small files
# on virtio-fs, bulkhead-vmm against QEMU -M microvm, the same virtiofsd (started per boot
# with the runtime's options), interleaved rounds. Extra arguments go to fs-bench
# (e.g. --rounds 5, --size-mib 256, --files 5000, --only qemu).
#   BULKHEAD_VMM=PATH         use this VMM binary instead of building one
#   BULKHEAD_VIRTIOFSD=PATH   virtiofsd (default: scripts/install-virtiofsd.sh's)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

kdir="$(kernel-config/build-kernel.sh | tail -n 1)"
export BULKHEAD_VIRTIOFSD="${BULKHEAD_VIRTIOFSD:-$(scripts/install-virtiofsd.sh | tail -n 1)}"
cargo build --release -p bulkhead-e2e --bin fs-bench
if [ -z "${BULKHEAD_VMM:-}" ]; then
    cargo build --release -p bulkhead-vmm --bin bulkhead-vmm
    export BULKHEAD_VMM="$target/release/bulkhead-vmm"
fi
exec tests/harness/run-in-kvm.sh "$target/release/fs-bench" \
    --kernel-dir "$kdir" --vmm "$BULKHEAD_VMM" "$@"
