#!/usr/bin/env bash
# Builds the release tarball target/dist/bulkhead-<version>-x86_64.tar.gz (or in
# $BULKHEAD_DIST) and prints its path as the last line on stdout:
#
#   bulkhead-<version>/
#     install.sh, uninstall.sh, SHA256SUMS
#     bin/    bulkhead, bulkhead-vmm, containerd-shim-bulkhead-v2, bulkhead-agent, bulkhead-probe (static;
#             the agent is also the initramfs's /init, and serves `bulkhead run
#             --isolation container` on the host), virtiofsd
#             (linked against libseccomp.so.2 and libcap-ng.so.0: a static glibc build of
#             it crashes before main, so install.sh checks that the host has both)
#     share/  vmlinux (guest kernel), initramfs.cpio (the static bulkhead-agent as /init),
#             defaults.toml (vendor defaults), containerd-bulkhead.toml (containerd drop-in),
#             runtimeclass.yaml (Kubernetes RuntimeClass), VERSION
#     doc/    README.md, install.md, config-reference.toml, CHANGELOG.md, LICENSE
#
# Everything comes from the project's own cached builds (scripts/build-static.sh,
# kernel-config/build-kernel.sh, guest-agent/build-initramfs.sh,
# scripts/install-virtiofsd.sh): run after scripts/setup.sh, it only packs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
dist="${BULKHEAD_DIST:-$root/target/dist}"
name="bulkhead-$version"

release="$(scripts/build-static.sh)"
kernel="$(kernel-config/build-kernel.sh --print-dir)/vmlinux"
initrd="$(guest-agent/build-initramfs.sh | tail -n 1)"
virtiofsd="$(scripts/install-virtiofsd.sh | tail -n 1)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
d="$stage/$name"
mkdir -p "$d/bin" "$d/share" "$d/doc"
for b in bulkhead bulkhead-vmm containerd-shim-bulkhead-v2 bulkhead-agent bulkhead-probe; do
    install -m 0755 "$release/$b" "$d/bin/$b"
done
install -m 0755 "$virtiofsd" "$d/bin/virtiofsd"
for b in "$d"/bin/bulkhead*  "$d"/bin/containerd-shim-bulkhead-v2; do
    # A release runs on hosts without our build's libraries: our binaries are static.
    if readelf -l "$b" | grep -q "program interpreter"; then
        echo "release.sh: $b is dynamically linked" >&2
        exit 1
    fi
done
install -m 0644 "$kernel" "$d/share/vmlinux"
install -m 0644 "$initrd" "$d/share/initramfs.cpio"
install -m 0644 release/defaults.toml release/containerd-bulkhead.toml release/runtimeclass.yaml "$d/share/"
install -m 0644 config/seccomp/default.json "$d/share/seccomp-default.json"
echo "$version (commit $commit)" >"$d/share/VERSION"
install -m 0755 release/install.sh release/uninstall.sh "$d/"
install -m 0644 README.md docs/install.md CHANGELOG.md LICENSE "$d/doc/"
install -m 0644 config/bulkhead.toml "$d/doc/config-reference.toml"
(cd "$d" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum >SHA256SUMS)

mkdir -p "$dist"
tarball="$dist/$name-x86_64.tar.gz"
# Reproducible: fixed owner, order and times.
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@0" \
    -cf - "$name" | gzip -n -6 >"$tarball.tmp"
mv "$tarball.tmp" "$tarball"
echo "release.sh: $(du -h "$tarball" | cut -f1) $tarball ($version, commit $commit)" >&2
echo "$tarball"
