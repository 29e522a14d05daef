//! Who the workload thinks it is running on: kernel release and boot id, CPUs, memory,
//! and its own capabilities, seccomp mode and `no_new_privs`.

use crate::report::Identity;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

pub fn probe() -> Identity {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as u32;
    let meminfo = read("/proc/meminfo");
    let mem_kib: u64 = status_field(&meminfo, "MemTotal:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0);
    // The cgroup limit, when lower, is what the workload can really use.
    let cgroup_max: Option<u64> = read("/sys/fs/cgroup/memory.max").trim().parse().ok();
    let memory_mib = match cgroup_max {
        Some(max) => (max >> 20).min(mem_kib >> 10),
        None => mem_kib >> 10,
    };
    let status = read("/proc/self/status");
    let cap_hex = status_field(&status, "CapEff:");
    let caps = u64::from_str_radix(&cap_hex, 16).unwrap_or(0);
    Identity {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_owned(),
        cpu_model,
        cpus,
        memory_mib,
        capabilities_hex: cap_hex,
        capabilities: caps.count_ones(),
        seccomp_mode: status_field(&status, "Seccomp:").parse().unwrap_or(0),
        no_new_privs: status_field(&status, "NoNewPrivs:") == "1",
    }
}
