//! `bulkhead --version` prints the version and the git commit, the same line as every other
//! Bulkhead binary (`bulkhead_version::LONG`).

use std::process::Command;

#[test]
fn version_names_the_version_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--version")
        .env_clear()
        .output()
        .expect("run bulkhead");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("bulkhead {}", bulkhead_version::LONG)
    );
}
