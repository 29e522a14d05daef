//! Rust domain types of the agent API and their conversions from and to the
//! protobuf messages. Conversions from requests validate what the agent
//! relies on (ids, paths, signal numbers) and name the offending field.

use std::path::PathBuf;

use thiserror::Error;

use crate::proto;

/// A request field the agent refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Longest accepted container or exec id (the stdio header's limit too).
pub const MAX_ID_LEN: usize = crate::stdio::MAX_ID_LEN;

/// Container ids become directory and cgroup names: 1..=256 characters of
/// `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn validate_container_id(id: &str) -> Result<(), InvalidField> {
    validate_id("container_id", id, false)
}

/// Exec ids follow the container id rules but may be empty (the init process).
pub fn validate_exec_id(id: &str) -> Result<(), InvalidField> {
    validate_id("exec_id", id, true)
}

fn validate_id(field: &'static str, id: &str, empty_ok: bool) -> Result<(), InvalidField> {
    if id.is_empty() {
        return if empty_ok {
            Ok(())
        } else {
            Err(invalid(field, "must not be empty"))
        };
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(field, format!("longer than {MAX_ID_LEN} bytes")));
    }
    if id.starts_with('.') {
        return Err(invalid(field, "must not start with '.'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(field, format!("character {c:?} not allowed")));
    }
    Ok(())
}

/// One process: a container's init (empty `exec_id`) or one of its execs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub container_id: String,
    pub exec_id: String,
}

impl ProcessRef {
    pub fn new(container_id: &str, exec_id: &str) -> Result<Self, InvalidField> {
        validate_container_id(container_id)?;
        validate_exec_id(exec_id)?;
        Ok(ProcessRef {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        })
    }
}

