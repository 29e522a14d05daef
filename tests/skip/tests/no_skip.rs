//! `BULKHEAD_NO_SKIP=1` turns a skip into a failure: this test runs a test of its own
//! binary (one whose prerequisite is deliberately missing) as a child process, once
//! without and once with the variable.

use std::process::{Command, Output};

use bulkhead_test_skip::{skip, skipped_lines, NO_SKIP_VAR};

const PREREQUISITE: &str = "BULKHEAD_SKIP_SELFTEST_PREREQUISITE";

/// Runs only as the child of `a_skip_passes_unless_no_skip_is_set`: it needs a file that the
/// parent names in the environment and never creates.
#[test]
#[ignore = "run as a child process by a_skip_passes_unless_no_skip_is_set"]
fn child_with_a_missing_prerequisite() {
    let path = std::env::var(PREREQUISITE).unwrap_or_else(|_| "/nonexistent".into());
    if !std::path::Path::new(&path).exists() {
        skip(format!("{path} does not exist"));
        return;
    }
    panic!("the prerequisite {path} exists");
}

fn run_child(no_skip: Option<&str>) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_with_a_missing_prerequisite", "--ignored"])
        .env(PREREQUISITE, "/nonexistent/bulkhead-prerequisite");
    match no_skip {
        Some(v) => cmd.env(NO_SKIP_VAR, v),
        None => cmd.env_remove(NO_SKIP_VAR),
    };
    cmd.output().unwrap()
}

#[test]
fn a_skip_passes_unless_no_skip_is_set() {
    let want = "SKIPPED child_with_a_missing_prerequisite: \
                /nonexistent/bulkhead-prerequisite does not exist";

    for no_skip in [None, Some("0")] {
        let out = run_child(no_skip);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{no_skip:?}: {out:?}");
        assert_eq!(skipped_lines(&stderr).collect::<Vec<_>>(), [want]);
    }

    let out = run_child(Some("1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the skip passed: {out:?}");
    assert_eq!(skipped_lines(&stderr).collect::<Vec<_>>(), [want]);
    assert!(
        stdout.contains(
            "child_with_a_missing_prerequisite cannot run here: \
             /nonexistent/bulkhead-prerequisite does not exist, and BULKHEAD_NO_SKIP is set"
        ),
        "{stdout}"
    );
}

#[test]
fn finds_skip_lines_after_other_output() {
    let out = "test a ... SKIPPED a: no root\nok\nSKIPPED b: no kvm\nnothing\n";
    assert_eq!(
        skipped_lines(out).collect::<Vec<_>>(),
        ["SKIPPED a: no root", "SKIPPED b: no kvm"]
    );
}
