//! The guest agent must be a fully static binary (it is the initramfs's
//! /init, with no libraries beside it). Checks the release build made by
//! `build-initramfs.sh`; skips, saying so, when that build is absent.

use std::path::PathBuf;
use std::process::Command;

fn static_agent() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BULKHEAD_AGENT_STATIC") {
        return Some(PathBuf::from(p));
    }
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target_dir.join("x86_64-unknown-linux-gnu/release/bulkhead-agent");
    p.exists().then_some(p)
}

#[test]
fn agent_release_build_is_static() {
    let Some(agent) = static_agent() else {
        bulkhead_test_skip::skip(
            "no static agent build; run guest-agent/build-initramfs.sh \
             (or set BULKHEAD_AGENT_STATIC)",
        );
        return;
    };
    let file = Command::new("file").arg("-L").arg(&agent).output().unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
    let ldd = Command::new("ldd").arg(&agent).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "ldd: {text}"
    );
    assert!(!text.contains("libseccomp"), "ldd: {text}");
}
