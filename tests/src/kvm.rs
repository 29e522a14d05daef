//! Whether this machine has a KVM that can boot Linux, so boot tests can skip
//! (and say why) under a plain `cargo test`.

use bulkhead_test_skip::skip_test;

/// True when /proc/cpuinfo shows `vmx` or `svm` (hardware virtualisation
/// that boots Linux) or when running inside tests/harness/run-in-kvm.sh
/// (`BULKHEAD_IN_HARNESS=1`), and /dev/kvm exists.
pub fn linux_kvm_available() -> bool {
    let in_harness = std::env::var("BULKHEAD_IN_HARNESS").is_ok_and(|v| v == "1");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    (in_harness || cpuinfo_has_virt(&cpuinfo)) && std::path::Path::new("/dev/kvm").exists()
}

/// Whether a /proc/cpuinfo text lists the `vmx` or `svm` flag.
pub fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// For the start of a boot test: returns false (after [`skip_test`] said why)
/// when no Linux-capable KVM is here.
pub fn require_linux_kvm(test: &str) -> bool {
    if linux_kvm_available() {
        return true;
    }
    skip_test(
        test,
        "no KVM that boots Linux here (no vmx/svm in /proc/cpuinfo); \
         run through tests/harness/run-in-kvm.sh",
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_flags_as_whole_words_only() {
        assert!(cpuinfo_has_virt(
            "processor\t: 0\nflags\t\t: fpu vme svm lm\n"
        ));
        assert!(cpuinfo_has_virt("flags\t\t: fpu vmx\n"));
        assert!(!cpuinfo_has_virt("flags\t\t: fpu vmxfoo hypervisor\n"));
        assert!(!cpuinfo_has_virt("model name\t: svm vmx\nflags\t\t: fpu\n"));
    }
}
