//! `containerd-shim-bulkhead-v2 -v` prints the version and commit without containerd's
//! environment.

use std::process::Command;

#[test]
fn dash_v_prints_version_runtime_and_protocol() {
    for flag in ["-v", "--version"] {
        let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-bulkhead-v2"))
            .arg(flag)
            .env_clear()
            .output()
            .expect("run the shim");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flag}: {out:?}");
        assert!(
            text.contains(bulkhead_version::LONG) && text.contains("io.containerd.bulkhead.v2"),
            "{flag}: {text}"
        );
        assert!(
            text.contains(&format!(
                "agent protocol {}",
                bulkhead_protocol::PROTOCOL_VERSION
            )),
            "{flag}: {text}"
        );
    }
}
