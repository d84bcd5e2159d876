//! Published messages and what a notifier is handed.

use std::{ops::Deref, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::HeaderValue;

use crate::{EventType, Subscriber, TopicName};

/// One published message. Shared by every delivery of it: the payload is
/// never copied per subscriber.
#[derive(Debug)]
pub struct Message {
    pub(crate) id: String,
    pub(crate) offset: u64,
    pub(crate) topic: TopicName,
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) payload: Bytes,
    pub(crate) published_at: SystemTime,
    pub(crate) event_type: Option<EventType>,
    /// The trace its publish joined (the publish span's context).
    pub(crate) trace: Option<Box<crate::TraceContext>>,
}

impl Message {
    /// A message as a [`Store`](crate::Store) numbered it: its id is
    /// [`message_id`](crate::message_id) of the log's prefix and `offset`.
    pub fn new(
        id: String,
        offset: u64,
        topic: TopicName,
        content_type: Option<HeaderValue>,
        payload: Bytes,
        published_at: SystemTime,
    ) -> Self {
        Message {
            id,
            offset,
            topic,
            content_type,
            payload,
            published_at,
            event_type: None,
            trace: None,
        }
    }

    /// The same message with the trace context its publish kept.
    pub fn with_trace(mut self, trace: Option<crate::TraceContext>) -> Self {
        self.trace = trace.map(Box::new);
        self
    }

    /// The trace context its publish kept: its attempts are children of
    /// this span.
    pub fn trace(&self) -> Option<&crate::TraceContext> {
        self.trace.as_deref()
    }

    /// The same message with the event type its publisher named.
    pub fn with_event_type(mut self, event_type: Option<EventType>) -> Self {
        self.event_type = event_type;
        self
    }

    /// The message id (`msg_…`), the same in every delivery (`webhook-id`)
    /// and across restarts.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Its offset in its topic's log: per topic, dense, from 0, never
    /// reused.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The topic it was published on.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }
    /// The publisher's `Content-Type`, if it gave one.
    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.content_type.as_ref()
    }
    /// The payload, verbatim.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The event type its publisher named, if any.
    pub fn event_type(&self) -> Option<&EventType> {
        self.event_type.as_ref()
    }

    /// What holding the message in memory costs, as a
    /// [`MemoryBudget`](crate::MemoryBudget) counts it: its payload and a
    /// fixed 160 bytes for the `Message`, its id and the reference to it
    /// (measured: about 150 bytes with mimalloc), so that small messages
    /// are bounded too.
    pub fn held_bytes(&self) -> usize {
        self.payload.len()
            + self.event_type.as_ref().map_or(0, |t| t.as_str().len())
            + self.trace.as_ref().map_or(0, |t| t.held_bytes())
            + crate::memory::MESSAGE_OVERHEAD
    }
    /// When the broker accepted it.
    pub fn published_at(&self) -> SystemTime {
        self.published_at
    }
}

/// A message as its publisher hands it to [`Broker::publish_draft`]
/// (and, several at once, to [`Broker::publish_batch`]): before the log
/// numbers it.
///
/// [`Broker::publish_draft`]: crate::Broker::publish_draft
/// [`Broker::publish_batch`]: crate::Broker::publish_batch
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// The publisher's `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// The payload.
    pub payload: Bytes,
    /// What kind of event it is, for subscribers' filters.
    pub event_type: Option<EventType>,
    /// The publisher's idempotency key: a publish with a key the topic's
    /// log remembers appends nothing and is answered as the first was.
    pub idempotency_key: Option<crate::IdempotencyKey>,
    /// The publisher's trace context (`traceparent`, `tracestate`): the
    /// publish joins that trace.
    pub trace: Option<crate::TraceContext>,
}

impl Draft {
    /// A message of `payload` with its content type and no event type.
    pub fn new(content_type: Option<HeaderValue>, payload: Bytes) -> Self {
        Draft {
            content_type,
            payload,
            event_type: None,
            idempotency_key: None,
            trace: None,
        }
    }

    /// The same with an event type.
    pub fn with_event_type(mut self, event_type: Option<EventType>) -> Self {
        self.event_type = event_type;
        self
    }

    /// The same with the publisher's trace context.
    pub fn with_trace(mut self, trace: Option<crate::TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// The same with an idempotency key.
    pub fn with_idempotency_key(mut self, key: Option<crate::IdempotencyKey>) -> Self {
        self.idempotency_key = key;
        self
    }
}

impl From<(Option<HeaderValue>, Bytes)> for Draft {
    fn from((content_type, payload): (Option<HeaderValue>, Bytes)) -> Self {
        Draft::new(content_type, payload)
    }
}

/// The subscribers of a topic at the moment of a publish: an immutable,
/// shared snapshot (cloning it is one reference-count increment).
#[derive(Debug, Clone, Default)]
pub struct Subscribers(pub(crate) Arc<Vec<Arc<Subscriber>>>);

impl Deref for Subscribers {
    type Target = [Arc<Subscriber>];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// One publish, handed whole to the [`Notifier`](crate::Notifier): the
/// message and the snapshot of the subscribers it goes to.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The message.
    pub message: Arc<Message>,
    /// Who it goes to.
    pub subscribers: Subscribers,
}

/// What the publisher is told: the message id, its offset and how many
/// subscribers it was handed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message id.
    pub id: String,
    /// Its offset in the topic's log.
    pub offset: u64,
    /// How many subscribers it goes to.
    pub subscribers: usize,
    /// Whether its idempotency key was seen: nothing was appended, and
    /// this is the first publish's answer.
    pub replayed: bool,
}

/// What a batch publish answers: each message's id and offset, in order,
/// and how many subscribers each goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReceipt {
    /// Each message's receipt, in order: offsets consecutive but for
    /// replays (whose receipts are their first publish's).
    pub messages: Vec<Receipt>,
    /// How many subscribers the topic has now.
    pub subscribers: usize,
}

/// Whether a content type says JSON: `application/json` or any `+json`
/// media type, parameters aside, in any case.
///
/// # Examples
///
/// ```
/// assert!(broker_core::is_json_type("application/json; charset=utf-8"));
/// assert!(broker_core::is_json_type("application/vnd.api+JSON"));
/// assert!(!broker_core::is_json_type("text/plain"));
/// ```
pub fn is_json_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
        || (media.len() > 5
            && media.is_char_boundary(media.len() - 5)
            && media[media.len() - 5..].eq_ignore_ascii_case("+json"))
}
