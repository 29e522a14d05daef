#!/usr/bin/env bash
# Builds bulkhead-agent as a fully static binary and packs it as /init in a
# reproducible newc initramfs (sorted entries, mtime 0, owner root), cached
# by content hash under ${BULKHEAD_CACHE:-/var/cache/bulkhead}/initramfs/.
# Prints the path of the .cpio on stdout; everything else goes to stderr.
#
# Needs: cargo, libseccomp-dev (static libseccomp.a), cpio, file; root for
# the device nodes (/dev/console, /dev/null).
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
workspace=$(dirname "$here")
cache_dir=${BULKHEAD_CACHE:-/var/cache/bulkhead}/initramfs

log() { echo "build-initramfs: $*" >&2; }

# The agent is built with the VMM and the shim (scripts/build-static.sh): one release
# build of their shared dependencies instead of two.
agent="$("$workspace/scripts/build-static.sh")/bulkhead-agent"

desc=$(file -L "$agent")
case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) log "agent is not static: $desc"; exit 1 ;;
esac

stage=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$stage" "$out"' EXIT

mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc,root}
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
# Stripped: the symbol tables are a sixth of the binary, and every boot unpacks the image.
install -m 0755 --strip "$agent" "$stage/init"
# The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3

find "$stage" -exec touch -h -d @0 {} +
(
    cd "$stage"
    find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --reproducible --owner=0:0 --quiet
) >"$out"

hash=$(sha256sum "$out" | cut -d' ' -f1)
mkdir -p "$cache_dir"
dest=$cache_dir/$hash.cpio
if [ ! -e "$dest" ]; then
    install -m 0644 "$out" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
fi
# The name `bulkhead run` looks for by default (config vm.initrd): the newest build.
ln -sfn "$hash.cpio" "$cache_dir/bulkhead-agent.cpio"
log "initramfs: $(stat -c %s "$dest") bytes"
echo "$dest"
