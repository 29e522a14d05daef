#!/bin/bash
# Pull + unpack benchmark, cold caches, interleaved runs:
#   A: bulkhead pull + bulkhead image unpack (flattened rootfs on disk)
#   B: skopeo copy + umoci raw unpack         (flattened rootfs on disk)
#   C: ctr images pull (containerd 1.6, own root and state on a tmpfs,
#      unpacked into its overlayfs snapshotter), when containerd is installed
#   base: BASE_BULKHEAD=/path/to/an/older/bulkhead adds a column (A/B of builds)
# Wall seconds and CPU seconds (user+sys of the commands; independent of
# other load on the machine) are reported; the load average is printed per run.
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
daemon_ticks() { awk '{print $14 + $15}' "/proc/$CTRD_PID/stat"; }
TIMEFORMAT='%R %U %S'
# timed NAME CMD...: runs CMD (a shell snippet) and appends "wall cpu" to $WORK/t.NAME
timed() {
  local name=$1; shift
  local t; t=$( { time bash -c "$*" >/dev/null 2>&1; } 2>&1 ) || { echo "$name failed" >&2; exit 1; }
  echo "$t" | awk '{printf "%.2f %.2f\n", $1, $2 + $3}' >> "$WORK/t.$name"
}
last() { tail -1 "$WORK/t.$1" | awk '{printf "%s s (cpu %s s)", $1, $2}'; }
bulkhead_run() { # BINARY
  rm -rf "$WORK/s" "$WORK/u"; cold
  timed "$2" "'$1' --root '$WORK/s' pull --plain-http '$REF' && '$1' --root '$WORK/s' image unpack '$REF' '$WORK/u'"
  rm -rf "$WORK/s" "$WORK/u"
}
for i in $(seq "$RUNS"); do
  bulkhead_run "$BULKHEAD" bulkhead
  line="run $i: bulkhead $(last bulkhead)"
  if [ -n "${BASE_BULKHEAD:-}" ]; then
    bulkhead_run "$BASE_BULKHEAD" base
    line="$line, base $(last base)"
  fi
  rm -rf "$WORK/oci" "$WORK/bundle"; cold
  timed skopeo "skopeo copy --quiet --src-tls-verify=false 'docker://$REF' 'oci:$WORK/oci:bench' && umoci raw unpack --image '$WORK/oci:bench' '$WORK/bundle'"
  rm -rf "$WORK/oci" "$WORK/bundle"
  line="$line, skopeo+umoci $(last skopeo)"
  if [ -n "$HAVE_CTR" ]; then
    start_containerd; cold   # containerd is up before the clock starts
    d0=$(daemon_ticks)
    timed ctr "ctr --address '$CTR_TMPFS/containerd.sock' images pull --plain-http '$REF'"
    d1=$(daemon_ticks)
    # the daemon does the work: add its CPU time to the client's
    awk -v d=$((d1 - d0)) -v hz="$(getconf CLK_TCK)" '{l=$0} END {split(l, f, " "); printf "%s %.2f\n", f[1], f[2] + d / hz}' "$WORK/t.ctr" > "$WORK/t.ctr.last"
    sed -i '$d' "$WORK/t.ctr"; cat "$WORK/t.ctr.last" >> "$WORK/t.ctr"
    stop_containerd
    line="$line, ctr $(last ctr)"
  fi
  echo "$line (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
med() { awk "{print \$$2}" "$WORK/t.$1" | median; }
MA=$(med bulkhead 1); CA=$(med bulkhead 2)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
report() { # NAME LABEL
  local w c; w=$(med "$1" 1); c=$(med "$1" 2)
  echo "median $2: $w s wall (x$(ratio "$w" "$MA")), $c s cpu (x$(ratio "$c" "$CA"))"
}
echo "median bulkhead pull+unpack: $MA s wall, $CA s cpu"
[ -n "${BASE_BULKHEAD:-}" ] && report base "base bulkhead pull+unpack"
report skopeo "skopeo copy+umoci raw unpack"
[ -n "$HAVE_CTR" ] && report ctr "ctr images pull (root on tmpfs)"
exit 0
