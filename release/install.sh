#!/bin/sh
# Installs Bulkhead from this release directory (run as root):
#
#   ./install.sh [--configure-containerd] [--no-containerd]
#
#   /opt/bulkhead/bin/        bulkhead, bulkhead-vmm, containerd-shim-bulkhead-v2,
#                             bulkhead-agent (container isolation), bulkhead-probe
#                             (bulkhead compare), virtiofsd
#   /opt/bulkhead/share/      vmlinux, initramfs.cpio, defaults.toml (vendor defaults),
#                             containerd-bulkhead.toml, runtimeclass.yaml, doc/, uninstall.sh
#   /usr/local/bin/           links: bulkhead, containerd-shim-bulkhead-v2 (containerd finds
#                             the shim in its PATH)
#   /etc/containerd/conf.d/bulkhead.toml   the containerd drop-in (unless --no-containerd)
#
# --configure-containerd also makes /etc/containerd/config.toml import conf.d/*.toml: a
# new file when there is none, else one line added after `version` (the original kept as
# config.toml.before-bulkhead, restored by uninstall). Restart containerd afterwards.
# /etc/bulkhead/config.toml is the administrator's and is left
# alone. Upgrading is running a newer release's install.sh: files are replaced by rename
# (running shims keep their binary), and what the old release had and this one has not
# is removed. /opt/bulkhead/share/uninstall.sh removes exactly what install.sh installed
# (listed in /opt/bulkhead/share/install-manifest).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/bulkhead
links=/usr/local/bin
dropin_dir=/etc/containerd/conf.d
containerd=yes
configure_containerd=no
for arg in "$@"; do
    case "$arg" in
        --no-containerd) containerd=no ;;
        --configure-containerd) configure_containerd=yes ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
(cd "$here" && sha256sum --quiet -c SHA256SUMS) ||
    { echo "install.sh: the release's files do not match SHA256SUMS" >&2; exit 1; }
# virtiofsd is the one binary linked against shared libraries.
for lib in libseccomp.so.2 libcap-ng.so.0; do
    ldconfig -p | grep -q "$lib" ||
        { echo "install.sh: virtiofsd needs $lib (Debian/Ubuntu: apt install libseccomp2 libcap-ng0)" >&2; exit 1; }
done

manifest=$prefix/share/install-manifest
old_manifest=""
if [ -f "$manifest" ]; then
    old_manifest=$(mktemp)
    cp "$manifest" "$old_manifest"
    echo "upgrading $(cat "$prefix/share/VERSION" 2>/dev/null || echo "an earlier release")"
fi
new_manifest=$(mktemp)
trap 'rm -f "$new_manifest" ${old_manifest:+"$old_manifest"}' EXIT

# Directories: recorded only when this script creates them (removed again if empty).
make_dir() {
    if [ ! -d "$1" ]; then
        mkdir -p "$1"
        echo "$1/" >>"$new_manifest"
    elif [ -n "$old_manifest" ] && grep -qxF "$1/" "$old_manifest"; then
        echo "$1/" >>"$new_manifest"
    fi
}
# A file: copied beside its destination, then renamed over it.
put() { # mode source destination
    tmp="$(dirname "$3")/.$(basename "$3").new"
    install -m "$1" "$2" "$tmp"
    mv -f "$tmp" "$3"
    echo "$3" >>"$new_manifest"
}
link() { # target link
    ln -sfn "$1" "$2.new" && mv -Tf "$2.new" "$2"
    echo "$2" >>"$new_manifest"
}

# Makes containerd's config.toml import the drop-in: a new file when there is none; else
# the `imports` line goes in after `version`, and the original is kept as
# config.toml.before-bulkhead (in the manifest: uninstall.sh puts it back).
configure_containerd() {
    config=/etc/containerd/config.toml
    backup=$config.before-bulkhead
    imports="imports = [\"$dropin_dir/*.toml\"]"
    if [ ! -e "$config" ]; then
        printf 'version = 2\n%s\n' "$imports" >"$config.new"
        mv "$config.new" "$config"
        echo "$config" >>"$new_manifest"
    elif grep -qF "$dropin_dir/" "$config"; then
        [ -e "$backup" ] && echo "$backup" >>"$new_manifest"
        [ -n "$old_manifest" ] && grep -qxF "$config" "$old_manifest" && echo "$config" >>"$new_manifest"
        return 0
    elif grep -q '^imports' "$config"; then
        echo "install.sh: $config already has an imports line: add \"$dropin_dir/*.toml\" to it" >&2
    else
        cp -p "$config" "$backup"
        awk -v line="$imports" '{ print } /^version *=/ && !done { print line; done = 1 }' \
            "$backup" >"$config.new"
        grep -qF "$imports" "$config.new" || printf '%s\n' "$imports" | cat - "$backup" >"$config.new"
        mv "$config.new" "$config"
        echo "$backup" >>"$new_manifest"
    fi
}

for d in "$prefix" "$prefix/bin" "$prefix/share" "$prefix/share/doc"; do make_dir "$d"; done
for b in bulkhead bulkhead-vmm containerd-shim-bulkhead-v2 bulkhead-agent bulkhead-probe virtiofsd; do
    put 0755 "$here/bin/$b" "$prefix/bin/$b"
done
for f in vmlinux initramfs.cpio defaults.toml containerd-bulkhead.toml runtimeclass.yaml seccomp-default.json VERSION; do
    put 0644 "$here/share/$f" "$prefix/share/$f"
done
put 0755 "$here/uninstall.sh" "$prefix/share/uninstall.sh"
for f in "$here"/doc/*; do put 0644 "$f" "$prefix/share/doc/$(basename "$f")"; done
make_dir "$links"
link "$prefix/bin/bulkhead" "$links/bulkhead"
link "$prefix/bin/containerd-shim-bulkhead-v2" "$links/containerd-shim-bulkhead-v2"
if [ "$containerd" = yes ]; then
    make_dir "$dropin_dir"
    put 0644 "$here/share/containerd-bulkhead.toml" "$dropin_dir/bulkhead.toml"
    if [ "$configure_containerd" = yes ]; then
        configure_containerd
    fi
fi

# What the old release installed and this one did not: removed (files first, then the
# directories that are empty).
if [ -n "$old_manifest" ]; then
    grep -vxF -f "$new_manifest" "$old_manifest" | grep -v '/$' | while IFS= read -r f; do
        rm -f "$f"
    done
fi
# The manifest lists itself last, so uninstall removes it too.
echo "$manifest" >>"$new_manifest"
install -m 0644 "$new_manifest" "$manifest"

echo "installed Bulkhead $(cat "$prefix/share/VERSION") in $prefix"
if [ "$containerd" = yes ] && ! grep -qs "$dropin_dir/" /etc/containerd/config.toml; then
    echo "note: /etc/containerd/config.toml does not import $dropin_dir/*.toml: run"
    echo "      install.sh --configure-containerd, or add the runtimes.bulkhead table of"
    echo "      $dropin_dir/bulkhead.toml to it; then restart containerd"
fi
echo "check the installation: bulkhead check"
