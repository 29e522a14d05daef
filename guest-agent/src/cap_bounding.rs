//! A spec may ask for capabilities this agent itself cannot grant: a privileged container
//! asks for all of them, and a host whose root lacks one in its bounding set (a nested
//! container host, for example) cannot hand it on, so `capset` would fail and the container
//! would not start. As Docker does for `--privileged`, such capabilities are left out of
//! every set, and the agent says which.

use libcontainer::capabilities::CapabilityExt;
use oci_spec::runtime::{Capabilities, LinuxCapabilities, Process};

/// This process's bounding set as a bit mask (`CapBnd` of `/proc/self/status`).
pub fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Removes from `process`'s capability sets what is not in `bounding`; returns the names
/// removed.
pub fn limit_to(process: &mut Process, bounding: u64) -> Vec<String> {
    let Some(caps) = process.capabilities().clone() else {
        return Vec::new();
    };
    let mut removed = std::collections::BTreeSet::new();
    let mut keep = |set: &Option<Capabilities>| -> Option<Capabilities> {
        set.as_ref().map(|s| {
            s.iter()
                .copied()
                .filter(|c| {
                    let ok = bounding & (1u64 << c.to_cap().index()) != 0;
                    if !ok {
                        removed.insert(c.to_string());
                    }
                    ok
                })
                .collect()
        })
    };
    let mut limited = LinuxCapabilities::default();
    limited.set_bounding(keep(caps.bounding()));
    limited.set_effective(keep(caps.effective()));
    limited.set_permitted(keep(caps.permitted()));
    limited.set_inheritable(keep(caps.inheritable()));
    limited.set_ambient(keep(caps.ambient()));
    process.set_capabilities(Some(limited));
    removed.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    #[test]
    fn capabilities_outside_the_bounding_set_are_dropped_from_every_set() {
        let mut process = Process::default();
        let all: Capabilities = [
            Capability::SysAdmin,
            Capability::SysResource,
            Capability::Kill,
        ]
        .into_iter()
        .collect();
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some(all.clone()));
        caps.set_effective(Some(all.clone()));
        caps.set_permitted(Some(all));
        process.set_capabilities(Some(caps));
        // Everything but CAP_SYS_RESOURCE (24).
        let removed = limit_to(&mut process, !(1u64 << 24));
        assert_eq!(removed, ["SYS_RESOURCE"]);
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(caps.permitted().as_ref().unwrap().len(), 2);
        assert!(!caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysResource));
        assert!(own_bounding_set().is_some());
    }
}
