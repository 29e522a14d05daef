//! Two adjustments to a spec's seccomp filter before libcontainer reads it.
//!
//! Names this host's libseccomp does not know (syscalls newer than it) are left out here:
//! libcontainer skips them too, but logs each one from the container's init process,
//! whose stderr is by then the container's, so the warnings landed in the container's
//! output. The agent logs them once, in its own log.
//!
//! For `SCMP_CMP_MASKED_EQ` the runtime spec (and runc, and the Docker profile format) take
//! `value` as the mask and `valueTwo` as the value the masked argument must equal:
//! `(arg & value) == valueTwo`. libcontainer 0.7 hands them to libseccomp the other way
//! round, so Docker's `clone` rule ("no namespace flags": mask 0x7e020000, equal 0) would
//! become `(arg & 0) == 0x7e020000` and refuse every `fork`. Swapping the two here gives
//! libcontainer what it expects, for specs from the CLI and from containerd alike.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompArgBuilder, LinuxSeccompOperator};

/// Removes the syscall names libseccomp cannot resolve (and rules left without a name);
/// returns the names removed.
pub fn drop_unknown_names(seccomp: &mut LinuxSeccomp) -> Vec<String> {
    let Some(syscalls) = seccomp.syscalls().clone() else {
        return Vec::new();
    };
    let mut dropped = Vec::new();
    let mut kept = Vec::new();
    for mut syscall in syscalls {
        let (known, unknown): (Vec<String>, Vec<String>) = syscall
            .names()
            .iter()
            .cloned()
            .partition(|n| libseccomp::ScmpSyscall::from_name(n).is_ok());
        dropped.extend(unknown);
        if !known.is_empty() {
            syscall.set_names(known);
            kept.push(syscall);
        }
    }
    seccomp.set_syscalls(Some(kept));
    dropped.sort();
    dropped.dedup();
    dropped
}

/// Swaps `value` and `valueTwo` of every masked comparison in `seccomp`.
pub fn swap_masked_operands(seccomp: &mut LinuxSeccomp) {
    let Some(mut syscalls) = seccomp.syscalls().clone() else {
        return;
    };
    for syscall in &mut syscalls {
        let Some(mut args) = syscall.args().clone() else {
            continue;
        };
        for arg in &mut args {
            if arg.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                let swapped = LinuxSeccompArgBuilder::default()
                    .index(arg.index())
                    .value(arg.value_two().unwrap_or(0))
                    .value_two(arg.value())
                    .op(arg.op())
                    .build();
                if let Ok(swapped) = swapped {
                    *arg = swapped;
                }
            }
        }
        syscall.set_args(Some(args));
    }
    seccomp.set_syscalls(Some(syscalls));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_dropped_and_empty_rules_with_them() {
        let mut seccomp: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "no_such_syscall_at_all"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["another_made_up_one"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))
        .unwrap();
        let dropped = drop_unknown_names(&mut seccomp);
        assert_eq!(dropped, ["another_made_up_one", "no_such_syscall_at_all"]);
        let v = serde_json::to_value(&seccomp).unwrap();
        assert_eq!(v["syscalls"].as_array().unwrap().len(), 1);
        assert_eq!(v["syscalls"][0]["names"], serde_json::json!(["read"]));
    }

    #[test]
    fn masked_comparisons_are_swapped_and_others_kept() {
        let mut seccomp: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]},
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))
        .unwrap();
        swap_masked_operands(&mut seccomp);
        let v = serde_json::to_value(&seccomp).unwrap();
        assert_eq!(v["syscalls"][0]["args"][0]["value"], 0);
        assert_eq!(v["syscalls"][0]["args"][0]["valueTwo"], 2114060288u64);
        assert_eq!(v["syscalls"][1]["args"][0]["value"], 40);
        assert!(v["syscalls"][2].get("args").is_none());
    }
}
