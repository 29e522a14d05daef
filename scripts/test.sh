#!/usr/bin/env bash
# Set up this machine and run every test Bulkhead has:
#   1. scripts/setup.sh: packages, virtme-ng, guest kernel, virtiofsd, agent initramfs;
#   2. formatting and lints (cargo fmt --check, clippy -D warnings);
#   3. the workspace's tests on the host: unit tests, tiny guests on /dev/kvm, the agent's
#      container code as root, a real registry, containerd with the shim (tests that need a
#      KVM that boots Linux print `SKIPPED <test>: <reason>` here; the timeline counts them
#      and the end of the log lists them);
#   4. the end-to-end tests that boot real guests, all test binaries in one boot of the KVM
#      host harness (tests/harness/run-in-kvm.sh: directly on hosts with vmx/svm, else in
#      a level-1 QEMU VM; when the level-1 VM froze, the tests that have not passed get
#      up to three more VMs). The harness sets BULKHEAD_NO_SKIP=1: there a test that cannot
#      run fails instead of skipping, and test.sh counts and names such tests; the same
#      boot first checks exactly that (run-tests.sh --check-no-skip: a test whose
#      prerequisite is missing on purpose must fail).
# Exits non-zero when any step or test fails. `.ci/run` runs exactly this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TERM_COLOR=never

started=$SECONDS
# Each step says how long the run has taken so far, and the run ends (also when it is
# killed) with a timeline of its steps and harness runs: CI has a time limit and may show
# only the end of the log, so where the time went must be readable there.
at() { printf '%dm%02ds' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }
timeline=()
mark() { timeline+=("$(at)  $*"); }
step() {
    mark "$*"
    printf '\n=== %s (at %s) ===\n' "$*" "$(at)" >&2
}
# Tests that skipped (`SKIPPED <test>: <reason>`, crate bulkhead-test-skip), "PHASE: line".
skipped=()
# Adds the skip lines in the output on stdin to `skipped` as phase $1 and marks the count.
note_skips() {
    local line n=0
    while IFS= read -r line; do
        skipped+=("$1: $line")
        n=$((n + 1))
    done < <(grep -o 'SKIPPED [^ ]*: .*' | sort -u)
    mark "$1: $n tests skipped"
}
print_timeline() {
    echo "=== test.sh: ${#skipped[@]} tests skipped ===" >&2
    [ "${#skipped[@]}" -eq 0 ] || printf '  %s\n' "${skipped[@]}" >&2
    echo "=== test.sh timeline (run time, event) ===" >&2
    printf '  %s\n' "${timeline[@]}" >&2
}
trap 'status=$?; rm -f "${out:-}" "${host_log:-}"; mark "end, exit status $status"; print_timeline' EXIT
trap 'mark "killed by a signal"; exit 143' TERM INT HUP

step "set-up"
scripts/setup.sh
kdir="$(kernel-config/build-kernel.sh --print-dir)"
export BULKHEAD_KERNEL_DIR="$kdir" BULKHEAD_KERNEL="$kdir/vmlinux"
export BULKHEAD_INITRD="$(guest-agent/build-initramfs.sh | tail -n 1)"
export BULKHEAD_VIRTIOFSD="$(scripts/install-virtiofsd.sh | tail -n 1)"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "host tests"
# The release VMM and shim come from the same static build as the agent's initramfs
# (scripts/build-static.sh, already run by the set-up: a no-op here).
release="$(scripts/build-static.sh)"
export BULKHEAD_VMM="$release/bulkhead-vmm"
# bulkhead compare copies the probe into containers: it must be the static build.
export BULKHEAD_PROBE="$release/bulkhead-probe"
# containerd gives a dead shim's `delete` 5 s in all; a debug build spends most of that
# just starting inside the harness VM (TCG), so the containerd tests use the release shim.
export BULKHEAD_SHIM_BIN="$release/containerd-shim-bulkhead-v2"
# The shim and sandbox tests drive the real agent binary behind a stand-in VMM on the host.
cargo build -p bulkhead-agent
export BULKHEAD_AGENT_BIN="$root/target/debug/bulkhead-agent"
host_log="$(mktemp /var/tmp/bulkhead-test-host.XXXXXX)" # removed by the EXIT trap
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$host_log"
status=${PIPESTATUS[0]}
set -e
note_skips "host tests" <"$host_log"
[ "$status" = 0 ] || { echo "test.sh: host tests failed (cargo test exit status $status)" >&2; exit 1; }

step "fuzz corpus replay"
# Every committed fuzz input through its target (stable Rust, no sanitizer): a regression
# on a known input fails here. Finding new inputs is scripts/fuzz.sh's job (docs/fuzzing.md).
scripts/fuzz-replay.sh

step "release tarball"
# install_e2e installs it in the harness (it packs the cached builds: about 30 s).
BULKHEAD_RELEASE_TARBALL="$(scripts/release.sh | tail -n 1)"
export BULKHEAD_RELEASE_TARBALL

