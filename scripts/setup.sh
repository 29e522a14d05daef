#!/bin/bash
# Idempotent set-up of a fresh Debian 12 machine (run as root) for building
# and testing Bulkhead: Debian packages, virtme-ng (level-1 VM for the KVM
# host harness), the guest kernel (cached, see kernel-config/), virtiofsd
# (pinned, cached) and the agent initramfs (cached by content hash).
# Quick when everything is present: apt is skipped if all packages are
# installed, pip if the pinned vng is there, the kernel build on a cache hit.
#
# Usage: scripts/setup.sh [--no-kernel]   (--no-kernel: packages and vng only)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
VIRTME_NG_VERSION="1.42"
build_kernel=1
[ "${1:-}" = "--no-kernel" ] && build_kernel=0

packages=(
    qemu-system-x86 busybox-static linux-image-amd64 linux-source-6.1
    flex bison bc libelf-dev libssl-dev cpio make gcc binutils
    libseccomp-dev libcap-ng-dev protobuf-compiler python3-pip file
    containerd runc docker-registry skopeo umoci iproute2 apache2-utils procps
    containernetworking-plugins iptables
    chromium
)

log() { echo "setup.sh: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }

# --- Debian packages ---
missing=()
for p in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
    [[ "$status" == ii* ]] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "debian packages: all present"
fi

# --- QEMU 10 from bookworm-backports for the KVM host harness ---
# Under bookworm's QEMU 7.2 the harness's level-1 VM froze now and then (a lost CI run is
# 90 minutes); QEMU 10 with nested paging did not, and ran the end-to-end tests about twice
# as fast (docs/harness.md, "QEMU version"). BULKHEAD_HARNESS_QEMU=stock keeps bookworm's.
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n 1; }
if [ "${BULKHEAD_HARNESS_QEMU:-backports}" = backports ] && [ "$(qemu_major)" -lt 10 ] 2>/dev/null; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding Debian's bookworm-backports suite (for QEMU 10)"
        cat >/etc/apt/sources.list.d/bulkhead-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
fi
log "harness QEMU: $(qemu-system-x86_64 --version | head -n 1)"

# --- virtme-ng (vng) ---
# pip may be pyenv's (/root/.pyenv) or Debian's; the harness looks in both.
find_vng() {
    local c
    for c in "$(command -v vng 2>/dev/null || true)" /root/.pyenv/shims/vng \
             /root/.pyenv/versions/*/bin/vng "$HOME/.local/bin/vng" /usr/local/bin/vng; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}
vng_version() { "$1" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+)+' | head -n 1; }

vng="$(find_vng || true)"
if [ -n "$vng" ] && [ "$(vng_version "$vng")" = "$VIRTME_NG_VERSION" ]; then
    log "virtme-ng $VIRTME_NG_VERSION: present ($vng)"
else
    pip="$(command -v pip3 || command -v pip || true)"
    [ -n "$pip" ] || { log "no pip found"; exit 1; }
    log "installing virtme-ng==$VIRTME_NG_VERSION with $pip"
    # Debian's own pip refuses system-wide installs (PEP 668) without the flag.
    "$pip" install -q "virtme-ng==$VIRTME_NG_VERSION" \
        || "$pip" install -q --break-system-packages "virtme-ng==$VIRTME_NG_VERSION"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
    vng="$(find_vng)" || { log "vng not found after pip install"; exit 1; }
    log "vng: $vng ($(vng_version "$vng"))"
fi

# --- guest kernel ---
if [ "$build_kernel" = 1 ]; then
    kdir="$("$root/kernel-config/build-kernel.sh" | tail -n 1)"
    log "guest kernel: $kdir"
fi
# --- virtiofsd (crates.io, pinned) and the guest agent's initramfs ---
if [ "$build_kernel" = 1 ]; then
    log "virtiofsd: $("$root/scripts/install-virtiofsd.sh" | tail -n 1)"
    log "agent initramfs: $("$root/guest-agent/build-initramfs.sh" | tail -n 1)"
fi
log "done"
