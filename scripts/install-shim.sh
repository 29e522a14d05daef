#!/bin/sh
# Installs containerd-shim-bulkhead-v2 into /usr/local/bin (or $PREFIX/bin).
#
#   scripts/install-shim.sh            build (release) and install
#   scripts/install-shim.sh BINARY     install an already built binary
#
# For development; a release installs with its own install.sh (docs/install.md). For CRI,
# import release/containerd-bulkhead.toml into containerd's configuration.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/usr/local}
name=containerd-shim-bulkhead-v2

if [ $# -ge 1 ]; then
    bin=$1
else
    (cd "$root" && cargo build --release -p "$name")
    bin=$root/target/release/$name
fi
[ -x "$bin" ] || { echo "install-shim: $bin is not an executable" >&2; exit 1; }

install -d "$prefix/bin"
# containerd may be running the old binary: install to a temporary name, then rename.
install -m 0755 "$bin" "$prefix/bin/.$name.new"
mv -f "$prefix/bin/.$name.new" "$prefix/bin/$name"
echo "installed $prefix/bin/$name"
if [ ! -e /etc/bulkhead/config.toml ]; then
    echo "note: /etc/bulkhead/config.toml does not exist; the shim uses its defaults" \
         "(\"auto\": the build caches in /var/cache/bulkhead, then /opt/bulkhead/share/vmlinux," \
         "/opt/bulkhead/share/initramfs.cpio, bulkhead-vmm in PATH or /opt/bulkhead/bin; see config/bulkhead.toml)"
fi
