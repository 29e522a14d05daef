#!/bin/bash
# Build the Bulkhead guest kernel (vmlinux + bzImage) from Debian's
# linux-source-6.1 package: `make tinyconfig`, merge bulkhead.config, verify
# that every requested option survived `make olddefconfig`, build.
#
# The result is cached outside the clone at
#   ${BULKHEAD_CACHE:-/var/cache/bulkhead}/kernel/<hash>/{vmlinux,bzImage,config,release}
# where <hash> covers the fragment, this script and the linux-source package
# version. A cache hit returns immediately. The build runs in a temporary
# directory next to the cache entry and is renamed into place atomically.
#
# Usage: build-kernel.sh [--print-dir] [--jobs N]
#   --print-dir  print the cache directory for the current inputs and exit
#                (does not build; the directory may not exist yet)
#   --jobs N     make parallelism (default 3, env BULKHEAD_KERNEL_JOBS)
# On success the last line on stdout is the kernel directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fragment="$here/bulkhead.config"
script="$here/$(basename "${BASH_SOURCE[0]}")"
src_pkg="linux-source-6.1"
src_tar="/usr/src/linux-source-6.1.tar.xz"
cache_root="${BULKHEAD_CACHE:-/var/cache/bulkhead}/kernel"
jobs="${BULKHEAD_KERNEL_JOBS:-3}"
print_dir=0

while [ $# -gt 0 ]; do
    case "$1" in
        --print-dir) print_dir=1 ;;
        --jobs) jobs="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$script"; exit 0 ;;
        *) echo "build-kernel.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "build-kernel.sh: $*" >&2; exit 1; }

src_version="$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null)" \
    || die "package $src_pkg is not installed (run scripts/setup.sh)"
hash="$( { echo "fragment:"; cat "$fragment"; echo "script:"; cat "$script";
           echo "source:$src_pkg=$src_version"; } | sha256sum | cut -c1-16)"
out_dir="$cache_root/$hash"

if [ "$print_dir" = 1 ]; then
    echo "$out_dir"
    exit 0
fi
if [ -f "$out_dir/vmlinux" ] && [ -f "$out_dir/bzImage" ]; then
    echo "$out_dir"
    exit 0
fi

[ -f "$src_tar" ] || die "$src_tar missing (apt-get install $src_pkg)"
for tool in make gcc flex bison bc; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done

mkdir -p "$cache_root"
# One builder per cache entry; a second caller waits and then takes the hit.
exec 9>"$cache_root/.lock-$hash"
flock 9
if [ -f "$out_dir/vmlinux" ] && [ -f "$out_dir/bzImage" ]; then
    echo "$out_dir"
    exit 0
fi

work="$(mktemp -d "$cache_root/.build-$hash.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log="$work/build.log"
start=$(date +%s)
echo "build-kernel.sh: building $hash in $work (log: $log)" >&2

tar -C "$work" -xf "$src_tar"
ksrc="$work/linux-source-6.1"
kmake() { make -C "$ksrc" ARCH=x86_64 "$@" >>"$log" 2>&1 || {
    tail -n 40 "$log" >&2; die "make $* failed (full log: $log)"; }; }

kmake tinyconfig
(cd "$ksrc" && ARCH=x86_64 ./scripts/kconfig/merge_config.sh -m .config "$fragment") \
    >>"$log" 2>&1 || die "merge_config.sh failed"
kmake olddefconfig

# merge_config.sh and olddefconfig silently drop options whose dependencies
# are missing: check every line of the fragment against the result.
missing=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF "$line" "$ksrc/.config" || missing+=("${BASH_REMATCH[1]}=${BASH_REMATCH[2]} (got: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$ksrc/.config" || echo absent))")
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        if grep -qE "^${BASH_REMATCH[1]}=" "$ksrc/.config"; then
            missing+=("${BASH_REMATCH[1]} must be unset (got: $(grep -E "^${BASH_REMATCH[1]}=" "$ksrc/.config"))")
        fi
    fi
done <"$fragment"
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-kernel.sh: options requested in $fragment are not in the final .config" >&2
    echo "(usually an unmet dependency; fix the fragment):" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi

kmake -j"$jobs" vmlinux bzImage

stage="$work/out"
mkdir "$stage"
cp "$ksrc/vmlinux" "$stage/vmlinux"
cp "$ksrc/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$ksrc/.config" "$stage/config"
make -s -C "$ksrc" ARCH=x86_64 kernelrelease >"$stage/release" 2>/dev/null || true
echo "$src_pkg=$src_version built in $(( $(date +%s) - start ))s on $(date -u +%FT%TZ)" >"$stage/built"
cp "$log" "$stage/build.log"
mv -T "$stage" "$out_dir"
echo "build-kernel.sh: done in $(( $(date +%s) - start ))s: $out_dir" >&2
echo "$out_dir"
