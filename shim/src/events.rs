//! Task events for containerd, as domain values, and where they go ([`EventSink`]):
//! containerd's event service (`ContainerdEvents` in `publisher.rs`, which depends on this
//! module, not the other way round) or a recorder in tests.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::mounts::RootfsMount;
use crate::stdio::StdioPaths;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    Create {
        container_id: String,
        bundle: PathBuf,
        rootfs: Vec<RootfsMount>,
        stdio: StdioPaths,
        pid: u32,
    },
    Start {
        container_id: String,
        pid: u32,
    },
    /// `exec_id` empty for the init process.
    Exit {
        container_id: String,
        exec_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: SystemTime,
    },
    Oom {
        container_id: String,
    },
    ExecAdded {
        container_id: String,
        exec_id: String,
    },
    ExecStarted {
        container_id: String,
        exec_id: String,
        pid: u32,
    },
    Delete {
        container_id: String,
        exec_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: SystemTime,
    },
    Paused {
        container_id: String,
    },
    Resumed {
        container_id: String,
    },
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, event: TaskEvent);
}

/// Keeps every event (tests, and the log of a shim without containerd).
#[derive(Debug, Default)]
pub struct RecordedEvents(pub Mutex<Vec<TaskEvent>>);

impl RecordedEvents {
    pub fn take(&self) -> Vec<TaskEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl EventSink for RecordedEvents {
    async fn publish(&self, event: TaskEvent) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}
