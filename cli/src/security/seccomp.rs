//! Seccomp profiles in the Docker profile format (Bulkhead's default, in
//! `config/seccomp/default.json`, and any `--security-opt seccomp=PROFILE.json`), turned
//! into the runtime spec's `linux.seccomp` for one container: rules whose `includes.caps`
//! the container lacks, or whose `excludes.caps` it has, are left out, as Docker does, so
//! `--cap-add SYS_ADMIN` also opens `mount` and `unshare`.
//!
//! Only x86_64 is built for: `architectures`, or the `archMap` entry of `SCMP_ARCH_X86_64`.
//! `minKernel` conditions are ignored (the filter may run in a guest kernel the host cannot
//! ask in advance); `includes.arches` / `excludes.arches` are honoured for amd64.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{json, Value};

/// Bulkhead's default profile (Docker's format).
pub const DEFAULT_PROFILE: &str = include_str!("../../../config/seccomp/default.json");

/// The x86_64 syscall table the default profile was written from: Linux 6.1's 362 names
/// plus the 7 newer ones it lists (`cachestat` .. `mseal`).
pub const X86_64_SYSCALLS: usize = 369;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// The format's older single-name form.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

const NATIVE_ARCH: &str = "SCMP_ARCH_X86_64";
const NATIVE_ARCH_NAMES: &[&str] = &["amd64", "x86_64", "x32"];

/// The runtime spec's `linux.seccomp` (as JSON) for a container holding `caps` (canonical
/// `CAP_*` names). `origin` names the profile in errors.
pub fn to_runtime_seccomp(
    profile_json: &str,
    caps: &BTreeSet<String>,
    origin: &str,
) -> Result<oci_spec::runtime::LinuxSeccomp, String> {
    let profile: Profile =
        serde_json::from_str(profile_json).map_err(|e| format!("seccomp profile {origin}: {e}"))?;
    let mut architectures = profile.architectures.clone();
    if let Some(m) = profile
        .arch_map
        .iter()
        .find(|m| m.architecture == NATIVE_ARCH)
    {
        architectures.push(m.architecture.clone());
        architectures.extend(m.sub_architectures.iter().cloned());
    }
    let mut syscalls = Vec::new();
    for (i, rule) in profile.syscalls.iter().enumerate() {
        let has = |c: &String| caps.contains(&canonical_cap(c.as_str()));
        if !rule.includes.caps.iter().all(has) || rule.excludes.caps.iter().any(has) {
            continue;
        }
        let native = |a: &String| NATIVE_ARCH_NAMES.contains(&a.as_str());
        if (!rule.includes.arches.is_empty() && !rule.includes.arches.iter().any(native))
            || rule.excludes.arches.iter().any(native)
        {
            continue;
        }
        let mut names = rule.names.clone();
        names.extend(rule.name.clone());
        if names.is_empty() {
            return Err(format!(
                "seccomp profile {origin}: syscalls[{i}] names no syscall"
            ));
        }
        let mut entry = json!({"names": names, "action": rule.action});
        if let Some(errno) = rule.errno_ret {
            entry["errnoRet"] = errno.into();
        }
        if let Some(args) = &rule.args {
            entry["args"] = Value::from(args.clone());
        }
        syscalls.push(entry);
    }
    let mut seccomp = json!({
        "defaultAction": profile.default_action,
        "syscalls": syscalls,
    });
    if let Some(errno) = profile.default_errno_ret {
        seccomp["defaultErrnoRet"] = errno.into();
    }
    if !architectures.is_empty() {
        seccomp["architectures"] = architectures.into();
    }
    if !profile.flags.is_empty() {
        seccomp["flags"] = profile.flags.into();
    }
    serde_json::from_value(seccomp).map_err(|e| format!("seccomp profile {origin}: {e}"))
}

fn canonical_cap(c: &str) -> String {
    let upper = c.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::capabilities;

    fn names_allowed(seccomp: &oci_spec::runtime::LinuxSeccomp) -> BTreeSet<String> {
        seccomp
            .syscalls()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter(|s| {
                s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
                    && s.args().is_none()
            })
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn the_default_profile_follows_the_capabilities() {
        let default_caps = capabilities::effective(false, &[], &[]);
        let hardened = to_runtime_seccomp(DEFAULT_PROFILE, &default_caps, "default").unwrap();
        let allowed = names_allowed(&hardened);
        for refused in [
            "mount",
            "unshare",
            "keyctl",
            "bpf",
            "init_module",
            "setns",
            "add_key",
        ] {
            assert!(!allowed.contains(refused), "{refused} allowed by default");
        }
        for needed in ["read", "execve", "openat", "ptrace", "wait4", "chroot"] {
            assert!(allowed.contains(needed), "{needed} refused by default");
        }
        let admin =
            capabilities::effective(false, &[capabilities::parse("SYS_ADMIN").unwrap()], &[]);
        let opened = names_allowed(&to_runtime_seccomp(DEFAULT_PROFILE, &admin, "d").unwrap());
        assert!(opened.contains("mount") && opened.contains("unshare"));
        assert!(!opened.contains("keyctl"), "the keyring stays closed");
        // clone: the flag-filtered rule without SYS_ADMIN, the plain one with it.
        let v = serde_json::to_value(&hardened).unwrap();
        let clone_rules: Vec<&Value> = v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == "clone"))
            .collect();
        assert_eq!(clone_rules.len(), 1);
        assert_eq!(clone_rules[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["architectures"][0], "SCMP_ARCH_X86_64");
    }

    #[test]
    fn bad_profiles_are_refused_by_name() {
        let caps = BTreeSet::new();
        let e = to_runtime_seccomp("{", &caps, "/x.json").unwrap_err();
        assert!(e.contains("/x.json"), "{e}");
        let e = to_runtime_seccomp(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"action":"SCMP_ACT_ALLOW"}]}"#,
            &caps,
            "/y.json",
        )
        .unwrap_err();
        assert!(e.contains("syscalls[0] names no syscall"), "{e}");
        let e = to_runtime_seccomp(
            r#"{"defaultAction":"SCMP_ACT_MAYBE","syscalls":[]}"#,
            &caps,
            "/z.json",
        )
        .unwrap_err();
        assert!(e.contains("SCMP_ACT_MAYBE"), "{e}");
    }

    #[test]
    fn docker_arch_map_and_single_names_are_read() {
        let profile = r#"{"defaultAction":"SCMP_ACT_ERRNO",
            "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]},
                       {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
            "syscalls":[{"name":"read","action":"SCMP_ACT_ALLOW"},
                        {"names":["arm_fadvise64_64"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm"]}}]}"#;
        let s = to_runtime_seccomp(profile, &BTreeSet::new(), "p").unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert_eq!(v["syscalls"].as_array().unwrap().len(), 1);
    }
}
