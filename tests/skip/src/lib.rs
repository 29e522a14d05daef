//! The one way a Bulkhead test skips.
//!
//! A test that cannot run here (no root, no `/dev/kvm` that boots Linux, no busybox,
//! virtiofsd or guest kernel) calls [`skip`] and returns. Under a plain `cargo test` that
//! prints one line to the process's stderr (not captured by the test harness), always in
//! the same spelling, which `scripts/test.sh` counts:
//!
//! ```text
//! SKIPPED <test name>: <reason>
//! ```
//!
//! Where a test must run — inside the KVM host harness, which exports
//! `BULKHEAD_NO_SKIP=1`, or on any host where the variable is set by hand — [`skip`]
//! prints the same line and then panics, so the skip is a failure, not a silent pass.
//!
//! The crate has no dependencies so that every crate's tests can use it; `bulkhead-e2e`
//! (the `tests` crate) re-exports it as `bulkhead_e2e::skip`.

use std::fmt::Display;
use std::io::Write;

/// The variable that turns every skip into a failure (`1`: on; unset or anything else: off).
pub const NO_SKIP_VAR: &str = "BULKHEAD_NO_SKIP";

/// The start of every skip line.
pub const SKIPPED: &str = "SKIPPED";

/// Whether a skip fails the test here (`BULKHEAD_NO_SKIP=1`).
pub fn skipping_fails() -> bool {
    std::env::var(NO_SKIP_VAR).is_ok_and(|v| v == "1")
}

/// The test calling this: libtest names each test's thread after the test.
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => "<unnamed test>".to_owned(),
    }
}

/// Says that the calling test does not run here, and why; the caller then returns.
/// Panics instead when `BULKHEAD_NO_SKIP=1`.
#[track_caller]
pub fn skip(reason: impl Display) {
    skip_test(&current_test(), reason)
}

/// [`skip`] with the test's name given (for helpers called off the test's own thread).
#[track_caller]
pub fn skip_test(test: &str, reason: impl Display) {
    let line = format!("{SKIPPED} {test}: {reason}\n");
    // Straight to the process's stderr (not eprintln!, which libtest captures), in one
    // write so lines of parallel tests do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if skipping_fails() {
        panic!("{test} cannot run here: {reason}, and {NO_SKIP_VAR} is set");
    }
}

/// The `SKIPPED <test>: <reason>` lines of a test run's output, for scripts and tests
/// that count them.
pub fn skipped_lines(output: &str) -> impl Iterator<Item = &str> {
    output
        .lines()
        .filter_map(|l| l.find("SKIPPED ").map(|i| &l[i..]))
}
