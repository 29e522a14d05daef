#!/bin/bash
# Benchmark: TCP throughput and request/response latency between the host and a server in
#   ours      bulkhead-vmm, virtio-net on a tap (--net tap=...), our kernel + a netbench initramfs
#   ours-vhost  the same with --net tap=...,vhost=on (the kernel's vhost-net), if /dev/vhost-net
#   qemu      QEMU -M microvm,rtc=on with virtio-net-device on the same kind of tap, vhost=off
#   qemu-vhost  the same with vhost=on (the kernel's vhost-net data path), if /dev/vhost-net
#   cli-vm    `bulkhead run --isolation vm` on the default bridge (veth + tc mirred + tap)
#   cli-ctr   `bulkhead run --isolation container` on the same bridge (veth only)
# N interleaved rounds in ONE harness boot. The probe is bench/netbench (static): `stream`
# (5 s of bulk TCP to the server) and `rr` (2000 one-byte round trips).
#
# Usage: bench/net.sh [--rounds N] [--no-build]      (default 5 rounds; as root)
#   Results: target/bench-net/{runs.tsv,summary.txt}.
# Internal: bench/net.sh --inside ROUNDS OUT_DIR
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
static_dir="$target/x86_64-unknown-linux-gnu/release"
netbench="$static_dir/netbench"
bulkhead="${BULKHEAD_BIN:-$target/release/bulkhead}"
vmm="$(dirname "$bulkhead")/bulkhead-vmm"
image="bulkhead/demo:latest"
layout="${BULKHEAD_CACHE:-/var/cache/bulkhead}/demo-image"
tap=bhnet0
host_ip=10.89.252.1
guest_ip=10.89.252.2
port=5201
stream_secs="${BENCH_NET_STREAM_SECS:-5}"
rr_count="${BENCH_NET_RR_COUNT:-2000}"

if [ "${1:-}" = --inside ]; then
    rounds="$2" out="$3"
    kernel="$(kernel-config/build-kernel.sh --print-dir)/vmlinux"
    base="$(mktemp -d /tmp/bulkhead-bench-net.XXXXXX)"
    export BULKHEAD_ROOT="$base/store" BULKHEAD_RUN_ROOT="$base/run"
    modprobe vhost_net 2>/dev/null || true
    modprobe tun 2>/dev/null || true
    cleanup() {
        pkill -f "bhnet-bench" 2>/dev/null || true
        ip link del "$tap" 2>/dev/null || true
        for id in $("$bulkhead" ps -q 2>/dev/null); do "$bulkhead" rm -f "$id" >/dev/null 2>&1 || true; done
        umount "$base/run/sandboxes" 2>/dev/null || true
        rm -rf "$base" || true
    }
    trap cleanup EXIT

    # The netbench initramfs: busybox, netbench, an init that sets the address and serves.
    ird="$base/initramfs"
    mkdir -p "$ird/bin" "$ird/proc" "$ird/sys" "$ird/dev"
    cp /bin/busybox "$ird/bin/busybox"
    cp "$netbench" "$ird/bin/netbench"
    for a in sh ip mount sleep; do ln -s busybox "$ird/bin/$a"; done
    cat >"$ird/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
