//! The version every Bulkhead binary reports: the workspace version and the git commit it
//! was built from (`--version`, the shim's `-v`, the agent's greeting).
//!
//! A crate of its own, used only by the binaries' crates: a new commit changes it, and
//! everything depending on it is rebuilt.

/// The workspace version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit (12 hex digits), or "unknown" when built outside a checkout.
pub const COMMIT: &str = env!("BULKHEAD_GIT_COMMIT");

/// `0.1.0 (commit 0123456789ab)`: what `--version` prints after the binary's name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BULKHEAD_GIT_COMMIT"),
    ")"
);

#[cfg(test)]
mod tests {
    #[test]
    fn the_long_version_names_the_version_and_the_commit() {
        let v = super::LONG;
        assert!(v.starts_with(super::VERSION), "{v}");
        assert!(v.contains("(commit ") && !super::COMMIT.is_empty(), "{v}");
    }
}
