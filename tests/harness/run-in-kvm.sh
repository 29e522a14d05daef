#!/bin/bash
# Run a command where a KVM that boots Linux is available, and return its exit
# status. Usage: tests/harness/run-in-kvm.sh CMD [ARGS...]
#
# - Host CPU shows vmx/svm: run CMD directly.
# - Otherwise (nested "PVM" /dev/kvm that cannot boot Linux): boot a level-1
#   VM with virtme-ng (QEMU TCG, `-cpu max` emulates SVM), `modprobe kvm_amd`
#   inside it, mount a fresh tmpfs on /tmp (sockets and overlayfs cannot live
#   on the 9p-shared root), and run CMD there in the current directory.
#
# Either way CMD sees BULKHEAD_IN_HARNESS=1 and BULKHEAD_NO_SKIP=1: a test that cannot run
# here (no busybox, virtiofsd, guest kernel...) fails instead of skipping (crate
# bulkhead-test-skip; BULKHEAD_NO_SKIP=0 from the caller turns that off). Inside the
# level-1 VM the host's root is visible read-only; the current directory,
# $CARGO_TARGET_DIR and the directories listed in BULKHEAD_HARNESS_RWDIRS (colon
# separated) are mounted read-write, $CARGO_HOME gets a throw-away writable overlay,
# the kernel cache (${BULKHEAD_CACHE:-/var/cache/bulkhead}) is mounted read-only.
# Environment passed through: PATH, HOME, TERM, USER, every BULKHEAD_*, RUST_*,
# RUSTUP_*, CARGO_* variable, and the names listed in BULKHEAD_HARNESS_ENV (space
# separated).
#
# Knobs: BULKHEAD_HARNESS=auto|direct|vm (default auto),
#        BULKHEAD_HARNESS_KERNEL (level-1 kernel, default newest
#        /boot/vmlinuz-*-amd64), BULKHEAD_HARNESS_MEMORY (default 4G),
#        BULKHEAD_HARNESS_CPUS (default 2), BULKHEAD_VNG (path to vng),
#        BULKHEAD_HARNESS_QEMU_OPTS (more level-1 QEMU options),
#        BULKHEAD_HARNESS_KVM_AMD_OPTS (kvm_amd options in the level-1 VM; default
#        npt=0 under QEMU before 10, none from QEMU 10 on),
#        BULKHEAD_HARNESS_STALL_SECS (watchdog, default 180),
#        BULKHEAD_HARNESS_EXIT_SECS (power-off grace after CMD ended, default 60).
# Exit status: CMD's; 125 when the harness itself fails; 124 when the level-1 VM froze
# (see the watchdog at the end).
set -euo pipefail

die() { echo "run-in-kvm.sh: $*" >&2; exit 125; }
[ $# -ge 1 ] || die "usage: run-in-kvm.sh CMD [ARGS...]"

mode="${BULKHEAD_HARNESS:-auto}"
if [ "${BULKHEAD_IN_HARNESS:-}" = 1 ]; then
    mode=direct # already inside: do not nest another level
elif [ "$mode" = auto ]; then
    if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -c /dev/kvm ]; then
        mode=direct
    else
        mode=vm
    fi
fi

if [ "$mode" = direct ]; then
    export BULKHEAD_IN_HARNESS=1 BULKHEAD_NO_SKIP="${BULKHEAD_NO_SKIP:-1}"
    exec "$@"
fi
[ "$mode" = vm ] || die "BULKHEAD_HARNESS must be auto, direct or vm (got $mode)"

