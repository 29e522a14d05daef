#!/usr/bin/env bash
# Installs the real virtiofsd (the vhost-user-fs backend Bulkhead's VMM talks to) at a
# pinned version into a cache outside the clone. Idempotent: does nothing when the binary
# is already there. Prints the binary's path on stdout as its last line.
#
#   scripts/install-virtiofsd.sh            linked against the system's libseccomp and
#                                           libcap-ng (the tests use this one)
#   scripts/install-virtiofsd.sh --static   a fully static build, for the release tarball
#                                           (virtiofsd-<version>-static)
#
# Environment:
#   BULKHEAD_CACHE   cache root (default /var/cache/bulkhead)
set -euo pipefail

VIRTIOFSD_VERSION=1.14.0
CACHE="${BULKHEAD_CACHE:-/var/cache/bulkhead}"
static=no
[[ "${1:-}" == --static ]] && static=yes
ROOT="${CACHE}/virtiofsd-${VIRTIOFSD_VERSION}"
[[ $static == yes ]] && ROOT="${ROOT}-static"
BIN="${ROOT}/bin/virtiofsd"

if [[ -x "${BIN}" ]]; then
    echo "${BIN}"
    exit 0
fi

# Build dependencies: virtiofsd links libseccomp and libcap-ng.
missing=()
for pkg in libseccomp-dev libcap-ng-dev; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("${pkg}")
done
if ((${#missing[@]})); then
    echo "installing build dependencies: ${missing[*]}" >&2
    if [[ ${EUID} -eq 0 ]]; then
        apt-get install -y "${missing[@]}" >&2
    else
        sudo apt-get install -y "${missing[@]}" >&2
    fi
fi

mkdir -p "${CACHE}"
echo "building virtiofsd ${VIRTIOFSD_VERSION} into ${ROOT} (about a minute)" >&2
# cargo builds in a temporary directory and copies the binary only on success, so a failed
# build leaves nothing that the check above would take for an installed binary.
if [[ $static == yes ]]; then
    # crt-static makes the linker take libcap-ng.a and glibc's static libraries; the two
    # LIBSECCOMP variables make libseccomp-sys link libseccomp.a.
    LIBSECCOMP_LINK_TYPE=static \
    LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo install --locked virtiofsd --version "${VIRTIOFSD_VERSION}" --root "${ROOT}" \
        --target x86_64-unknown-linux-gnu >&2
else
    cargo install --locked virtiofsd --version "${VIRTIOFSD_VERSION}" --root "${ROOT}" >&2
fi

"${BIN}" --version >&2
echo "${BIN}"
