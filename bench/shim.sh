#!/bin/bash
# The containerd shim benchmark, in one harness boot (docs/shim.md, "Figures"):
#  1. `ctr run --rm IMAGE id echo ready` to the first output line, runc against
#     io.containerd.bulkhead.v2, interleaved rounds: medians and their ratio;
#  2. memory of an idle pod (one `sleep` container): PSS of the shim, the VMM and
#     virtiofsd from /proc/<pid>/smaps_rollup (runc's shim for reference).
#
# Usage: bench/shim.sh [ROUNDS]            (default 5)
# Outside the harness it builds what it needs (release shim, release VMM unless
# BULKHEAD_VMM is set), then runs itself through tests/harness/run-in-kvm.sh.
# Inputs (defaults: the kernel cache, the newest initramfs, virtiofsd 1.14.0):
#   BULKHEAD_KERNEL BULKHEAD_INITRD BULKHEAD_VMM BULKHEAD_VIRTIOFSD BULKHEAD_SHIM
# Needs root, containerd + runc (Debian 12 packages), busybox-static.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds="${1:-5}"
target="${CARGO_TARGET_DIR:-$root/target}"
cache="${BULKHEAD_CACHE:-/var/cache/bulkhead}"

if [ "${BULKHEAD_IN_HARNESS:-}" != 1 ]; then
    cd "$root"
    : "${BULKHEAD_KERNEL:=$(ls -t "$cache"/kernel/*/vmlinux | head -n 1)}"
    : "${BULKHEAD_INITRD:=$(ls -t "$cache"/initramfs/*.cpio | head -n 1)}"
    : "${BULKHEAD_VIRTIOFSD:=$cache/virtiofsd-1.14.0/bin/virtiofsd}"
    if [ -z "${BULKHEAD_SHIM:-}" ]; then
        cargo build --release -p containerd-shim-bulkhead-v2
        BULKHEAD_SHIM="$target/release/containerd-shim-bulkhead-v2"
    fi
    if [ -z "${BULKHEAD_VMM:-}" ]; then
        cargo build --release -p bulkhead-vmm --bin bulkhead-vmm
        BULKHEAD_VMM="$target/release/bulkhead-vmm"
    fi
    export BULKHEAD_KERNEL BULKHEAD_INITRD BULKHEAD_VIRTIOFSD BULKHEAD_SHIM BULKHEAD_VMM
    exec tests/harness/run-in-kvm.sh bash bench/shim.sh "$rounds"
fi

for v in BULKHEAD_KERNEL BULKHEAD_INITRD BULKHEAD_VMM BULKHEAD_VIRTIOFSD BULKHEAD_SHIM; do
    [ -f "${!v:-}" ] || { echo "shim.sh: $v must name a file" >&2; exit 2; }
done

# Everything on a fresh tmpfs (overlayfs cannot stack on the harness's 9p-backed /tmp).
work="$(mktemp -d /tmp/shim-bench.XXXXXX)"
mount -t tmpfs tmpfs "$work"
ns=bench
sock="$work/containerd.sock"
cpid=
cleanup() {
    set +e
    for id in $(ctr --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr --address "$sock" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
    done
    sleep 1
    for id in $(ctr --address "$sock" -n "$ns" containers ls -q 2>/dev/null); do
        ctr --address "$sock" -n "$ns" tasks rm -f "$id" >/dev/null 2>&1
        ctr --address "$sock" -n "$ns" containers rm "$id" >/dev/null 2>&1
    done
    [ -n "$cpid" ] && kill "$cpid" && wait "$cpid"
    # Below $work first (containerd's snapshots, the run root), then $work itself.
    grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -ru | xargs -r -n1 umount -l 2>/dev/null
    umount -l "$work"
}
trap cleanup EXIT

mkdir -p "$work/bin" "$work/root" "$work/state"
ln -s "$BULKHEAD_SHIM" "$work/bin/containerd-shim-bulkhead-v2"
cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$work/containerd.ttrpc"
EOF
cat >"$work/bulkhead.toml" <<EOF
run_root = "$work/bulkhead-run"
log_level = "warn"
[vm]
kernel = "$BULKHEAD_KERNEL"
initrd = "$BULKHEAD_INITRD"
vmm = "$BULKHEAD_VMM"
boot_timeout_secs = 300
[virtiofsd]
binary = "$BULKHEAD_VIRTIOFSD"
EOF
PATH="$work/bin:$PATH" BULKHEAD_CONFIG="$work/bulkhead.toml" \
    containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
cpid=$!
for _ in $(seq 900); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "containerd did not start" >&2; tail "$work/containerd.log"; exit 1; }
ctr() { command ctr --address "$sock" -n "$ns" "$@"; }