find_vng() {
    local c
    if [ -n "${BULKHEAD_VNG:-}" ]; then echo "$BULKHEAD_VNG"; return; fi
    if c="$(command -v vng)"; then echo "$c"; return; fi
    for c in /root/.pyenv/shims/vng /root/.pyenv/versions/*/bin/vng \
             "$HOME/.local/bin/vng" /usr/local/bin/vng; do
        if [ -x "$c" ]; then echo "$c"; return; fi
    done
    return 1
}
vng="$(find_vng)" || die "vng (virtme-ng) not found: run scripts/setup.sh"

kernel="${BULKHEAD_HARNESS_KERNEL:-}"
if [ -z "$kernel" ]; then
    kernel="$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1)"
fi
[ -n "$kernel" ] && [ -r "$kernel" ] \
    || die "no level-1 kernel /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)"

# kvm_amd options for the level-1 VM's QEMU: npt=0 before QEMU 10, the defaults from 10 on.
default_kvm_amd_opts() {
    local major
    major="$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n 1)"
    if [ "${major:-0}" -ge 10 ]; then echo ""; else echo "npt=0"; fi
}

cwd="$(pwd -P)"
# The script must be readable from the level-1 VM before /tmp is replaced:
# the host's /tmp is visible there (read-only lower layer) until we mount.
stage="$(mktemp -d /tmp/bulkhead-harness.XXXXXX)"
# The heartbeat the level-1 VM writes (see the watchdog below); outside /tmp, which the
# inner script replaces.
beat_dir="$(mktemp -d /var/tmp/bulkhead-harness-beat.XXXXXX)"
trap 'rm -rf "$stage" "$beat_dir"' EXIT
inner="$stage/run.sh"

{
    echo '#!/bin/bash'
    # The paging mode that works depends on the level-1 QEMU (docs/harness.md): QEMU 7.2's
    # emulated NPT makes level-2 guests hang, triple-fault or freeze the level-1 VM, so
    # there shadow paging (npt=0); under QEMU 10 shadow paging hangs every level-2 boot and
    # nested paging (the module default) works.
    kvm_amd_opts="${BULKHEAD_HARNESS_KVM_AMD_OPTS-$(default_kvm_amd_opts)}"
    if [ -n "$kvm_amd_opts" ]; then
        echo 'modprobe -r kvm_amd 2>/dev/null'
        printf 'modprobe kvm_amd %s || exit 125\n' "$kvm_amd_opts"
    fi
    echo 'modprobe kvm_amd 2>/dev/null || modprobe kvm_intel 2>/dev/null || true'
    echo '[ -c /dev/kvm ] || { echo "run-in-kvm.sh: no /dev/kvm in the level-1 VM" >&2; exit 125; }'
    # Networking: taps (virtio-net), vhost-net (bench/net.sh), bridges and veths (CNI) are
    # modules of the level-1 kernel, and without udev /dev/net/tun appears only with tun.
    echo 'modprobe -a tun vhost_net bridge veth 2>/dev/null || true'
    echo '[ -c /dev/net/tun ] || { mkdir -p /dev/net && mknod -m 666 /dev/net/tun c 10 200; }'
    echo 'mount -t tmpfs -o mode=1777,size=50% tmpfs /tmp || exit 125'
    printf '( while :; do date +%%s >%q/beat; sleep 10; done ) </dev/null >/dev/null 2>&1 &\n' "$beat_dir"
    for name in $(compgen -e); do
        case "$name" in
            PATH|HOME|TERM|USER|BULKHEAD_*|RUST_*|RUSTUP_*|CARGO_*) ;;
            *) case " ${BULKHEAD_HARNESS_ENV:-} " in *" $name "*) ;; *) continue ;; esac ;;
        esac
        printf 'export %s=%q\n' "$name" "${!name}"
    done
    echo 'export BULKHEAD_IN_HARNESS=1'
    printf 'export BULKHEAD_NO_SKIP=%q\n' "${BULKHEAD_NO_SKIP:-1}"
    printf 'cd %q || exit 125\n' "$cwd"
    # Not exec: the status goes to the shared directory first, so the host has it even
    # when the level-1 VM then hangs on its way down (see the watchdog below).
    printf '%q ' "$@"
    echo
    printf 'echo $? >%q/status\n' "$beat_dir"
    printf 'exit "$(cat %q/status)"\n' "$beat_dir"
} >"$inner"

rw_args=()
add_rw() {
    local d="$1"
    [ -d "$d" ] || return 0
    d="$(cd "$d" && pwd -P)"
    case "$d" in /|/proc|/sys|/dev|/tmp|/tmp/*|/run|/run/*) return 0 ;; esac
    rw_args+=("--rwdir=$d")
}
add_rw "$cwd"
[ -n "${CARGO_TARGET_DIR:-}" ] && add_rw "$CARGO_TARGET_DIR"
IFS=: read -r -a extra <<<"${BULKHEAD_HARNESS_RWDIRS:-}"
for d in "${extra[@]}"; do [ -n "$d" ] && add_rw "$d"; done
# virtme-ng puts a fresh tmpfs on /var/cache: bring the kernel cache back.
cache="${BULKHEAD_CACHE:-/var/cache/bulkhead}"
[ -d "$cache" ] && rw_args+=("--rodir=$(cd "$cache" && pwd -P)")
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
[ -d "$cargo_home" ] && rw_args+=("--overlay-rwdir=$cargo_home")

rw_args+=("--rwdir=$beat_dir")

# virtme-ng's QEMU reopens /proc/self/fd/{1,2} (with O_TRUNC, several times):
# on a regular file that truncates it and interleaves writers. Hand it pipes
# (and /dev/null as stdin) so output arrives intact and in order.
mkfifo "$stage/stdout" "$stage/stderr"
cat "$stage/stdout" &
outcat=$!
cat "$stage/stderr" >&2 &
errcat=$!
set +e
# A session of its own, so the watchdog can end vng, virtme-run and QEMU together.
setsid "$vng" -r "$kernel" --disable-kvm --disable-microvm --force-9p \
    --memory "${BULKHEAD_HARNESS_MEMORY:-4G}" --cpus "${BULKHEAD_HARNESS_CPUS:-2}" \
    --qemu-opts="-cpu max ${BULKHEAD_HARNESS_QEMU_OPTS:-}" "${rw_args[@]}" --cwd "$cwd" \
    --exec "bash $inner" </dev/null >"$stage/stdout" 2>"$stage/stderr" &
vm=$!

# Watchdog. QEMU's software emulation of nested SVM occasionally livelocks: both of the
# level-1 VM's vCPU threads spin at 100% and nothing inside it runs again, whichever
# level-2 VMM it was running (seen with bulkhead-vmm and with QEMU itself). Inside, a loop
# writes the time to $beat_dir/beat every 10 s; when that stops for
# BULKHEAD_HARNESS_STALL_SECS (default 180; the boot counts from the start), the VM is
# killed and this script exits 124, so callers can tell a frozen harness from a failure.
# Once CMD has ended (its status is in $beat_dir/status), the VM gets
# BULKHEAD_HARNESS_EXIT_SECS (default 60) to power off; a level-1 VM that hangs on the way
# down is killed and CMD's status stands.
stall="${BULKHEAD_HARNESS_STALL_SECS:-180}"
grace="${BULKHEAD_HARNESS_EXIT_SECS:-60}"
started="$(date +%s)"
froze=0
leftovers=
while kill -0 "$vm" 2>/dev/null; do
    sleep 5
    now="$(date +%s)"
    if ended="$(stat -c %Y "$beat_dir/status" 2>/dev/null)"; then
        [ $((now - ended)) -gt "$grace" ] || continue
        why="the command ended but the level-1 VM did not power off within ${grace} s"
    else
        last="$(stat -c %Y "$beat_dir/beat" 2>/dev/null || echo "$started")"
        [ $((now - last)) -gt "$stall" ] || continue
        why="the level-1 VM made no progress for over ${stall} s (no heartbeat; QEMU's"
        why+=" nested-SVM emulation livelocks now and then)"
        froze=1
    fi
    kill -0 "$vm" 2>/dev/null || break
    echo "run-in-kvm.sh: $why: killing it" >&2
    # virtme-ng removes its exit-status file itself, unless it is killed.
    leftovers="$(for p in $(pgrep -s "$vm"); do tr '\0' '\n' <"/proc/$p/cmdline"; done 2>/dev/null |
        grep -o 'path=/tmp/virtme_ret[A-Za-z0-9_]*' | cut -d= -f2 | sort -u)"
    kill -KILL -- "-$vm" 2>/dev/null
    break
done
{ wait "$vm"; } 2>/dev/null # (braces: no "Killed" job notice after the watchdog)
status=$?
wait "$outcat" "$errcat"
for f in $leftovers; do rm -f "$f"; done
[ "$froze" = 1 ] && exit 124
# CMD's own status, as it wrote it, when it got that far (virtme-ng's is the fallback).
if [ -s "$beat_dir/status" ]; then
    status="$(cat "$beat_dir/status")"
fi
exit "$status"
