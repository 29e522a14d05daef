//! Capability sets: Docker's default set for a hardened container, every capability for a
//! privileged one, and `--cap-add` / `--cap-drop` on top (names with or without `CAP_`,
//! any case, and `ALL`), with Docker's precedence: `--cap-drop ALL` starts from nothing,
//! `--cap-add ALL` from everything, and a drop wins over an add of the same capability.

use std::collections::BTreeSet;

use oci_spec::runtime::{Capabilities, Capability};

/// Docker's default capabilities (what `docker run` grants without `--privileged`).
pub const DOCKER_DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability of Linux 6.x (numbers 0..=40).
pub const ALL: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A `--cap-add`/`--cap-drop` argument: `ALL`, or one capability's canonical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapArg {
    All,
    One(String),
}

/// Parses `net_admin`, `NET_ADMIN`, `CAP_NET_ADMIN` or `ALL`.
pub fn parse(arg: &str) -> Result<CapArg, String> {
    let upper = arg.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(CapArg::All);
    }
    let name = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL.contains(&name.as_str()) {
        Ok(CapArg::One(name))
    } else {
        Err(format!(
            "unknown capability {arg:?} (names as in capabilities(7), e.g. NET_ADMIN or CAP_NET_ADMIN)"
        ))
    }
}

/// The capability names a container gets.
pub fn effective(privileged: bool, add: &[CapArg], drop: &[CapArg]) -> BTreeSet<String> {
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut set = if privileged || add.contains(&CapArg::All) {
        names(ALL)
    } else if drop.contains(&CapArg::All) {
        BTreeSet::new()
    } else {
        names(DOCKER_DEFAULT)
    };
    for a in add {
        if let CapArg::One(n) = a {
            set.insert(n.clone());
        }
    }
    for d in drop {
        match d {
            CapArg::All if !privileged && !add.contains(&CapArg::All) => {}
            CapArg::All => set.clear(),
            CapArg::One(n) => {
                set.remove(n);
            }
        }
    }
    set
}

/// The OCI form of a set of names (all from [`ALL`]).
pub fn to_oci(names: &BTreeSet<String>) -> Capabilities {
    names
        .iter()
        .filter_map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::from(n.as_str())).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<CapArg> {
        list.iter().map(|a| parse(a).unwrap()).collect()
    }

    #[test]
    fn names_parse_in_any_spelling() {
        assert_eq!(parse("net_admin"), Ok(CapArg::One("CAP_NET_ADMIN".into())));
        assert_eq!(
            parse("CAP_SYS_ADMIN"),
            Ok(CapArg::One("CAP_SYS_ADMIN".into()))
        );
        assert_eq!(parse("all"), Ok(CapArg::All));
        let e = parse("NET_WIZARD").unwrap_err();
        assert!(e.contains("NET_WIZARD"), "{e}");
    }

    #[test]
    fn docker_precedence() {
        let default = effective(false, &[], &[]);
        assert_eq!(default.len(), 14);
        assert!(!default.contains("CAP_SYS_ADMIN"));
        let more = effective(false, &args(&["SYS_ADMIN"]), &args(&["NET_RAW"]));
        assert!(more.contains("CAP_SYS_ADMIN") && !more.contains("CAP_NET_RAW"));
        let only = effective(false, &args(&["CHOWN"]), &args(&["ALL"]));
        assert_eq!(only.into_iter().collect::<Vec<_>>(), ["CAP_CHOWN"]);
        let all_but = effective(false, &args(&["ALL"]), &args(&["SYS_MODULE"]));
        assert_eq!(all_but.len(), ALL.len() - 1);
        assert_eq!(effective(true, &[], &[]).len(), ALL.len());
    }

    #[test]
    fn every_name_is_an_oci_capability() {
        let all = effective(true, &[], &[]);
        assert_eq!(to_oci(&all).len(), ALL.len());
    }
}