/// Which stdio streams a process gets. stdout and stderr always exist
/// (merged into the terminal when `tty`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioConfig {
    pub stdin: bool,
    pub tty: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }

    /// The `resolv.conf` text for this configuration.
    pub fn to_resolv_conf(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    pub sandbox_id: String,
    pub hostname: Option<String>,
    pub dns: DnsConfig,
    pub shared_fs_tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    pub id: String,
    /// Exec id of the init process (may be empty).
    pub exec_id: String,
    /// The OCI runtime spec as JSON, parsed by the agent.
    pub spec_json: Vec<u8>,
    /// Absolute path of the root filesystem inside the guest.
    pub rootfs: PathBuf,
    pub stdio: StdioConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    pub process: ProcessRef,
    /// The OCI process object as JSON.
    pub process_json: Vec<u8>,
    pub stdio: StdioConfig,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + signal number.
    pub fn as_status(self) -> u32 {
        match self {
            ExitStatus::Code(c) => (c & 0xff) as u32,
            ExitStatus::Signal(s) => 128 + (s & 0x7f) as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    pub status: ExitStatus,
    pub exited_at_unix_nanos: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub columns: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    /// `None` when unlimited.
    pub limit_bytes: Option<u64>,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub oom_events: u64,
    pub oom_kill_events: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PidsStats {
    pub current: u64,
    /// `None` when unlimited.
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoDeviceStats {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ios: u64,
    pub write_ios: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub io: Vec<IoDeviceStats>,
}

// ---- requests: protobuf -> domain (agent side) ----

impl TryFrom<proto::CreateSandboxRequest> for SandboxConfig {
    type Error = InvalidField;

    fn try_from(r: proto::CreateSandboxRequest) -> Result<Self, InvalidField> {
        if r.hostname.len() > 64 || r.hostname.contains(['/', '\0']) {
            return Err(invalid("hostname", "not a valid host name"));
        }
        let dns = r.dns.into_option().unwrap_or_default();
        let dns = DnsConfig {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        };
        for s in dns.servers.iter().chain(&dns.searches).chain(&dns.options) {
            if s.is_empty() || s.contains(char::is_whitespace) {
                return Err(invalid(
                    "dns",
                    format!("entry {s:?} is empty or has spaces"),
                ));
            }
        }
        Ok(SandboxConfig {
            sandbox_id: r.sandbox_id,
            hostname: non_empty(r.hostname),
            dns,
            shared_fs_tag: non_empty(r.shared_fs_tag),
        })
    }
}

impl TryFrom<proto::CreateContainerRequest> for ContainerConfig {
    type Error = InvalidField;

    fn try_from(r: proto::CreateContainerRequest) -> Result<Self, InvalidField> {
        validate_container_id(&r.container_id)?;
        validate_exec_id(&r.exec_id)?;
        let rootfs = PathBuf::from(&r.rootfs_path);
        if !rootfs.is_absolute() {
            return Err(invalid("rootfs_path", "must be an absolute path"));
        }
        if r.oci_spec_json.is_empty() {
            return Err(invalid("oci_spec_json", "is empty"));
        }
        Ok(ContainerConfig {
            id: r.container_id,
            exec_id: r.exec_id,
            spec_json: r.oci_spec_json,
            rootfs,
            stdio: StdioConfig {
                stdin: r.stdin,
                tty: r.tty,
            },
        })
    }
}

impl TryFrom<proto::ExecProcessRequest> for ExecConfig {
    type Error = InvalidField;

    fn try_from(r: proto::ExecProcessRequest) -> Result<Self, InvalidField> {
        if r.exec_id.is_empty() {
            return Err(invalid("exec_id", "must not be empty for an exec"));
        }
        if r.process_json.is_empty() {
            return Err(invalid("process_json", "is empty"));
        }
        Ok(ExecConfig {
            process: ProcessRef::new(&r.container_id, &r.exec_id)?,
            process_json: r.process_json,
            stdio: StdioConfig {
                stdin: r.stdin,
                tty: r.tty,
            },
        })
    }
}

/// Signal numbers 1..=64 (standard and real-time).
pub fn validate_signal(signal: u32) -> Result<i32, InvalidField> {
    if (1..=64).contains(&signal) {
        Ok(signal as i32)
    } else {
        Err(invalid(
            "signal",
            format!("{signal} is not a signal number"),
        ))
    }
}

impl TryFrom<&proto::TtyWinResizeRequest> for WinSize {
    type Error = InvalidField;

    fn try_from(r: &proto::TtyWinResizeRequest) -> Result<Self, InvalidField> {
        let rows = u16::try_from(r.rows).map_err(|_| invalid("rows", "too large"))?;
        let columns = u16::try_from(r.columns).map_err(|_| invalid("columns", "too large"))?;
        Ok(WinSize { rows, columns })
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

// ---- requests: domain -> protobuf (host side) ----

impl From<&SandboxConfig> for proto::CreateSandboxRequest {
    fn from(c: &SandboxConfig) -> Self {
        let mut dns = proto::Dns::new();
        dns.servers = c.dns.servers.clone();
        dns.searches = c.dns.searches.clone();
        dns.options = c.dns.options.clone();
        let mut r = proto::CreateSandboxRequest::new();
        r.sandbox_id = c.sandbox_id.clone();
        r.hostname = c.hostname.clone().unwrap_or_default();
        r.dns = Some(dns).into();
        r.shared_fs_tag = c.shared_fs_tag.clone().unwrap_or_default();
        r
    }
}

impl From<&ContainerConfig> for proto::CreateContainerRequest {
    fn from(c: &ContainerConfig) -> Self {
        let mut r = proto::CreateContainerRequest::new();
        r.container_id = c.id.clone();
        r.exec_id = c.exec_id.clone();
        r.oci_spec_json = c.spec_json.clone();
        r.rootfs_path = c.rootfs.to_string_lossy().into_owned();
        r.stdin = c.stdio.stdin;
        r.tty = c.stdio.tty;
        r
    }
}

impl From<&ExecConfig> for proto::ExecProcessRequest {
    fn from(c: &ExecConfig) -> Self {
        let mut r = proto::ExecProcessRequest::new();
        r.container_id = c.process.container_id.clone();
        r.exec_id = c.process.exec_id.clone();
        r.process_json = c.process_json.clone();
        r.stdin = c.stdio.stdin;
        r.tty = c.stdio.tty;
        r
    }
}

// ---- responses: both directions ----

impl From<ProcessExit> for proto::WaitProcessResponse {
    fn from(e: ProcessExit) -> Self {
        let mut r = proto::WaitProcessResponse::new();
        r.exit_status = e.status.as_status();
        r.exited_at_unix_nanos = e.exited_at_unix_nanos;
        r
    }
}

impl From<&ContainerStats> for proto::StatsContainerResponse {
    fn from(s: &ContainerStats) -> Self {
        let mut cpu = proto::CpuStats::new();
        cpu.usage_usec = s.cpu.usage_usec;
        cpu.user_usec = s.cpu.user_usec;
        cpu.system_usec = s.cpu.system_usec;
        cpu.nr_periods = s.cpu.nr_periods;
        cpu.nr_throttled = s.cpu.nr_throttled;
        cpu.throttled_usec = s.cpu.throttled_usec;
        let mut memory = proto::MemoryStats::new();
        memory.usage_bytes = s.memory.usage_bytes;
        memory.limit_bytes = s.memory.limit_bytes.unwrap_or(0);
        memory.anon_bytes = s.memory.anon_bytes;
        memory.file_bytes = s.memory.file_bytes;
        memory.oom_events = s.memory.oom_events;
        memory.oom_kill_events = s.memory.oom_kill_events;
        let mut pids = proto::PidsStats::new();
        pids.current = s.pids.current;
        pids.limit = s.pids.limit.unwrap_or(0);
        let mut io = proto::IoStats::new();
        io.devices =
            s.io.iter()
                .map(|d| {
                    let mut p = proto::IoDeviceStats::new();
                    p.major = d.major;
                    p.minor = d.minor;
                    p.read_bytes = d.read_bytes;
                    p.write_bytes = d.write_bytes;
                    p.read_ios = d.read_ios;
                    p.write_ios = d.write_ios;
                    p
                })
                .collect();
        let mut r = proto::StatsContainerResponse::new();
        r.cpu = Some(cpu).into();
        r.memory = Some(memory).into();
        r.pids = Some(pids).into();
        r.io = Some(io).into();
        r
    }
}

impl From<&proto::StatsContainerResponse> for ContainerStats {
    fn from(r: &proto::StatsContainerResponse) -> Self {
        let limit = |v: u64| if v == 0 { None } else { Some(v) };
        let cpu = r.cpu.as_ref().cloned().unwrap_or_default();
        let mem = r.memory.as_ref().cloned().unwrap_or_default();
        let pids = r.pids.as_ref().cloned().unwrap_or_default();
        let io = r.io.as_ref().cloned().unwrap_or_default();
        ContainerStats {
            cpu: CpuStats {
                usage_usec: cpu.usage_usec,
                user_usec: cpu.user_usec,
                system_usec: cpu.system_usec,
                nr_periods: cpu.nr_periods,
                nr_throttled: cpu.nr_throttled,
                throttled_usec: cpu.throttled_usec,
            },
            memory: MemoryStats {
                usage_bytes: mem.usage_bytes,
                limit_bytes: limit(mem.limit_bytes),
                anon_bytes: mem.anon_bytes,
                file_bytes: mem.file_bytes,
                oom_events: mem.oom_events,
                oom_kill_events: mem.oom_kill_events,
            },
            pids: PidsStats {
                current: pids.current,
                limit: limit(pids.limit),
            },
            io: io
                .devices
                .iter()
                .map(|d| IoDeviceStats {
                    major: d.major,
                    minor: d.minor,
                    read_bytes: d.read_bytes,
                    write_bytes: d.write_bytes,
                    read_ios: d.read_ios,
                    write_ios: d.write_ios,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(validate_container_id("abc-123_x.y").is_ok());
        assert!(validate_container_id("").is_err());
        assert!(validate_container_id("../etc").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_container_id(".hidden").is_err());
        assert!(validate_container_id(&"a".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(validate_exec_id("").is_ok());
        let err = validate_exec_id("a b").unwrap_err();
        assert_eq!(err.field, "exec_id");
    }

    #[test]
    fn exit_status_convention() {
        assert_eq!(ExitStatus::Code(3).as_status(), 3);
        assert_eq!(ExitStatus::Signal(15).as_status(), 143);
        assert_eq!(ExitStatus::Signal(9).as_status(), 137);
    }

    #[test]
    fn create_container_round_trip_and_validation() {
        let cfg = ContainerConfig {
            id: "c1".into(),
            exec_id: "init".into(),
            spec_json: b"{}".to_vec(),
            rootfs: "/run/bulkhead/shared/c1/rootfs".into(),
            stdio: StdioConfig {
                stdin: true,
                tty: false,
            },
        };
        let req = proto::CreateContainerRequest::from(&cfg);
        assert_eq!(ContainerConfig::try_from(req.clone()).unwrap(), cfg);

        let mut bad = req.clone();
        bad.rootfs_path = "relative/rootfs".into();
        assert_eq!(
            ContainerConfig::try_from(bad).unwrap_err().field,
            "rootfs_path"
        );
        let mut bad = req;
        bad.container_id = "x/../../y".into();
        assert_eq!(
            ContainerConfig::try_from(bad).unwrap_err().field,
            "container_id"
        );
    }

    #[test]
    fn sandbox_round_trip_and_resolv_conf() {
        let cfg = SandboxConfig {
            sandbox_id: "pod".into(),
            hostname: Some("web-0".into()),
            dns: DnsConfig {
                servers: vec!["198.18.0.1".into()],
                searches: vec!["svc.local".into(), "local".into()],
                options: vec!["ndots:5".into()],
            },
            shared_fs_tag: Some("bulkhead".into()),
        };
        let back = SandboxConfig::try_from(proto::CreateSandboxRequest::from(&cfg)).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(
            cfg.dns.to_resolv_conf(),
            "nameserver 198.18.0.1\nsearch svc.local local\noptions ndots:5\n"
        );
        let mut req = proto::CreateSandboxRequest::from(&cfg);
        req.hostname = "a/b".into();
        assert_eq!(SandboxConfig::try_from(req).unwrap_err().field, "hostname");
    }

    #[test]
    fn signals_and_winsize_are_bounded() {
        assert_eq!(validate_signal(15).unwrap(), 15);
        assert!(validate_signal(0).is_err());
        assert!(validate_signal(65).is_err());
        let mut r = proto::TtyWinResizeRequest::new();
        r.rows = 70_000;
        assert!(WinSize::try_from(&r).is_err());
        r.rows = 40;
        r.columns = 120;
        assert_eq!(
            WinSize::try_from(&r).unwrap(),
            WinSize {
                rows: 40,
                columns: 120
            }
        );
    }

    #[test]
    fn stats_round_trip() {
        let s = ContainerStats {
            cpu: CpuStats {
                usage_usec: 10,
                user_usec: 6,
                system_usec: 4,
                ..Default::default()
            },
            memory: MemoryStats {
                usage_bytes: 4096,
                limit_bytes: Some(1 << 20),
                oom_kill_events: 1,
                ..Default::default()
            },
            pids: PidsStats {
                current: 2,
                limit: None,
            },
            io: vec![IoDeviceStats {
                major: 254,
                minor: 0,
                read_bytes: 512,
                ..Default::default()
            }],
        };
        let back = ContainerStats::from(&proto::StatsContainerResponse::from(&s));
        assert_eq!(back, s);
    }
}
