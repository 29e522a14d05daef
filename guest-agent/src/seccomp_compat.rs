//! One adjustment to a spec's seccomp filter before libcontainer reads it.
//!
//! For `SCMP_CMP_MASKED_EQ` the runtime spec (and runc, and the Docker profile format) take
//! `value` as the mask and `valueTwo` as the value the masked argument must equal:
//! `(arg & value) == valueTwo`. libcontainer 0.7 hands them to libseccomp the other way
//! round, so Docker's `clone` rule ("no namespace flags": mask 0x7e020000, equal 0) would
//! become `(arg & 0) == 0x7e020000` and refuse every `fork`. Swapping the two here gives
//! libcontainer what it expects, for specs from the CLI and from containerd alike.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompArgBuilder, LinuxSeccompOperator};

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
