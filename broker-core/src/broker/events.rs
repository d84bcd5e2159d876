//! Operational events ([`OpEvent`]): published by the broker itself on
//! [`EVENTS_TOPIC`], like a publish but without a token and without
//! pacing.

use std::time::SystemTime;

use http::HeaderValue;

use super::Broker;
use crate::{stats::Publishing, Draft, EventType, OpEvent, EVENTS_TOPIC};

impl Broker {
    /// Publishes `event` on [`EVENTS_TOPIC`], if that topic exists (made
    /// explicitly, or by a registration on it). An event about the topic
    /// itself or its own subscribers is not published, so that a failing
    /// `broker.events` subscriber makes no events about itself. Never
    /// fails its caller: what could not be published is logged.
    pub async fn emit(&self, event: OpEvent) {
        if event.topic() == EVENTS_TOPIC {
            return;
        }
        let target = {
            let registry = self.shared.registry.read();
            registry
                .topics
                .get(EVENTS_TOPIC)
                .map(|t| (t.name.clone(), t.subscribers.clone(), t.stats.clone()))
        };
        let Some((topic, subscribers, stats)) = target else {
            return;
        };
        let Some(_publishing) = Publishing::on(&stats) else {
            return; // Being deleted.
        };
        let draft = Draft::new(
            Some(HeaderValue::from_static("application/json")),
            event.to_json(SystemTime::now()).into(),
        )
        .with_event_type(EventType::new(event.kind()).ok());
        match self
            .publish_to(topic, subscribers, &stats, vec![draft])
            .await
        {
            Ok(_) => {
                self.shared.events_published[event.index()]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(event = event.kind(), error = %e, "publishing an operational event failed");
            }
        }
    }

    /// Operational events published so far, by type (this process's).
    pub fn events_published(&self) -> Vec<(&'static str, u64)> {
        crate::EVENT_KINDS
            .iter()
            .zip(&self.shared.events_published)
            .map(|(kind, n)| (*kind, n.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}
