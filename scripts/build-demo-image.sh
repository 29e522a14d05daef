#!/bin/sh
# Builds the demo image `bulkhead/demo:latest` offline: Debian's busybox-static
# (/bin/busybox, package busybox-static) with its applets, /etc/passwd,
# /etc/group and /etc/os-release, as a one-layer OCI image layout, then imports it into the
# bulkhead store.
#
# Usage: scripts/build-demo-image.sh [--no-import] [OUT_DIR]
#   OUT_DIR     the OCI layout (default /var/cache/bulkhead/demo-image)
#   --no-import only write the layout
# Environment: BULKHEAD (the bulkhead binary, default: `bulkhead` in PATH, else
# target/{release,debug}/bulkhead), BUSYBOX (default /bin/busybox).
#
# The layer is reproducible: sorted entries, mtime 0, uid/gid 0, gzip -n.
set -eu

import=1
if [ "${1:-}" = "--no-import" ]; then import=0; shift; fi
out="${1:-/var/cache/bulkhead/demo-image}"
busybox="${BUSYBOX:-/bin/busybox}"
ref="bulkhead/demo:latest"

if [ ! -x "$busybox" ]; then
    echo "build-demo-image: $busybox not found: apt-get install busybox-static" >&2
    exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "build-demo-image: $busybox is not statically linked (install busybox-static)" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/proc" "$root/sys" \
         "$root/dev" "$root/run" "$root/var" "$root/home"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
cat > "$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/home:/bin/false
PW
cat > "$root/etc/group" <<'GR'
root:x:0:
nogroup:x:65534:
GR
echo bulkhead-demo > "$root/etc/hostname"
cat > "$root/etc/os-release" <<'OS'
NAME="Bulkhead demo"
ID=bulkhead-demo
PRETTY_NAME="Bulkhead demo image (busybox-static)"
HOME_URL="https://busybox.net/"
OS

blobs="$work/layout/blobs/sha256"
mkdir -p "$blobs"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$root" -cf "$work/layer.tar" .
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
gzip -n -9 -c "$work/layer.tar" > "$work/layer.tar.gz"
layer="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
layer_size="$(stat -c %s "$work/layer.tar.gz")"
mv "$work/layer.tar.gz" "$blobs/$layer"

printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},"history":[{"created_by":"scripts/build-demo-image.sh (busybox-static)"}]}' > "$work/config.json"
config="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
config_size="$(stat -c %s "$work/config.json")"
mv "$work/config.json" "$blobs/$config"

printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer"'","size":'"$layer_size"'}]}' > "$work/manifest.json"
manifest="$(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
manifest_size="$(stat -c %s "$work/manifest.json")"
mv "$work/manifest.json" "$blobs/$manifest"

printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest"'","size":'"$manifest_size"',"annotations":{"org.opencontainers.image.ref.name":"'"$ref"'"}}]}' > "$work/layout/index.json"

mkdir -p "$(dirname "$out")"
rm -rf "$out.new"
mv "$work/layout" "$out.new"
rm -rf "$out"
mv "$out.new" "$out"
echo "OCI layout: $out (manifest sha256:$manifest)"

[ "$import" = 1 ] || exit 0
bin="${BULKHEAD:-}"
if [ -z "$bin" ]; then
    if command -v bulkhead >/dev/null 2>&1; then bin=bulkhead
    else
        here="$(cd "$(dirname "$0")/.." && pwd)"
        for b in "$here/target/release/bulkhead" "$here/target/debug/bulkhead"; do
            if [ -x "$b" ]; then bin="$b"; break; fi
        done
    fi
fi
if [ -z "$bin" ]; then
    echo "build-demo-image: no bulkhead binary (set BULKHEAD=...)" >&2
    exit 1
fi
"$bin" image import --oci-layout "$out" "$ref"
