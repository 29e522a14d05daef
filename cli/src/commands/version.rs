//! `bulkhead version`: the version, the commit and what this build runs, as text or JSON
//! (`--format json`), like `docker version`'s client part. Needs no configuration.

use serde::Serialize;

/// `bulkhead version` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output format: text (the default) or json.
    #[arg(long, short = 'f', default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// What `version` reports.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: &'static str,
    pub commit: &'static str,
    pub os: &'static str,
    pub arch: &'static str,
    /// The version of the host-agent protocol this build speaks.
    pub agent_protocol: u32,
    /// The OCI runtime specification version of the containers it makes.
    pub oci_runtime_spec: &'static str,
}

impl VersionInfo {
    pub fn current() -> Self {
        VersionInfo {
            version: bulkhead_version::VERSION,
            commit: bulkhead_version::COMMIT,
            os: std::env::consts::OS,
            arch: go_arch(std::env::consts::ARCH),
            agent_protocol: bulkhead_protocol::PROTOCOL_VERSION,
            oci_runtime_spec: oci_spec::runtime::VERSION,
        }
    }

    /// The text form, aligned like `docker version`.
    pub fn text(&self) -> String {
        format!(
            "Bulkhead:\n Version:           {}\n Git commit:        {}\n OS/Arch:           {}/{}\n \
             Agent protocol:    {}\n OCI runtime spec:  {}\n",
            self.version,
            self.commit,
            self.os,
            self.arch,
            self.agent_protocol,
            self.oci_runtime_spec
        )
    }
}

/// Rust's architecture names as OCI and Go spell them.
fn go_arch(arch: &'static str) -> &'static str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let info = VersionInfo::current();
    if args.format == "json" {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        print!("{}", info.text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_name_version_commit_and_platform() {
        let info = VersionInfo::current();
        let text = info.text();
        assert!(text.starts_with("Bulkhead:\n Version:"), "{text}");
        assert!(text.contains(bulkhead_version::COMMIT), "{text}");
        assert!(text.contains(" OS/Arch:           linux/amd64\n"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&info).unwrap();
        assert_eq!(json["version"], bulkhead_version::VERSION);
        assert_eq!(json["arch"], "amd64");
        assert_eq!(
            json["agent_protocol"],
            u64::from(bulkhead_protocol::PROTOCOL_VERSION)
        );
    }
}
