//! Operational events: what the broker itself publishes on the reserved
//! topic [`EVENTS_TOPIC`] when a subscriber is disabled or enabled, its
//! circuit opens or closes, a message is dead-lettered, or a topic is
//! created or deleted.
//!
//! The topic is like any other for readers (webhooks with filters, live
//! listeners, pullers; registering on it needs management auth, as
//! anywhere), but no client publishes on it. An event about one of
//! `broker.events`'s own subscribers is not emitted, so nothing loops. It
//! is kept only while the topic exists: create it (`POST /v1/topics`) or
//! register on it to retain events.

use std::time::SystemTime;

use serde::Serialize;

/// The reserved topic of operational events.
pub const EVENTS_TOPIC: &str = "broker.events";

/// Why a subscriber was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableReason {
    /// Its endpoint answered `410 Gone`.
    Gone,
    /// Every attempt failed since then, for the disable-after time.
    FailingSince(SystemTime),
}

/// One operational event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpEvent {
    /// The delivery side disabled a subscriber.
    SubscriberDisabled {
        /// Its topic.
        topic: String,
        /// Its id.
        subscriber_id: String,
        /// Why.
        reason: DisableReason,
    },
    /// A subscriber was enabled again.
    SubscriberEnabled {
        /// Its topic.
        topic: String,
        /// Its id.
        subscriber_id: String,
    },
    /// A subscriber's circuit opened: attempts pause.
    CircuitOpened {
        /// Its topic.
        topic: String,
        /// Its id.
        subscriber_id: String,
        /// Failed attempts in a row.
        failures: u32,
    },
    /// A subscriber's circuit closed: a delivery got through, or a person
    /// asked for deliveries.
    CircuitClosed {
        /// Its topic.
        topic: String,
        /// Its id.
        subscriber_id: String,
    },
    /// A delivery was given up on and kept as a dead letter.
    MessageDeadLettered {
        /// Its topic.
        topic: String,
        /// The subscriber.
        subscriber_id: String,
        /// The message.
        message_id: String,
        /// Attempts made.
        attempts: u32,
        /// The last status, if there was one.
        last_status: Option<u16>,
    },
    /// A topic was created.
    TopicCreated {
        /// Its name.
        topic: String,
    },
    /// A topic was deleted.
    TopicDeleted {
        /// Its name.
        topic: String,
    },
}

/// Every event type, in [`OpEvent::index`] order.
pub const EVENT_KINDS: [&str; 7] = [
    "subscriber.disabled",
    "subscriber.enabled",
    "subscriber.circuit_opened",
    "subscriber.circuit_closed",
    "message.dead_lettered",
    "topic.created",
    "topic.deleted",
];

impl OpEvent {
    /// Its place in [`EVENT_KINDS`].
    pub fn index(&self) -> usize {
        match self {
            OpEvent::SubscriberDisabled { .. } => 0,
            OpEvent::SubscriberEnabled { .. } => 1,
            OpEvent::CircuitOpened { .. } => 2,
            OpEvent::CircuitClosed { .. } => 3,
            OpEvent::MessageDeadLettered { .. } => 4,
            OpEvent::TopicCreated { .. } => 5,
            OpEvent::TopicDeleted { .. } => 6,
        }
    }

    /// Its `type`, also the message's event type.
    pub fn kind(&self) -> &'static str {
        EVENT_KINDS[self.index()]
    }

    /// The topic it is about.
    pub fn topic(&self) -> &str {
        match self {
            OpEvent::SubscriberDisabled { topic, .. }
            | OpEvent::SubscriberEnabled { topic, .. }
            | OpEvent::CircuitOpened { topic, .. }
            | OpEvent::CircuitClosed { topic, .. }
            | OpEvent::MessageDeadLettered { topic, .. }
            | OpEvent::TopicCreated { topic }
            | OpEvent::TopicDeleted { topic } => topic,
        }
    }

    /// The JSON body published: `{"type","timestamp","data":{"topic",…}}`.
    pub fn to_json(&self, at: SystemTime) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            timestamp: String,
            data: Data<'a>,
        }
        #[derive(Serialize)]
        struct Data<'a> {
            topic: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            subscriber_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            failing_since: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            failures: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            message_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            attempts: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            last_status: Option<Option<u16>>,
        }
        let mut data = Data {
            topic: self.topic(),
            subscriber_id: None,
            reason: None,
            failing_since: None,
            failures: None,
            message_id: None,
            attempts: None,
            last_status: None,
        };
        match self {
            OpEvent::SubscriberDisabled {
                subscriber_id,
                reason,
                ..
            } => {
                data.subscriber_id = Some(subscriber_id);
                match reason {
                    DisableReason::Gone => data.reason = Some("gone"),
                    DisableReason::FailingSince(since) => {
                        data.reason = Some("failing");
                        data.failing_since = Some(crate::time::format_rfc3339(*since));
                    }
                }
            }
            OpEvent::SubscriberEnabled { subscriber_id, .. }
            | OpEvent::CircuitClosed { subscriber_id, .. } => {
                data.subscriber_id = Some(subscriber_id);
            }
            OpEvent::CircuitOpened {
                subscriber_id,
                failures,
                ..
            } => {
                data.subscriber_id = Some(subscriber_id);
                data.failures = Some(*failures);
            }
            OpEvent::MessageDeadLettered {
                subscriber_id,
                message_id,
                attempts,
                last_status,
                ..
            } => {
                data.subscriber_id = Some(subscriber_id);
                data.message_id = Some(message_id);
                data.attempts = Some(*attempts);
                data.last_status = Some(*last_status);
            }
            OpEvent::TopicCreated { .. } | OpEvent::TopicDeleted { .. } => {}
        }
        serde_json::to_vec(&Body {
            kind: self.kind(),
            timestamp: crate::time::format_rfc3339(at),
            data,
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_event_is_its_type_a_timestamp_and_its_data() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_430_227_250);
        let e = OpEvent::MessageDeadLettered {
            topic: "t".into(),
            subscriber_id: "sub_1".into(),
            message_id: "msg_1".into(),
            attempts: 3,
            last_status: Some(500),
        };
        let json: serde_json::Value = serde_json::from_slice(&e.to_json(at)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "message.dead_lettered", "timestamp": "2026-11-23T10:37:07.250Z",
                "data": {"topic": "t", "subscriber_id": "sub_1", "message_id": "msg_1",
                         "attempts": 3, "last_status": 500}})
        );
        let gone = OpEvent::SubscriberDisabled {
            topic: "t".into(),
            subscriber_id: "sub_1".into(),
            reason: DisableReason::FailingSince(at),
        };
        let json: serde_json::Value = serde_json::from_slice(&gone.to_json(at)).unwrap();
        assert_eq!(json["data"]["reason"], "failing");
        assert_eq!(json["data"]["failing_since"], "2026-11-23T10:37:07.250Z");
    }
}
