//! Task events to containerd's event service, through the shim crate's publisher (its
//! queue retries while containerd is away), as [`translate`] turns them into messages.

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::ttrpc::context::Context;

use crate::events::{EventSink, TaskEvent};
use crate::translate;

/// containerd's event service.
pub struct ContainerdEvents {
    publisher: RemotePublisher,
    namespace: String,
}

impl ContainerdEvents {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        ContainerdEvents {
            publisher,
            namespace: namespace.to_owned(),
        }
    }
}

#[async_trait]
impl EventSink for ContainerdEvents {
    async fn publish(&self, event: TaskEvent) {
        log::debug!("event {event:?}");
        let (topic, message) = translate::event_message(&event);
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, message)
            .await
        {
            log::error!("cannot publish {topic}: {e}");
        }
    }
}
