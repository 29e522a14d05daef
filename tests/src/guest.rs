//! What agent tests and benchmarks need around a real sandbox: where the initramfs and
//! virtiofsd are, a `SandboxConfig` for the guest kernel, a busybox root filesystem in the
//! shared directory, OCI spec JSON for busybox commands, and the checks that a destroyed
//! sandbox left no process, socket, mount or directory behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_sandbox::{SandboxConfig, VirtiofsdOptions, VmSize};

use crate::locate::{kernel_dir, vmm_binary};

/// Static busybox on the host (Debian `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";
/// virtiofsd installed by `scripts/install-virtiofsd.sh`, used when `BULKHEAD_VIRTIOFSD`
/// is not set.
pub const DEFAULT_VIRTIOFSD: &str = "/var/cache/bulkhead/virtiofsd-1.14.0/bin/virtiofsd";

/// Everything a real sandbox needs from this machine.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub virtiofsd: PathBuf,
}

impl GuestArtifacts {
    /// Finds the VMM, the kernel, the agent initramfs (`BULKHEAD_INITRD`) and virtiofsd
    /// (`BULKHEAD_VIRTIOFSD`, else [`DEFAULT_VIRTIOFSD`]); `Err` says what is missing.
    pub fn locate() -> Result<Self, String> {
        let vmm = vmm_binary().map_err(|e| e.to_string())?;
        let kernel = kernel_dir().map_err(|e| e.to_string())?.vmlinux();
        let initrd = std::env::var_os("BULKHEAD_INITRD")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or("BULKHEAD_INITRD is not set (guest-agent/build-initramfs.sh prints it)")?;
        if !initrd.is_file() {
            return Err(format!(
                "BULKHEAD_INITRD {} is not a file",
                initrd.display()
            ));
        }
        let virtiofsd = std::env::var_os("BULKHEAD_VIRTIOFSD")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_VIRTIOFSD));
        if !virtiofsd.is_file() {
            return Err(format!(
                "no virtiofsd at {} (scripts/install-virtiofsd.sh, or set BULKHEAD_VIRTIOFSD)",
                virtiofsd.display()
            ));
        }
        if !Path::new(BUSYBOX).is_file() {
            return Err(format!("no static busybox at {BUSYBOX} (busybox-static)"));
        }
        Ok(GuestArtifacts {
            vmm,
            kernel,
            initrd,
            virtiofsd,
        })
    }

    /// A sandbox configuration with virtio-fs, 2 vCPUs and 256 MiB, running under
    /// `run_root`, with time limits for a guest under nested emulation.
    pub fn sandbox_config(&self, id: &str, run_root: &Path) -> SandboxConfig {
        let mut cfg = SandboxConfig::new(id, &self.vmm, &self.kernel);
        cfg.run_root = run_root.to_path_buf();
        cfg.initrd = Some(self.initrd.clone());
        cfg.size = VmSize {
            vcpus: 2,
            memory_mib: 256,
        };
        cfg.virtiofsd = Some(VirtiofsdOptions {
            binary: self.virtiofsd.clone(),
            ..VirtiofsdOptions::default()
        });
        cfg.agent_timeout = Duration::from_secs(120);
        cfg.rpc_timeout = Duration::from_secs(60);
        cfg.destroy_timeout = Duration::from_secs(30);
        cfg.hostname = Some("e2e-guest".into());
        cfg
    }
}

/// Builds a busybox root filesystem at `root`: the binary in `bin/`, one symlink per
/// applet, and the usual empty mount points.
pub fn busybox_rootfs(root: &Path) -> std::io::Result<()> {
    for d in ["bin", "proc", "sys/fs/cgroup", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    let list = std::process::Command::new(BUSYBOX).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(())
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The OCI process object running `args` as root with PATH=/bin.
pub fn process_json(args: &[&str], terminal: bool) -> String {
    let args: Vec<String> = args.iter().map(|a| json_string(a)).collect();
    format!(
        r#"{{"terminal":{terminal},"user":{{"uid":0,"gid":0}},"args":[{}],
            "env":["PATH=/bin","TERM=xterm","HOME=/root"],"cwd":"/",
            "capabilities":{{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}},
            "noNewPrivileges":true}}"#,
        args.join(",")
    )
}

/// What a test container gets besides its command.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecOptions {
    pub terminal: bool,
    /// Its own pid namespace. A container init in one ignores signals it has no handler
    /// for (SIGTERM to `sleep`), as PID 1 of any namespace does.
    pub pid_namespace: bool,
    /// cgroup v2 `memory.max` in bytes.
    pub memory_limit: Option<u64>,
    /// No devpts at /dev/pts (a terminal cannot be set up then).
    pub no_devpts: bool,
    /// The guest's whole cgroup2 hierarchy at /sys/fs/cgroup (no cgroup namespace).
    pub guest_cgroups: bool,
}

