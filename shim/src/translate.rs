//! The protobuf edge: containerd's task API requests become domain values here, domain
//! answers and events become containerd's messages here. Nothing else in the shim touches
//! the generated types, except `service.rs` which only passes them through these functions.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_sandbox::{ContainerStats, ProcessRef, WinSize};
use containerd_shim_protos::api;
use containerd_shim_protos::cgroups_v2::metrics as cg2;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageDyn, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::types::task::Status as PbStatus;

use crate::error::{Result, ShimError};
use crate::events::TaskEvent;
use crate::guest_spec;
use crate::mounts::RootfsMount;
use crate::process::{Exit, Status};
use crate::stdio::StdioPaths;

/// Type URL of containerd's cgroup v2 metrics in a Stats answer.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// A Create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTask {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub stdio: StdioPaths,
    /// The runtime option `ConfigPath`: this handler's configuration file.
    pub config_path: Option<PathBuf>,
}

/// An Exec request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTask {
    pub process: ProcessRef,
    pub stdio: StdioPaths,
    /// The OCI process object, JSON.
    pub spec_json: Vec<u8>,
}

/// A Kill request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillTask {
    pub process: ProcessRef,
    pub signal: u32,
    /// Every process of the container (init only).
    pub all: bool,
}

/// What State answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    pub container_id: String,
    pub exec_id: String,
    pub bundle: PathBuf,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Option<Exit>,
}