step "end-to-end tests in the KVM host harness"
# Test binaries that boot guests; they skip on the host and run for real in the harness.
# image_e2e: registry pull, VM runs, 100 MiB volume checksum. compare_e2e: the isolation
# lab in three modes, its report rendered by headless Chromium.
e2e_targets="vmm_boot qemu_reference_boot agent_e2e vm_e2e image_e2e compare_e2e containerd_e2e cri_e2e cri_network_e2e hostile_guest_e2e install_e2e"
mapfile -t bins < <(
    cargo test --workspace --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
wanted = set(sys.argv[1].split())
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] in wanted and m["profile"]["test"]:
        print(m["executable"])
' "$e2e_targets"
)
[ "${#bins[@]}" -gt 0 ] || { echo "test.sh: no end-to-end test binaries found" >&2; exit 1; }
vmm_boot_bin=""
for bin in "${bins[@]}"; do
    case "$(basename "$bin")" in vmm_boot-*) vmm_boot_bin="$bin" ;; esac
done
[ -n "$vmm_boot_bin" ] || { echo "test.sh: no vmm_boot test binary" >&2; exit 1; }
# All binaries share one harness boot (a boot costs 15-30 s, and every boot is a chance
# for the level-1 VM to freeze). First, inside it, a test whose prerequisite is missing must
# fail there instead of skipping (run-tests.sh --check-no-skip; no guest boots for that).
# When the level-1 VM freezes (run-in-kvm.sh's watchdog exits 124), the tests that have not
# passed yet run again in a fresh VM, up to three more times, and the log says so.
# CI stops the whole run at 90 minutes. Past BULKHEAD_TEST_BUDGET_SECS (default 80 min) a
# frozen run gets no new VM: the tests not yet run count as failed, so the run ends with
# its own verdict and timeline instead of being cut off.
budget="${BULKHEAD_TEST_BUDGET_SECS:-4800}"
attempts=4
out="$(mktemp /var/tmp/bulkhead-test-out.XXXXXX)" # removed by the EXIT trap
status=none
# Tests not run (again) in the harness, by exact name: those that passed in a level-1 VM that
# then froze, and from the start the containerd tests with the host agent that ran for real
# in the host tests above (a `test NAME ... ok` line without a SKIPPED line for NAME; one
# that skipped there, like the CRI pod that needs the cpu controller, still runs in the VM).
host_ran="$(sed -n 's/^test \([a-z_0-9]*_with_the_host_agent\) \.\.\. ok$/\1/p' "$host_log" | sort -u)"
host_skipped="$(sed -n 's/.*SKIPPED \([a-z_0-9]*_with_the_host_agent\): .*/\1/p' "$host_log" | sort -u)"
passed="$(comm -23 <(echo "$host_ran") <(echo "$host_skipped") | tr '\n' ' ')"
mark "  ran on the host, not again in the harness: $(wc -w <<<"$passed") tests"
harness_skips=0 # tests that could not run in the harness: each a failure
for attempt in $(seq "$attempts"); do
    if [ $((SECONDS - started)) -ge "$budget" ]; then
        echo "test.sh: out of time (${budget} s): end-to-end tests not run (attempt $attempt)" >&2
        mark "end-to-end tests: not run, out of time (attempt $attempt)"
        break
    fi
    began=$SECONDS
    set +e
    BULKHEAD_E2E_SKIP="$passed" tests/harness/run-in-kvm.sh tests/harness/run-tests.sh \
        --check-no-skip "$vmm_boot_bin" "${bins[@]}" | tee "$out"
    status=${PIPESTATUS[0]}
    set -e
    # Each binary's time and status, and the no-skip check, as run-tests.sh printed them.
    while IFS= read -r line; do
        mark "  ${line#run-tests.sh: }"
    done < <(grep -E '^run-tests.sh: ([^ ]+ exit [0-9]+ after|no-skip check)' "$out")
    mark "harness run: exit status $status after $((SECONDS - began)) s (attempt $attempt)"
    # Inside the harness a skip panics (BULKHEAD_NO_SKIP=1): the test failed, and its
    # message says which and why.
    no_skip="$(sed -n 's/^\(.*\) cannot run here: \(.*\), and BULKHEAD_NO_SKIP is set$/SKIPPED \1: \2/p' "$out")"
    if [ -n "$no_skip" ]; then
        note_skips "in the harness (each a failure)" <<<"$no_skip"
        harness_skips=$((harness_skips + $(wc -l <<<"$no_skip")))
    fi
    [ "$status" = 124 ] || break
    passed+=" $(sed -n 's/^test \([^ ]*\) \.\.\. ok$/\1/p' "$out" | tr '\n' ' ')"
    echo "test.sh: HARNESS FROZE (attempt $attempt of $attempts);" \
        "passed so far, not run again:${passed:- none}" >&2
done
if [ "$status" != 0 ] || [ "$harness_skips" != 0 ]; then
    echo "test.sh: end-to-end tests failed (status $status, $harness_skips could not run):" \
        "$(grep -h '^run-tests.sh: failed:' "$out" | tail -n 1)" >&2
    exit 1
fi
step "all tests passed"
