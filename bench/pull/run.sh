#!/bin/bash
# Pull + unpack benchmark, cold caches, interleaved runs:
#   A: bulkhead pull + bulkhead image unpack (flattened rootfs on disk)
#   B: skopeo copy + umoci raw unpack         (flattened rootfs on disk)
#   C: ctr images pull (containerd 1.6, own root and state on a tmpfs,
#      unpacked into its overlayfs snapshotter), when containerd is installed
# usage: bench/pull/run.sh [RUNS] [SCALE]   (root; needs docker-registry, skopeo, umoci)
set -euo pipefail
RUNS=${1:-3}
SCALE=${2:-1.0}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /var/tmp/bulkhead-bench.XXXXXX)
REG_PID=
CTRD_PID=
CTR_TMPFS="$WORK/ctr"
stop_containerd() {
  if [ -n "$CTRD_PID" ]; then kill "$CTRD_PID" 2>/dev/null || true; wait "$CTRD_PID" 2>/dev/null || true; CTRD_PID=; fi
  if mountpoint -q "$CTR_TMPFS" 2>/dev/null; then
    # snapshots may still be mounted by nothing, but be safe
    umount -R "$CTR_TMPFS" 2>/dev/null || true
  fi
}
cleanup() {
  stop_containerd
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$REPO" && cargo build --release -q -p bulkhead-cli)
BULKHEAD="$REPO/target/release/bulkhead"

python3 "$HERE/gen_image.py" "$WORK/layout" "$SCALE"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/reg.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$WORK/reg.yml" >/dev/null 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/layout:bench" "docker://127.0.0.1:$PORT/bench:1"
REF="127.0.0.1:$PORT/bench:1"

HAVE_CTR=
command -v containerd >/dev/null && command -v ctr >/dev/null && HAVE_CTR=1
start_containerd() {
  mkdir -p "$CTR_TMPFS"
  mount -t tmpfs -o size=4g tmpfs "$CTR_TMPFS"
  cat > "$CTR_TMPFS/config.toml" <<TOML
version = 2
root = "$CTR_TMPFS/root"
state = "$CTR_TMPFS/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTR_TMPFS/containerd.sock"
TOML
  containerd --config "$CTR_TMPFS/config.toml" >"$WORK/containerd.log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 100); do ctr --address "$CTR_TMPFS/containerd.sock" version >/dev/null 2>&1 && return; sleep 0.1; done
  echo "containerd did not start:" >&2; cat "$WORK/containerd.log" >&2; exit 1
}

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
declare -a A B C
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/s" "$WORK/u" "$WORK/oci" "$WORK/bundle"; cold
  t0=$(now)
  "$BULKHEAD" --root "$WORK/s" pull --plain-http "$REF" >/dev/null
  "$BULKHEAD" --root "$WORK/s" image unpack "$REF" "$WORK/u" >/dev/null
  t1=$(now); A+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$WORK/s" "$WORK/u"; cold
  t0=$(now)
  skopeo copy --quiet --src-tls-verify=false "docker://$REF" "oci:$WORK/oci:bench"
  umoci raw unpack --image "$WORK/oci:bench" "$WORK/bundle" >/dev/null 2>&1
  t1=$(now); B+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$WORK/oci" "$WORK/bundle"
  line="run $i: bulkhead ${A[-1]} s, skopeo+umoci ${B[-1]} s"
  if [ -n "$HAVE_CTR" ]; then
    start_containerd; cold   # containerd is up before the clock starts
    t0=$(now)
    ctr --address "$CTR_TMPFS/containerd.sock" images pull --plain-http "$REF" >/dev/null
    t1=$(now); C+=("$(echo "$t1 - $t0" | bc)")
    stop_containerd
    line="$line, ctr ${C[-1]} s"
  fi
  echo "$line (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MA=$(median "${A[@]}"); MB=$(median "${B[@]}")
echo "median bulkhead pull+unpack: $MA s"
echo "median skopeo copy+umoci raw unpack: $MB s (x$(echo "scale=2; $MB / $MA" | bc) vs bulkhead)"
if [ -n "$HAVE_CTR" ]; then
  MC=$(median "${C[@]}")
  echo "median ctr images pull (root on tmpfs): $MC s (x$(echo "scale=2; $MC / $MA" | bc) vs bulkhead)"
fi