# A one-layer busybox image as an OCI archive.
image=docker.io/bulkhead/busybox:bench
img="$work/image"
mkdir -p "$img/rootfs/bin" "$img/layout/blobs/sha256"
for d in etc proc sys dev tmp root; do mkdir -p "$img/rootfs/$d"; done
cp /bin/busybox "$img/rootfs/bin/busybox"
for a in sh echo sleep cat true; do ln -s busybox "$img/rootfs/bin/$a"; done
blob() { # FILE -> "sha256:HEX SIZE", copied into the layout
    local d; d="$(sha256sum "$1" | cut -d' ' -f1)"
    cp "$1" "$img/layout/blobs/sha256/$d"
    echo "sha256:$d $(stat -c %s "$1")"
}
tar -C "$img/rootfs" --owner=0 --group=0 --numeric-owner -cf "$img/layer.tar" .
read -r ld ls < <(blob "$img/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$ld" >"$img/config.json"
read -r cd cs < <(blob "$img/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "$cd" "$cs" "$ld" "$ls" >"$img/manifest.json"
read -r md ms < <(blob "$img/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"io.containerd.image.name":"%s"}}]}' \
    "$md" "$ms" "$image" >"$img/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$img/layout/oci-layout"
tar -C "$img/layout" -cf "$img/busybox.tar" oci-layout index.json blobs
ctr images import "$img/busybox.tar" >/dev/null

# ms from `ctr run` to its first output line; the run must print "ready" and succeed.
first_output() { # RUNTIME ID
    local start end line
    start=$(date +%s%N)
    exec 3< <(ctr run --rm --runtime "$1" "$image" "$2" echo ready 2>&1)
    IFS= read -r line <&3 || true
    end=$(date +%s%N)
    cat <&3 >/dev/null
    exec 3<&-
    [ "$line" = ready ] || { echo "$1: unexpected output: $line" >&2; return 1; }
    echo $(((end - start) / 1000000))
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }

runc_ms=() bh_ms=()
first_output io.containerd.runc.v2 warm-runc >/dev/null # warm the caches, not counted
first_output io.containerd.bulkhead.v2 warm-bh >/dev/null
for i in $(seq "$rounds"); do
    r=$(first_output io.containerd.runc.v2 "runc-$i")
    b=$(first_output io.containerd.bulkhead.v2 "bh-$i")
    echo "round $i: runc ${r} ms, bulkhead ${b} ms"
    runc_ms+=("$r") bh_ms+=("$b")
done
rm_runc=$(printf '%s\n' "${runc_ms[@]}" | median)
rm_bh=$(printf '%s\n' "${bh_ms[@]}" | median)
echo "ctr run --rm to first output, median of $rounds: runc ${rm_runc} ms, bulkhead ${rm_bh} ms, ratio $(awk -v a="$rm_bh" -v b="$rm_runc" 'BEGIN {printf "%.1f", a/b}')x"

# Idle pod memory.
pss() { # PID... -> total PSS in KiB
    local t=0 p v
    for p in "$@"; do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
pids_of() { # WORD WORD -> pids whose command line holds both
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' ' ' <"$p/cmdline" | grep -q -- "$1" \
            && tr '\0' ' ' <"$p/cmdline" | grep -q -- "$2" && echo "${p#/proc/}"; } 2>/dev/null
    done
    return 0
}
ctr run -d --runtime io.containerd.bulkhead.v2 "$image" idle-bh sleep 100000 >/dev/null
ctr run -d --runtime io.containerd.runc.v2 "$image" idle-runc sleep 100000 >/dev/null
sleep 10 # let the guest settle
shim=$(pids_of containerd-shim-bulkhead-v2 "-namespace $ns")
vmm=$(pids_of bulkhead-vmm "$work/bulkhead-run")
fsd=$(pids_of virtiofsd "$work/bulkhead-run")
runc_shim=$(pids_of containerd-shim-runc-v2 "-namespace $ns")
# shellcheck disable=SC2086
{
    s=$(pss $shim) v=$(pss $vmm) f=$(pss $fsd) r=$(pss $runc_shim)
    echo "idle pod PSS: shim ${s} KiB (pids $(echo $shim)), VMM ${v} KiB (pid $(echo $vmm)), virtiofsd ${f} KiB (pids $(echo $fsd)), total $((s + v + f)) KiB"
    echo "runc for reference: containerd-shim-runc-v2 ${r} KiB (the container's own processes not counted)"
}
vmm1=$(echo $vmm | cut -d' ' -f1)
[ -n "$vmm1" ] && awk '/^(Rss|Pss|Pss_Anon|Pss_File|Pss_Shmem):/' "/proc/$vmm1/smaps_rollup" | tr -s ' ' | paste -sd' ' | sed 's/^/VMM detail: /'
echo "guest memory configured: $(tr '\0' ' ' </proc/"$vmm1"/cmdline | grep -o -- '--memory [0-9]*')"