fn path_opt(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn path_str(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn invalid(e: impl std::fmt::Display) -> ShimError {
    ShimError::InvalidArgument(e.to_string())
}

/// The process named by a request; an empty exec id names the init process.
pub fn process_ref(id: &str, exec_id: &str) -> Result<ProcessRef> {
    ProcessRef::new(id, exec_id).map_err(invalid)
}

pub fn create_task(r: &api::CreateTaskRequest) -> Result<CreateTask> {
    let process = process_ref(&r.id, "")?;
    if !r.checkpoint.is_empty() || !r.parent_checkpoint.is_empty() {
        return Err(ShimError::Unimplemented("restoring a checkpoint"));
    }
    let bundle = PathBuf::from(&r.bundle);
    if !bundle.is_absolute() {
        return Err(invalid("bundle must be an absolute path"));
    }
    Ok(CreateTask {
        id: process.container_id,
        bundle,
        rootfs: r
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect(),
        stdio: StdioPaths {
            stdin: path_opt(&r.stdin),
            stdout: path_opt(&r.stdout),
            stderr: path_opt(&r.stderr),
            terminal: r.terminal,
        },
        config_path: crate::runtime_options::config_path(r.options.as_ref()).map_err(invalid)?,
    })
}

pub fn exec_task(r: &api::ExecProcessRequest) -> Result<ExecTask> {
    if r.exec_id.is_empty() {
        return Err(invalid("exec_id must not be empty"));
    }
    let process = process_ref(&r.id, &r.exec_id)?;
    let spec_json = r
        .spec
        .as_ref()
        .map(|a| a.value.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("exec without a process spec"))?;
    // The agent parses it; refuse what is not even JSON here, with a clear message.
    let mut process_spec = serde_json::from_slice::<serde_json::Value>(&spec_json)
        .map_err(|e| invalid(format!("the exec process spec is not JSON: {e}")))?;
    let removed = guest_spec::strip_process_labels(&mut process_spec);
    let spec_json = if removed.is_empty() {
        spec_json
    } else {
        log::debug!(
            "exec {}: host-only fields not passed to the guest: {}",
            r.exec_id,
            removed.join(", ")
        );
        serde_json::to_vec(&process_spec).map_err(|e| invalid(e.to_string()))?
    };
    Ok(ExecTask {
        process,
        stdio: StdioPaths {
            stdin: path_opt(&r.stdin),
            stdout: path_opt(&r.stdout),
            stderr: path_opt(&r.stderr),
            terminal: r.terminal,
        },
        spec_json,
    })
}

pub fn kill_task(r: &api::KillRequest) -> Result<KillTask> {
    Ok(KillTask {
        process: process_ref(&r.id, &r.exec_id)?,
        signal: r.signal,
        all: r.all,
    })
}

pub fn win_size(r: &api::ResizePtyRequest) -> Result<WinSize> {
    let rows = u16::try_from(r.height).map_err(|_| invalid("height too large"))?;
    let columns = u16::try_from(r.width).map_err(|_| invalid("width too large"))?;
    Ok(WinSize { rows, columns })
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

fn status(s: Status) -> PbStatus {
    match s {
        Status::Created => PbStatus::CREATED,
        Status::Running => PbStatus::RUNNING,
        Status::Stopped => PbStatus::STOPPED,
        Status::Paused => PbStatus::PAUSED,
    }
}

pub fn state_response(s: &ProcessState) -> api::StateResponse {
    let mut r = api::StateResponse::new();
    r.id = if s.exec_id.is_empty() {
        s.container_id.clone()
    } else {
        s.exec_id.clone()
    };
    r.exec_id = s.exec_id.clone();
    r.bundle = s.bundle.to_string_lossy().into_owned();
    r.pid = s.pid;
    r.status = EnumOrUnknown::new(status(s.status));
    r.stdin = path_str(&s.stdio.stdin);
    r.stdout = path_str(&s.stdio.stdout);
    r.stderr = path_str(&s.stdio.stderr);
    r.terminal = s.stdio.terminal;
    if let Some(exit) = s.exit {
        r.exit_status = exit.status;
        r.exited_at = MessageField::some(timestamp(exit.at));
    }
    r
}

pub fn wait_response(exit: Exit) -> api::WaitResponse {
    let mut r = api::WaitResponse::new();
    r.exit_status = exit.status;
    r.exited_at = MessageField::some(timestamp(exit.at));
    r
}

pub fn delete_response(pid: u32, exit: Exit) -> api::DeleteResponse {
    let mut r = api::DeleteResponse::new();
    r.pid = pid;
    r.exit_status = exit.status;
    r.exited_at = MessageField::some(timestamp(exit.at));
    r
}

pub fn pids_response(pids: &[u32]) -> api::PidsResponse {
    let mut r = api::PidsResponse::new();
    r.processes = pids
        .iter()
        .map(|&pid| {
            let mut p = containerd_shim_protos::types::task::ProcessInfo::new();
            p.pid = pid;
            p
        })
        .collect();
    r
}

/// The guest's cgroup v2 numbers in containerd's cgroup v2 `Metrics`.
pub fn metrics(s: &ContainerStats) -> cg2::Metrics {
    let mut cpu = cg2::CPUStat::new();
    cpu.usage_usec = s.cpu.usage_usec;
    cpu.user_usec = s.cpu.user_usec;
    cpu.system_usec = s.cpu.system_usec;
    cpu.nr_periods = s.cpu.nr_periods;
    cpu.nr_throttled = s.cpu.nr_throttled;
    cpu.throttled_usec = s.cpu.throttled_usec;
    let mut memory = cg2::MemoryStat::new();
    memory.usage = s.memory.usage_bytes;
    // cgroup v2 "max" is reported as u64::MAX by containerd's own cgroup code.
    memory.usage_limit = s.memory.limit_bytes.unwrap_or(u64::MAX);
    memory.anon = s.memory.anon_bytes;
    memory.file = s.memory.file_bytes;
    let mut events = cg2::MemoryEvents::new();
    events.oom = s.memory.oom_events;
    events.oom_kill = s.memory.oom_kill_events;
    let mut pids = cg2::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit.unwrap_or(0);
    let mut io = cg2::IOStat::new();
    io.usage =
        s.io.iter()
            .map(|d| {
                let mut e = cg2::IOEntry::new();
                e.major = u64::from(d.major);
                e.minor = u64::from(d.minor);
                e.rbytes = d.read_bytes;
                e.wbytes = d.write_bytes;
                e.rios = d.read_ios;
                e.wios = d.write_ios;
                e
            })
            .collect();
    let mut m = cg2::Metrics::new();
    m.cpu = MessageField::some(cpu);
    m.memory = MessageField::some(memory);
    m.memory_events = MessageField::some(events);
    m.pids = MessageField::some(pids);
    m.io = MessageField::some(io);
    m
}

pub fn stats_response(s: &ContainerStats) -> Result<api::StatsResponse> {
    let value = metrics(s)
        .write_to_bytes()
        .map_err(|e| ShimError::InvalidArgument(format!("encoding metrics: {e}")))?;
    let mut any = Any::new();
    any.type_url = METRICS_V2_TYPE_URL.to_owned();
    any.value = value;
    let mut r = api::StatsResponse::new();
    r.stats = MessageField::some(any);
    Ok(r)
}

pub fn connect_response(shim_pid: u32, task_pid: u32) -> api::ConnectResponse {
    let mut r = api::ConnectResponse::new();
    r.shim_pid = shim_pid;
    r.task_pid = task_pid;
    r
}

/// containerd names the init process by the container id in exit and delete events.
fn event_id(container_id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        container_id.to_owned()
    } else {
        exec_id.to_owned()
    }
}

/// The topic and message of an event.
pub fn event_message(e: &TaskEvent) -> (&'static str, Box<dyn MessageDyn>) {
    match e {
        TaskEvent::Create {
            container_id,
            bundle,
            rootfs,
            stdio,
            pid,
        } => {
            let mut io = ev::TaskIO::new();
            io.stdin = path_str(&stdio.stdin);
            io.stdout = path_str(&stdio.stdout);
            io.stderr = path_str(&stdio.stderr);
            io.terminal = stdio.terminal;
            let mut m = ev::TaskCreate::new();
            m.container_id = container_id.clone();
            m.bundle = bundle.to_string_lossy().into_owned();
            m.rootfs = rootfs
                .iter()
                .map(|r| {
                    let mut pm = containerd_shim_protos::types::mount::Mount::new();
                    pm.type_ = r.fstype.clone();
                    pm.source = r.source.clone();
                    pm.options = r.options.clone();
                    pm
                })
                .collect();
            m.io = MessageField::some(io);
            m.pid = *pid;
            (topics::TASK_CREATE_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::Start { container_id, pid } => {
            let mut m = ev::TaskStart::new();
            m.container_id = container_id.clone();
            m.pid = *pid;
            (topics::TASK_START_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::Exit {
            container_id,
            exec_id,
            pid,
            exit_status,
            exited_at,
        } => {
            let mut m = ev::TaskExit::new();
            m.container_id = container_id.clone();
            m.id = event_id(container_id, exec_id);
            m.pid = *pid;
            m.exit_status = *exit_status;
            m.exited_at = MessageField::some(timestamp(*exited_at));
            (topics::TASK_EXIT_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::Oom { container_id } => {
            let mut m = ev::TaskOOM::new();
            m.container_id = container_id.clone();
            (topics::TASK_OOM_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::ExecAdded {
            container_id,
            exec_id,
        } => {
            let mut m = ev::TaskExecAdded::new();
            m.container_id = container_id.clone();
            m.exec_id = exec_id.clone();
            (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::ExecStarted {
            container_id,
            exec_id,
            pid,
        } => {
            let mut m = ev::TaskExecStarted::new();
            m.container_id = container_id.clone();
            m.exec_id = exec_id.clone();
            m.pid = *pid;
            (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::Delete {
            container_id,
            exec_id,
            pid,
            exit_status,
            exited_at,
        } => {
            let mut m = ev::TaskDelete::new();
            m.container_id = container_id.clone();
            m.id = event_id(container_id, exec_id);
            m.pid = *pid;
            m.exit_status = *exit_status;
            m.exited_at = MessageField::some(timestamp(*exited_at));
            (topics::TASK_DELETE_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::Paused { container_id } => {
            let mut m = ev::TaskPaused::new();
            m.container_id = container_id.clone();
            (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(m))
        }
        TaskEvent::Resumed { container_id } => {
            let mut m = ev::TaskResumed::new();
            m.container_id = container_id.clone();
            (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_protocol::types::{CpuStats, IoDeviceStats, MemoryStats, PidsStats};
    use containerd_shim_protos::protobuf::Message;

    fn create_req() -> api::CreateTaskRequest {
        let mut r = api::CreateTaskRequest::new();
        r.id = "c1".into();
        r.bundle = "/run/containerd/io.containerd.runtime.v2.task/default/c1".into();
        let mut m = containerd_shim_protos::types::mount::Mount::new();
        m.type_ = "overlay".into();
        m.source = "overlay".into();
        m.options = vec![
            "lowerdir=/a:/b".into(),
            "upperdir=/u".into(),
            "workdir=/w".into(),
        ];
        r.rootfs = vec![m];
        r.stdout = "/run/containerd/fifo/1/c1-stdout".into();
        r.stderr = "/run/containerd/fifo/1/c1-stderr".into();
        r
    }

    #[test]
    fn create_requests_become_domain_values() {
        let t = create_task(&create_req()).unwrap();
        assert_eq!(t.id, "c1");
        assert_eq!(t.rootfs.len(), 1);
        assert_eq!(t.rootfs[0].fstype, "overlay");
        assert_eq!(t.rootfs[0].options[0], "lowerdir=/a:/b");
        assert_eq!(t.stdio.stdin, None);
        assert_eq!(
            t.stdio.stdout,
            Some(PathBuf::from("/run/containerd/fifo/1/c1-stdout"))
        );
        assert!(!t.stdio.terminal);

        let mut bad = create_req();
        bad.id = "../x".into();
        assert!(matches!(
            create_task(&bad),
            Err(ShimError::InvalidArgument(_))
        ));
        let mut bad = create_req();
        bad.bundle = "relative".into();
        assert!(matches!(
            create_task(&bad),
            Err(ShimError::InvalidArgument(_))
        ));
        let mut bad = create_req();
        bad.checkpoint = "/cp".into();
        assert!(matches!(
            create_task(&bad),
            Err(ShimError::Unimplemented(_))
        ));
    }

    #[test]
    fn exec_requests_carry_the_process_json() {
        let mut r = api::ExecProcessRequest::new();
        r.id = "c1".into();
        r.exec_id = "e1".into();
        r.terminal = true;
        r.stdin = "/fifo/in".into();
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = br#"{"args":["sh"],"cwd":"/"}"#.to_vec();
        r.spec = MessageField::some(any);
        let t = exec_task(&r).unwrap();
        assert_eq!(t.process, ProcessRef::new("c1", "e1").unwrap());
        assert_eq!(t.spec_json, br#"{"args":["sh"],"cwd":"/"}"#.to_vec());
        assert!(t.stdio.terminal);
        assert_eq!(t.stdio.stdin, Some(PathBuf::from("/fifo/in")));

        let mut no_id = r.clone();
        no_id.exec_id.clear();
        assert!(exec_task(&no_id).is_err());
        let mut no_spec = r.clone();
        no_spec.spec = MessageField::none();
        assert!(exec_task(&no_spec).is_err());
        let mut garbage = r;
        garbage.spec.as_mut().unwrap().value = b"not json".to_vec();
        assert!(exec_task(&garbage).is_err());
    }

    #[test]
    fn kill_and_resize_requests() {
        let mut k = api::KillRequest::new();
        k.id = "c1".into();
        k.signal = 9;
        k.all = true;
        let t = kill_task(&k).unwrap();
        assert_eq!(t.process.exec_id, "");
        assert!(t.all);
        let mut r = api::ResizePtyRequest::new();
        r.id = "c1".into();
        r.width = 120;
        r.height = 40;
        assert_eq!(
            win_size(&r).unwrap(),
            WinSize {
                rows: 40,
                columns: 120
            }
        );
        r.width = 70_000;
        assert!(win_size(&r).is_err());
    }

    #[test]
    fn state_names_init_by_container_id_and_carries_the_exit() {
        let s = ProcessState {
            container_id: "c1".into(),
            exec_id: String::new(),
            bundle: "/b".into(),
            pid: 7,
            status: Status::Stopped,
            stdio: StdioPaths {
                stdout: Some("/fifo/out".into()),
                terminal: true,
                ..Default::default()
            },
            exit: Some(Exit {
                status: 143,
                at: UNIX_EPOCH + Duration::new(100, 5),
            }),
        };
        let r = state_response(&s);
        assert_eq!(r.id, "c1");
        assert_eq!(r.status.enum_value(), Ok(PbStatus::STOPPED));
        assert_eq!(r.stdout, "/fifo/out");
        assert_eq!(r.stdin, "");
        assert!(r.terminal);
        assert_eq!(r.exit_status, 143);
        assert_eq!(r.exited_at.seconds, 100);
        assert_eq!(r.exited_at.nanos, 5);
    }

    #[test]
    fn stats_are_cgroup_v2_metrics_in_an_any() {
        let s = ContainerStats {
            cpu: CpuStats {
                usage_usec: 1000,
                user_usec: 600,
                system_usec: 400,
                ..Default::default()
            },
            memory: MemoryStats {
                usage_bytes: 4 << 20,
                limit_bytes: None,
                anon_bytes: 1 << 20,
                oom_kill_events: 2,
                ..Default::default()
            },
            pids: PidsStats {
                current: 3,
                limit: Some(100),
            },
            io: vec![IoDeviceStats {
                major: 254,
                minor: 1,
                read_bytes: 512,
                write_ios: 4,
                ..Default::default()
            }],
        };
        let r = stats_response(&s).unwrap();
        assert_eq!(r.stats.type_url, METRICS_V2_TYPE_URL);
        let m = cg2::Metrics::parse_from_bytes(&r.stats.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 1000);
        assert_eq!(m.cpu.user_usec, 600);
        assert_eq!(m.memory.usage, 4 << 20);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory.anon, 1 << 20);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.pids.limit, 100);
        assert_eq!(m.io.usage.len(), 1);
        assert_eq!((m.io.usage[0].major, m.io.usage[0].rbytes), (254, 512));
        assert_eq!(m.io.usage[0].wios, 4);
    }

    #[test]
    fn events_have_containerd_topics_and_ids() {
        let at = UNIX_EPOCH + Duration::from_secs(9);
        let (topic, msg) = event_message(&TaskEvent::Exit {
            container_id: "c1".into(),
            exec_id: String::new(),
            pid: 5,
            exit_status: 1,
            exited_at: at,
        });
        assert_eq!(topic, "/tasks/exit");
        let exit = ev::TaskExit::parse_from_bytes(&msg.write_to_bytes_dyn().unwrap()).unwrap();
        assert_eq!(exit.id, "c1");
        assert_eq!(exit.container_id, "c1");
        assert_eq!(exit.exit_status, 1);
        assert_eq!(exit.exited_at.seconds, 9);

        let (topic, msg) = event_message(&TaskEvent::Delete {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            pid: 6,
            exit_status: 0,
            exited_at: at,
        });
        assert_eq!(topic, "/tasks/delete");
        let del = ev::TaskDelete::parse_from_bytes(&msg.write_to_bytes_dyn().unwrap()).unwrap();
        assert_eq!(del.id, "e1");

        let expected = [
            (
                TaskEvent::Start {
                    container_id: "c".into(),
                    pid: 1,
                },
                "/tasks/start",
            ),
            (
                TaskEvent::Oom {
                    container_id: "c".into(),
                },
                "/tasks/oom",
            ),
            (
                TaskEvent::ExecAdded {
                    container_id: "c".into(),
                    exec_id: "e".into(),
                },
                "/tasks/exec-added",
            ),
            (
                TaskEvent::ExecStarted {
                    container_id: "c".into(),
                    exec_id: "e".into(),
                    pid: 2,
                },
                "/tasks/exec-started",
            ),
            (
                TaskEvent::Paused {
                    container_id: "c".into(),
                },
                "/tasks/paused",
            ),
            (
                TaskEvent::Resumed {
                    container_id: "c".into(),
                },
                "/tasks/resumed",
            ),
        ];
        for (e, want) in expected {
            assert_eq!(event_message(&e).0, want);
        }
        let (topic, msg) = event_message(&TaskEvent::Create {
            container_id: "c".into(),
            bundle: "/b".into(),
            rootfs: vec![],
            stdio: StdioPaths {
                stdout: Some("/o".into()),
                ..Default::default()
            },
            pid: 3,
        });
        assert_eq!(topic, "/tasks/create");
        let c = ev::TaskCreate::parse_from_bytes(&msg.write_to_bytes_dyn().unwrap()).unwrap();
        assert_eq!(c.io.stdout, "/o");
        assert_eq!(c.pid, 3);
    }
}