ip link set lo up
ip addr add $guest_ip/24 dev eth0
ip link set eth0 up
echo BHNET-READY
exec /bin/netbench serve $port
EOF
    chmod +x "$ird/init"
    (cd "$ird" && find . | cpio -o -H newc --quiet) >"$base/netbench.cpio"

    "$bulkhead" image import --oci-layout "$layout" "$image" >/dev/null
    mkdir -p "$base/nb"
    cp "$netbench" "$base/nb/netbench"
    echo "bench: $(nproc) CPUs, kernel $(uname -r), harness=${BULKHEAD_IN_HARNESS:-0}," \
        "vhost-net: $([ -c /dev/vhost-net ] && echo yes || echo no)" >&2
    printf 'case\tround\tmetric\tvalue\n' >"$out/runs.tsv"

    cmdline="console=ttyS0 reboot=k panic=1 pci=off"
    new_tap() {
        ip link del "$tap" 2>/dev/null || true
        ip tuntap add dev "$tap" mode tap vnet_hdr
        ip addr add "$host_ip/24" dev "$tap"
        ip link set "$tap" up
    }
    probe() { # CASE ROUND ADDR
        local line
        for line in $("$netbench" stream "$3" "$stream_secs" | tr ' ' '='); do
            printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${line%%=*}" "${line#*=}" >>"$out/runs.tsv"
        done
        for line in $("$netbench" rr "$3" "$rr_count" | tr ' ' '='); do
            printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${line%%=*}" "${line#*=}" >>"$out/runs.tsv"
        done
        echo "bench: $1 round $2 done" >&2
    }
    vm_case() { # CASE ROUND COMMAND...
        local case="$1" round="$2" pid
        shift 2
        new_tap
        "$@" >"$out/$case-$round.console" 2>&1 &
        pid=$!
        # A slow (nested) boot can outlast netbench's 30 s connect deadline: wait for the
        # server's line on the console first (3 minutes at most).
        for _ in $(seq 1 360); do
            grep -q "listening on" "$out/$case-$round.console" && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        probe "$case" "$round" "$guest_ip:$port" || echo "bench: $case round $round failed" >&2
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        ip link del "$tap" 2>/dev/null || true
    }
    cli_case() { # CASE ROUND ISOLATION
        local id ip
        id="$("$bulkhead" run -d -q --isolation "$3" -v "$base/nb:/nb:ro" "$image" \
            /nb/netbench serve "$port")"
        ip="$("$bulkhead" inspect "$id" | python3 -c '
import json, sys
print(json.load(sys.stdin)[0]["network_settings"]["ip_address"])')"
        if [ -n "$ip" ]; then
            probe "$1" "$2" "$ip:$port" || echo "bench: $1 round $2 failed" >&2
        else
            echo "bench: $1: no address in inspect" >&2
        fi
        "$bulkhead" rm -f "$id" >/dev/null 2>&1 || true
    }
    for r in $(seq 1 "$rounds"); do
        vm_case ours "$r" "$vmm" --kernel "$kernel" --initrd "$base/netbench.cpio" --vcpus 1 \
            --memory 256 --serial stdout --cmdline "$cmdline bhnet-bench" --net "tap=$tap"
        if [ -c /dev/vhost-net ]; then
            vm_case ours-vhost "$r" "$vmm" --kernel "$kernel" --initrd "$base/netbench.cpio" \
                --vcpus 1 --memory 256 --serial stdout --cmdline "$cmdline bhnet-bench" \
                --net "tap=$tap,vhost=on"
        fi
        for vhost in off on; do
            [ "$vhost" = on ] && [ ! -c /dev/vhost-net ] && continue
            name=qemu; [ "$vhost" = on ] && name=qemu-vhost
            vm_case "$name" "$r" qemu-system-x86_64 -M microvm,rtc=on,acpi=off -enable-kvm \
                -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none \
                -serial stdio -no-reboot -kernel "$kernel" -initrd "$base/netbench.cpio" \
                -append "$cmdline bhnet-bench" \
                -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vhost=$vhost" \
                -device virtio-net-device,netdev=n0
        done
        cli_case cli-vm "$r" vm
        cli_case cli-ctr "$r" container
    done
    exit 0
fi

rounds=5 build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "usage: bench/net.sh [--rounds N] [--no-build]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/net.sh: run as root" >&2; exit 1; }
if [ "$build" = 1 ]; then
    cargo build --release -p bulkhead-cli -p bulkhead-vmm -p bulkhead-agent
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
        --target x86_64-unknown-linux-gnu -p bulkhead-netbench
fi
BULKHEAD="$bulkhead" scripts/build-demo-image.sh --no-import "$layout" >&2
out="$target/bench-net"
rm -rf "$out"
mkdir -p "$out"
tests/harness/run-in-kvm.sh bench/net.sh --inside "$rounds" "$out" \
    || echo "bench/net.sh: the harness run failed; summarising what was measured" >&2
[ -s "$out/runs.tsv" ] || exit 1

python3 - "$out/runs.tsv" "$rounds" >"$out/summary.txt" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cases = ["ours", "ours-vhost", "qemu", "qemu-vhost", "cli-vm", "cli-ctr"]
vals = {}
for r in rows:
    vals.setdefault((r["case"], r["metric"]), []).append(float(r["value"]))
med = lambda c, m: statistics.median(vals[(c, m)]) if (c, m) in vals else None
metrics = [("stream_mbit_s", "TCP stream, Mbit/s (host -> guest)"),
           ("rr_median_us", "1-byte round trip, median us"),
           ("rr_p99_us", "1-byte round trip, p99 us")]
print(f"bench/net.sh, {sys.argv[2]} interleaved rounds, medians")
print(f"{'':38}" + "".join(f"{c:>12}" for c in cases))
for m, title in metrics:
    cells = []
    for c in cases:
        v = med(c, m)
        cells.append(f"{v:>12.1f}" if v is not None else f"{'-':>12}")
    print(f"{title:38}" + "".join(cells))
def ratio(a, b, m):
    x, y = med(a, m), med(b, m)
    return f"{x / y:.2f}x" if x and y else "-"
for a, b in [("ours", "qemu"), ("ours", "qemu-vhost"), ("ours-vhost", "qemu-vhost"),
             ("ours", "ours-vhost"), ("cli-vm", "cli-ctr")]:
    print(f"{a} / {b}: throughput {ratio(a, b, 'stream_mbit_s')}, "
          f"latency {ratio(a, b, 'rr_median_us')}")
EOF
cat "$out/summary.txt"
