#!/usr/bin/env bash
# Builds the release binaries that Bulkhead runs on a host or in a guest, as fully static
# executables, in ONE cargo invocation so that their shared dependencies (tokio, ttrpc,
# protobuf, nix, ...) are compiled once:
#   bulkhead-agent               (the guest's /init; must be static)
#   bulkhead-vmm                 (the microVM monitor)
#   containerd-shim-bulkhead-v2  (the containerd shim)
#   bulkhead                     (the CLI; static for the release tarball)
# An explicit --target keeps RUSTFLAGS away from build scripts and proc-macros.
# Prints the directory holding the binaries on stdout; cargo's output goes to stderr.
#
# Needs: cargo, libseccomp-dev (the static libseccomp.a the agent links).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=x86_64-unknown-linux-gnu
packages=(bulkhead-agent bulkhead-vmm containerd-shim-bulkhead-v2 bulkhead-cli bulkhead-probe)

echo "build-static.sh: building ${packages[*]} (release, static, $target)" >&2
cd "$root"
# Without the two LIBSECCOMP variables the agent silently links libseccomp.so and
# glibc dynamically.
LIBSECCOMP_LINK_TYPE=static \
LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target "$target" "${packages[@]/#/--package=}" >&2
echo "${CARGO_TARGET_DIR:-$root/target}/$target/release"
