//! The core of a webhook pub/sub broker: a registry of topics, publishers
//! and subscribers, one log per topic behind a pluggable [`Store`], and a
//! publish path that appends each message to its topic's log and then hands
//! it, with a snapshot of the topic's subscribers, to a pluggable
//! [`Notifier`].
//!
//! No I/O happens here: the default store, [`MemoryStore`], keeps the logs
//! in memory; `broker-store` keeps them on disk. The HTTP delivery lives in
//! `broker-http`'s `WebhookNotifier`; tests and benchmarks plug in their own
//! notifier.
//!
//! - Registration is idempotent: a publisher is keyed by (topic, name), a
//!   subscriber by (topic, method, canonical URL).
//! - Only a registered publisher's token (256 random bits, compared in
//!   constant time) may publish, and only on its own topic. Listener
//!   tokens, for live listening, are issued and checked the same way
//!   ([`Role`]).
//! - Tokens the registry did not issue, JWTs, go to a pluggable
//!   [`TokenVerifier`] when one is set ([`Broker::with_token_verifier`]);
//!   their scope ([`Grants`]) says on which topics they publish and listen.
//! - Every message gets an offset in its topic's log (per topic, dense,
//!   never reused); live listeners replay from the log
//!   ([`Broker::replay_range`], [`Broker::read`]).
//! - A publish reads the registry under a short read lock, copies out the
//!   subscriber snapshot (one `Arc`), and calls the notifier once with the
//!   whole fan-out. The payload is a shared [`bytes::Bytes`].
//!
//! # Examples
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use broker_core::{Broker, Endpoint, Error, Notifier, Publish};
//!
//! #[derive(Default)]
//! struct Count(AtomicUsize);
//!
//! #[async_trait::async_trait]
//! impl Notifier for Count {
//!     async fn notify(&self, publish: Publish) {
//!         self.0.fetch_add(publish.subscribers.len(), Ordering::Relaxed);
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let count = Arc::new(Count::default());
//! let broker = Broker::new(count.clone());
//! let token = broker.register_publisher("orders", "checkout").await?.item.token().expose().to_owned();
//! for port in [9001, 9002] {
//!     let url = format!("http://127.0.0.1:{port}/hook");
//!     let none: [(&str, &str); 0] = [];
//!     broker.register_subscriber("orders", Endpoint::new(&url, None, none, broker.limits())?).await?;
//! }
//! broker.publish("orders", &token, None, "{}".into()).await?;
//! assert_eq!(count.0.load(Ordering::Relaxed), 2);
//!
//! // Another topic's token is refused.
//! broker.register_publisher("audit", "auditor").await?;
//! let err = broker.publish("audit", &token, None, "{}".into()).await.unwrap_err();
//! assert_eq!(err, Error::Forbidden);
//! # Ok::<_, Error>(())
//! # }).unwrap();
//! ```

mod attempts;
mod auth;
mod broker;
mod budget;
mod circuit;
mod cluster;
pub mod codec;
mod credential;
mod endpoint;
mod endpoint_stats;
mod error;
mod event_type;
mod filter;
mod group;
mod idempotency;
mod limits;
mod memory;
mod message;
mod mint;
mod notifier;
mod ops;
mod registry;
mod replay;
mod retry;
mod secret;
mod spans;
mod stats;
mod store;
mod subscriber;
pub mod time;
mod topic;
mod trace;
mod write_behind;

pub use attempts::{
    next_seq, not_before, AttemptQuery, AttemptRecord, AttemptRings, RESPONSE_KEPT,
};
pub use auth::{is_jwt_shaped, Grants, TokenRejection, TokenVerifier, MAX_JWT_LEN};
pub use broker::{Broker, Delivery, DeliveryState, Lookup, TopicDetail, TopicSummary, WeakBroker};
pub use budget::{Charge, MemoryBudget};
pub use circuit::Circuit;
pub use cluster::{Changes, Cluster};
pub use credential::{Credential, Listener, Publisher, Role};
pub use endpoint::Endpoint;
pub use endpoint_stats::{EndpointStats, StatsWindows, Window};
pub use error::Error;
pub use event_type::{EventType, MAX_EVENT_TYPE_LEN};
pub use filter::{Filter, MAX_EXPRESSION_LEN, MAX_FILTER_TYPES};
pub use group::{Group, GroupConfig, GroupStart, Pulled, MAX_WINDOW};
pub use idempotency::{
    fingerprint, Appended, IdempotencyKey, IdempotencyLimits, KeyTable, Keyed, Original,
    MAX_IDEMPOTENCY_KEY_LEN,
};
pub use limits::Limits;
pub use memory::{MemoryStore, Retention, MAX_DEAD_LETTERS};
pub use message::{is_json_type, BatchReceipt, Draft, Message, Publish, Receipt, Subscribers};
pub use mint::{MintedToken, TokenMinter, TokenRequest, MAX_SCOPE_LEN, MAX_SUBJECT_LEN};
pub use notifier::Notifier;
pub use ops::{DisableReason, OpEvent, EVENTS_TOPIC, EVENT_KINDS};
pub use replay::{Replay, ReplayFrom};
pub use retry::{format_duration, parse_duration, Retry, MAX_SCHEDULE, MAX_WAIT};
pub use secret::{SigningSecret, Token};
pub use spans::{SpanKind, SpanRecord, SpanValue, Spans};
pub use stats::Registration;
pub use store::{
    message_id, new_id_prefix, Change, CredentialRecord, DeadLetter, FilterRecord, GroupRecord,
    Logs, NewMessage, PendingRetry, Progress, Read, Record, RecordKind, Registrations, Store,
    SubscriberRecord, TopicRecord,
};
pub use subscriber::{DeliveryCounts, DeliveryStats, Outcome, Subscriber};
pub use topic::{TopicName, MAX_TOPIC_LEN};
pub use trace::{TraceContext, MAX_TRACESTATE};
pub use write_behind::{
    ProgressBatch, RetryChange, WriteBehind, MAX_BUFFERED, MAX_BUFFERED_ATTEMPT_BYTES,
};
