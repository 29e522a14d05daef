#!/bin/bash
# Pull + unpack benchmark: bulkhead vs skopeo+umoci, cold caches, interleaved.
# usage: bench/pull/run.sh [RUNS] [SCALE]   (root; needs docker-registry, skopeo, umoci)
set -euo pipefail
RUNS=${1:-3}
SCALE=${2:-1.0}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /var/tmp/bulkhead-bench.XXXXXX)
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
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

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
declare -a A B
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/s" "$WORK/u" "$WORK/oci" "$WORK/bundle"; cold
  t0=$(now)
  "$BULKHEAD" --root "$WORK/s" pull --plain-http "$REF" >/dev/null
  "$BULKHEAD" --root "$WORK/s" image unpack "$REF" "$WORK/u" >/dev/null
  t1=$(now); A+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$WORK/s" "$WORK/u"; cold
  t0=$(now)
  skopeo copy --quiet --src-tls-verify=false "docker://$REF" "oci:$WORK/oci:bench"
  umoci raw unpack --image "$WORK/oci:bench" "$WORK/bundle"
  t1=$(now); B+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$WORK/oci" "$WORK/bundle"
  echo "run $i: bulkhead ${A[-1]} s, skopeo+umoci ${B[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MA=$(median "${A[@]}"); MB=$(median "${B[@]}")
echo "median bulkhead pull+unpack: $MA s"
echo "median skopeo copy+umoci raw unpack: $MB s"
echo "speed-up: $(echo "scale=2; $MB / $MA" | bc)x"