/// An OCI runtime spec for a busybox command (read-only root, /proc, a tmpfs /dev with
/// devpts: libcontainer opens a terminal's pty inside the container).
pub fn spec_json(args: &[&str], options: SpecOptions) -> Vec<u8> {
    let mut namespaces = vec![
        r#"{"type":"ipc"}"#,
        r#"{"type":"uts"}"#,
        r#"{"type":"mount"}"#,
    ];
    if options.pid_namespace {
        namespaces.push(r#"{"type":"pid"}"#);
    }
    let resources = match options.memory_limit {
        Some(limit) => format!(r#","resources":{{"memory":{{"limit":{limit}}}}}"#),
        None => String::new(),
    };
    let mut mounts = vec![
        r#"{"destination":"/proc","type":"proc","source":"proc"}"#,
        r#"{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}"#,
        r#"{"destination":"/tmp","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=1777"]}"#,
    ];
    if !options.no_devpts {
        mounts.push(
            r#"{"destination":"/dev/pts","type":"devpts","source":"devpts",
                "options":["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620"]}"#,
        );
    }
    if options.guest_cgroups {
        mounts.push(r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup"}"#);
    }
    format!(
        r#"{{"ociVersion":"1.0.2","process":{},"root":{{"path":"rootfs","readonly":true}},
            "hostname":"e2e-container","mounts":[{}],
            "linux":{{"namespaces":[{}]{resources}}}}}"#,
        process_json(args, options.terminal),
        mounts.join(","),
        namespaces.join(",")
    )
    .into_bytes()
}

/// What a destroyed sandbox left behind under `run_root`: processes whose command line
/// names it, unix sockets and mounts below it, and the directory itself. Empty when clean.
pub fn leftovers(run_root: &Path, vmm_pid: u32) -> Vec<String> {
    let root = run_root.to_string_lossy().into_owned();
    let mut left = Vec::new();
    if Path::new(&format!("/proc/{vmm_pid}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{vmm_pid}/stat")).unwrap_or_default();
        left.push(format!("VMM process {vmm_pid} still exists: {state}"));
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // A jailed VMM names no host path on its command line: its open files do.
            let open_below = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|t| t.starts_with(run_root));
            if cmdline.contains(&root) || open_below {
                left.push(format!("process {pid}: {cmdline}"));
            }
        }
    }
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    left.extend(
        unix.lines()
            .filter(|l| l.contains(&root))
            .map(|l| format!("socket: {l}")),
    );
    left.extend(
        bulkhead_sandbox::mountinfo::read_self()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.mount_point.starts_with(run_root))
            .map(|e| {
                format!(
                    "mount: {} ({} {})",
                    e.mount_point.display(),
                    e.fs_type,
                    e.source
                )
            }),
    );
    if let Ok(entries) = std::fs::read_dir(run_root) {
        left.extend(
            entries
                .flatten()
                .map(|e| format!("directory entry: {}", e.path().display())),
        );
    }
    left
}

/// The median of some durations (the lower middle one for an even count).
pub fn median(values: &mut [Duration]) -> Option<Duration> {
    values.sort();
    let mid = values.len().checked_sub(1)? / 2;
    values.get(mid).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_json_with_the_requested_parts() {
        let spec = spec_json(
            &["sh", "-c", "echo \"hi\"\\"],
            SpecOptions {
                terminal: true,
                pid_namespace: true,
                memory_limit: Some(16 << 20),
                ..Default::default()
            },
        );
        let text = String::from_utf8(spec).unwrap();
        assert!(
            text.contains(r#""args":["sh","-c","echo \"hi\"\\"]"#),
            "{text}"
        );
        assert!(text.contains(r#""terminal":true"#));
        assert!(text.contains(r#"{"type":"pid"}"#));
        assert!(text.contains(r#""memory":{"limit":16777216"#));
        let plain = String::from_utf8(spec_json(&["true"], SpecOptions::default())).unwrap();
        assert!(!plain.contains("pid"));
        assert!(!plain.contains("resources"));
        assert!(plain.contains("devpts"));
        assert!(!plain.contains("cgroup"));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(5), ms(1), ms(3)]), Some(ms(3)));
        assert_eq!(median(&mut [ms(4), ms(1), ms(3), ms(2)]), Some(ms(2)));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn leftovers_finds_entries_in_the_run_root() {
        let dir = std::env::temp_dir().join(format!("bulkhead-e2e-left-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pod")).unwrap();
        let left = leftovers(&dir, u32::MAX);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains("pod"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(leftovers(&dir, u32::MAX).is_empty());
    }
}
