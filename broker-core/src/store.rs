//! The storage interface: where registrations and each topic's log live.
//!
//! A [`Store`] keeps three things, one trait each:
//!
//! - [`Registrations`] (publishers, listeners, subscribers with their
//!   tokens and secrets, topics, groups) as [`Record`]s, loaded once when
//!   the broker opens and changed one [`Change`] at a time. The broker
//!   keeps its own in-memory index of them for fast token checks; the
//!   store is what survives a restart.
//! - [`Logs`]: **one append-only log per topic.** Every message gets an
//!   offset: per topic, dense, from 0, never reused. Retention removes old
//!   messages from the front; offsets keep counting.
//! - [`Progress`]: what readers did: subscribers' cursors, retries and
//!   dead letters, groups' progress, and the attempt log (NATS's consumer
//!   store, apart from the stream store).
//!
//! The default, [`MemoryStore`](crate::MemoryStore), keeps the log in
//! memory and registrations nowhere but the broker's index. `broker-store`
//! keeps both on disk. The trait is async and batched (an append takes many
//! messages) so that a remote store fits it too.

use std::{sync::Arc, time::SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;

use crate::{AttemptQuery, AttemptRecord, Error, MemoryBudget, Message, Role, TopicName};

/// A registration as a store keeps it: plain strings, so any backend can
/// write it its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A publisher or listener.
    Credential(CredentialRecord),
    /// A subscriber.
    Subscriber(SubscriberRecord),
    /// A topic created explicitly (`POST /v1/topics`): it stays until
    /// deleted, even with nothing registered on it.
    Topic(TopicRecord),
    /// A consumer group with its progress.
    Group(GroupRecord),
}

/// What a registration is. Every registration id starts with its kind's
/// [`prefix`](Self::prefix) (kept in every store, so this never changes);
/// [`RecordKind::of`] is the one place an id is read for its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An explicit topic: `top_<name>`.
    Topic,
    /// A publisher: `pub_<random>`.
    Publisher,
    /// A listener: `lis_<random>`.
    Listener,
    /// A subscriber: `sub_<random>`.
    Subscriber,
    /// A consumer group: `grp_<topic>/<name>`.
    Group,
}

impl RecordKind {
    const ALL: [RecordKind; 5] = [
        RecordKind::Topic,
        RecordKind::Publisher,
        RecordKind::Listener,
        RecordKind::Subscriber,
        RecordKind::Group,
    ];

    /// The prefix of its ids.
    pub const fn prefix(self) -> &'static str {
        match self {
            RecordKind::Topic => "top_",
            RecordKind::Publisher => "pub_",
            RecordKind::Listener => "lis_",
            RecordKind::Subscriber => "sub_",
            RecordKind::Group => "grp_",
        }
    }

    /// The kind of the registration with id `id`, if it has the shape of
    /// one.
    pub fn of(id: &str) -> Option<RecordKind> {
        Self::ALL.into_iter().find(|k| id.starts_with(k.prefix()))
    }

    /// What follows the prefix in `id`, if `id` is of this kind.
    pub fn strip(self, id: &str) -> Option<&str> {
        id.strip_prefix(self.prefix())
    }
}

impl Record {
    /// What it is.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Credential(c) => match c.role {
                Role::Publish => RecordKind::Publisher,
                Role::Listen => RecordKind::Listener,
            },
            Record::Subscriber(_) => RecordKind::Subscriber,
            Record::Topic(_) => RecordKind::Topic,
            Record::Group(_) => RecordKind::Group,
        }
    }

    /// The registration's id (`pub_…`, `lis_…`, `sub_…`): the key a store
    /// keeps it under.
    pub fn id(&self) -> &str {
        match self {
            Record::Credential(c) => &c.id,
            Record::Subscriber(s) => &s.id,
            Record::Topic(t) => &t.id,
            Record::Group(g) => &g.id,
        }
    }

    /// The topic it is registered on.
    pub fn topic(&self) -> &str {
        match self {
            Record::Credential(c) => &c.topic,
            Record::Subscriber(s) => &s.topic,
            Record::Topic(t) => &t.name,
            Record::Group(g) => &g.topic,
        }
    }

    /// Its place in registration order, across all topics.
    pub fn order(&self) -> u64 {
        match self {
            Record::Credential(c) => c.order,
            Record::Subscriber(s) => s.order,
            Record::Topic(t) => t.order,
            Record::Group(g) => g.order,
        }
    }
}

/// A stored consumer group: its settings and its progress (written again
/// at every ack, so that an acked message is never delivered again after
/// a restart). Leases are kept only when replicas share the group (a
/// store with a [`Cluster`](crate::Cluster), written at every pull too);
/// otherwise what was leased and not acked is delivered again after a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// `grp_<topic>/<name>`.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its name.
    pub name: String,
    /// How long a lease lasts.
    pub ack_timeout: std::time::Duration,
    /// Deliveries of a message at most.
    pub max_deliveries: u32,
    /// Its filter, as written.
    pub filter: Option<FilterRecord>,
    /// Registration order.
    pub order: u64,
    /// Every offset below is done.
    pub floor: u64,
    /// Offsets done above the floor.
    pub done: Vec<u64>,
    /// Deliveries so far of offsets not done.
    pub deliveries: Vec<(u64, u32)>,
    /// The next offset never leased.
    pub next: u64,
    /// Leases out: offset, receipt nonce, until when (ms since the
    /// epoch).
    pub leases: Vec<(u64, u64, u64)>,
    /// Offsets to lease again first.
    pub ready: Vec<u64>,
    /// Redriven dead letters not acked yet.
    pub redriven: Vec<u64>,
}

/// A stored [`Filter`](crate::Filter), as it was written: compiled again
/// when loaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterRecord {
    /// The event types it lists.
    pub event_types: Option<Vec<String>>,
    /// Its CEL expression.
    pub expression: Option<String>,
}

impl FilterRecord {
    /// The record of `filter`.
    pub fn of(filter: &crate::Filter) -> Self {
        FilterRecord {
            event_types: filter.event_types().map(<[String]>::to_vec),
            expression: filter.expression().map(str::to_owned),
        }
    }

    /// The filter again.
    ///
    /// # Errors
    ///
    /// As [`Filter::new`](crate::Filter::new).
    pub fn compile(&self) -> Result<crate::Filter, crate::Error> {
        crate::Filter::new(self.event_types.clone(), self.expression.clone())
    }
}

/// A stored explicit topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// `top_<name>`: the key it is stored under.
    pub id: String,
    /// The topic's name.
    pub name: String,
    /// Registration order.
    pub order: u64,
}

impl TopicRecord {
    /// The record id of topic `name`.
    pub fn id_of(name: &str) -> String {
        format!("{}{name}", RecordKind::Topic.prefix())
    }
}

/// A stored publisher or listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// Its id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its name, unique per topic and role.
    pub name: String,
    /// Publisher or listener.
    pub role: Role,
    /// The whole bearer token (a secret: see SECURITY.md).
    pub token: String,
    /// Registration order.
    pub order: u64,
}

/// A stored subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberRecord {
    /// Its id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// The canonical URL.
    pub url: String,
    /// The HTTP method.
    pub method: String,
    /// Its own headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Attempts per delivery (with exponential backoff), when `schedule`
    /// is `None`.
    pub max_attempts: u32,
    /// The waits of a retry schedule, if it has one.
    pub schedule: Option<Vec<std::time::Duration>>,
    /// One delivery at a time, in offset order.
    pub ordered: bool,
    /// Its filter, as written.
    pub filter: Option<FilterRecord>,
    /// False while disabled.
    pub enabled: bool,
    /// The `whsec_…` signing secret (a secret: see SECURITY.md).
    pub secret: String,
    /// The secret the last rotation replaced, and until when deliveries
    /// are signed with it too.
    pub previous_secret: Option<(String, SystemTime)>,
    /// Registration order.
    pub order: u64,
    /// Its cursor: the offset up to which its deliveries are done. Stored
    /// with the registration, and moved by [`Progress::save_cursor`].
    pub cursor: u64,
}

/// A delivery given up on: its attempts are exhausted. Kept until it is
/// redriven and delivered (or given up on again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id.
    pub message_id: String,
    /// Its offset in the topic's log.
    pub offset: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The HTTP status of the last attempt, if a response came.
    pub last_status: Option<u16>,
    /// What went wrong last, in words.
    pub last_error: String,
    /// When it was given up on.
    pub failed_at: SystemTime,
}

/// A delivery waiting for its retry: how many attempts were made and when
/// the next is due. Kept by a durable store so that a restart goes on with
/// the schedule where it was, rather than starting it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRetry {
    /// The message's offset in the topic's log.
    pub offset: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub due: SystemTime,
}

/// One change to the stored registrations.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Add a registration (or replace the one with the same id).
    Put(&'a Record),
    /// Remove the registration with this id.
    Remove {
        /// The id.
        id: &'a str,
    },
}

/// A message to append, before the log numbers it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The publisher's `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// The payload.
    pub payload: Bytes,
    /// When the broker accepted it.
    pub published_at: SystemTime,
    /// The event type its publisher named.
    pub event_type: Option<crate::EventType>,
    /// Its idempotency key, if its publisher gave one: an append of a key
    /// the store remembers appends nothing ([`crate::KeyTable`]).
    pub idempotency: Option<crate::Keyed>,
    /// The trace context of its publish span: the store keeps it with
    /// the message ([`Message::trace`]).
    pub trace: Option<crate::TraceContext>,
}

/// Messages read from a topic's log, and where the log stands.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// The messages, in offset order, without gaps.
    pub messages: Vec<Arc<Message>>,
    /// The offset of the oldest message still retained (equal to `next`
    /// when nothing is).
    pub first: u64,
    /// The offset the next message appended will get.
    pub next: u64,
}

/// The registrations: publishers, listeners, subscribers, explicit topics
/// and consumer groups, as [`Record`]s. Loaded once when the broker opens,
/// changed one [`Change`] at a time; with replicas sharing a store, each
/// change is what the others hear of ([`Cluster`](crate::Cluster)).
///
/// Every method that writes returns only once the write is as durable as
/// the store promises (for `broker-store` with `--fsync always`: on disk).
///
/// # Errors
///
/// Every method may fail with [`Error::Storage`] when the backend cannot
/// do its part (disk full, I/O error, remote store unreachable).
#[async_trait]
pub trait Registrations: Send + Sync + 'static {
    /// Every stored registration, in any order (the broker sorts them by
    /// [`Record::order`]).
    async fn load(&self) -> Result<Vec<Record>, Error>;

    /// Applies one registration change, durably.
    async fn save(&self, change: Change<'_>) -> Result<(), Error>;
}

/// One append-only log per topic (NATS's stream store). Calls for one
/// topic may run concurrently; a store orders appends itself.
///
/// # Errors
///
/// As [`Registrations`].
#[async_trait]
pub trait Logs: Send + Sync + 'static {
    /// Appends `messages` to `topic`'s log, creating the log if needed,
    /// and returns them numbered with consecutive offsets and their ids,
    /// in order. A message whose [`idempotency`](NewMessage::idempotency)
    /// key the store remembers for `topic` is not appended: it is
    /// [`Appended::Replayed`](crate::Appended::Replayed) with the answer
    /// its key got first, and the answer is given only once that message
    /// is as durable as the store promises. Deduplicated with the
    /// numbering, atomically: two appends with one key make one message.
    ///
    /// # Errors
    ///
    /// As [`Registrations`]; [`Error::IdempotencyKeyReused`] (nothing
    /// appended) when a remembered key comes with another payload or event
    /// type.
    async fn append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<crate::Appended>, Error>;

    /// Up to `max_messages` messages from offset `from` on (from the
    /// oldest retained one when `from` is older), fewer when the next one
    /// would take the payload bytes read past `max_bytes` (at least one is
    /// read whenever one is there). An unknown topic reads as an empty log.
    async fn read(
        &self,
        topic: &TopicName,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, Error>;

    /// Where `topic`'s log stands, without reading messages: `first` and
    /// `next` as in [`Read`].
    async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64), Error>;

    /// Deletes `topic`'s log: its messages are gone; a topic of the same
    /// name made later starts a new log. The default keeps no log.
    async fn delete_topic(&self, topic: &TopicName) -> Result<(), Error> {
        let _ = topic;
        Ok(())
    }
}

/// What the readers of the logs have done (NATS's consumer store):
/// subscribers' cursors, pending retries and dead letters, and consumer
/// groups' progress. Kept apart from the registrations: progress changes
/// at every delivery and ack, and is never announced to other replicas as
/// a registration change. Cursors and retries may be buffered
/// ([`WriteBehind`](crate::WriteBehind)).
///
/// # Errors
///
/// As [`Registrations`].
#[async_trait]
pub trait Progress: Send + Sync + 'static {
    /// Moves a subscriber's cursor. May be buffered: a store makes cursors
    /// durable within a short, documented time (`broker-store`: 100 ms),
    /// since losing the last moves only means delivering those messages
    /// again (deliveries are at least once). The default keeps nothing.
    async fn save_cursor(&self, subscriber: &str, cursor: u64) -> Result<(), Error> {
        let _ = (subscriber, cursor);
        Ok(())
    }

    /// Keeps a subscriber's dead letter (replacing one at the same offset),
    /// durably, and returns how many of its oldest dead letters went to
    /// keep the list within `keep` (at least 1). The broker passes its one
    /// cap, [`Limits::max_dead_letters`](crate::Limits::max_dead_letters).
    async fn put_dead_letter(
        &self,
        subscriber: &str,
        dead: &DeadLetter,
        keep: usize,
    ) -> Result<u64, Error>;

    /// Forgets a subscriber's dead letter at `offset` (redriven and
    /// delivered).
    async fn remove_dead_letter(&self, subscriber: &str, offset: u64) -> Result<(), Error>;

    /// A subscriber's dead letters, oldest offset first, at most `limit`.
    async fn dead_letters(&self, subscriber: &str, limit: usize) -> Result<Vec<DeadLetter>, Error>;

    /// Keeps a subscriber's pending retry (replacing the one at the same
    /// offset). May be buffered like [`save_cursor`](Self::save_cursor):
    /// losing the last ones only means a delivery's schedule starts again
    /// after a restart. The default keeps nothing.
    async fn save_retry(&self, subscriber: &str, retry: PendingRetry) -> Result<(), Error> {
        let _ = (subscriber, retry);
        Ok(())
    }

    /// Forgets a subscriber's pending retry at `offset` (the delivery is
    /// done with). Buffered like [`save_retry`](Self::save_retry).
    async fn forget_retry(&self, subscriber: &str, offset: u64) -> Result<(), Error> {
        let _ = (subscriber, offset);
        Ok(())
    }

    /// A subscriber's pending retries, oldest offset first (those below its
    /// cursor included: the caller skips them). The default has none.
    async fn pending_retries(&self, subscriber: &str) -> Result<Vec<PendingRetry>, Error> {
        let _ = subscriber;
        Ok(Vec::new())
    }

    /// Keeps a consumer group's progress (its whole record, written again
    /// at every ack and, with replicas, every pull), durably. Stored where
    /// the group's registration is, so it loads with it, but not
    /// announced: replicas read a group's state afresh under its lock.
    /// The default keeps nothing.
    async fn save_group(&self, group: GroupRecord) -> Result<(), Error> {
        let _ = group;
        Ok(())
    }
    /// Keeps `attempts` (of `subscriber` on `topic`, oldest first) in its
    /// attempt log, which keeps its newest `keep` and none older than the
    /// topic's retention. May be buffered like
    /// [`save_cursor`](Self::save_cursor), and written in batches: never an
    /// fsync per attempt. A listing sees what is buffered. The default
    /// keeps nothing.
    async fn record_attempts(
        &self,
        topic: &TopicName,
        subscriber: &str,
        attempts: Vec<AttemptRecord>,
        keep: usize,
    ) -> Result<(), Error> {
        let _ = (topic, subscriber, attempts, keep);
        Ok(())
    }

    /// `subscriber`'s attempts that `query` wants, newest first, none
    /// older than `topic`'s retention. The default has none.
    async fn attempts(
        &self,
        topic: &TopicName,
        subscriber: &str,
        query: &AttemptQuery,
    ) -> Result<Vec<AttemptRecord>, Error> {
        let _ = (topic, subscriber, query);
        Ok(Vec::new())
    }
}

/// A whole storage backend: [`Registrations`], [`Logs`] and [`Progress`],
/// and what the broker asks of the backend as one. Shaped like a
/// `Service`: `&self`, `Send` futures, impls for `Arc<S>` and `Box<S>`.
///
/// # Errors
///
/// As [`Registrations`].
#[async_trait]
pub trait Store: Registrations + Logs + Progress {
    /// Whether the store can take writes now (a remote store reachable),
    /// for readiness probes; answered quickly. The default: always.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] saying why not.
    async fn ready(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The memory budget the store keeps its in-memory messages within (a
    /// log, a cache), shared with whatever else holds messages: the broker
    /// asks once, when it opens, and deliveries charge it too. The default
    /// is a budget of its own without a limit, for a store holding no
    /// messages in memory.
    fn memory(&self) -> MemoryBudget {
        MemoryBudget::new(usize::MAX)
    }

    /// The processes sharing this store, when several may
    /// ([`Cluster`](crate::Cluster)): the broker then applies what the
    /// others change, and the notifier shares delivery work by leases. The
    /// broker asks once, when it opens. The default: `None`, one process.
    fn cluster(&self) -> Option<Arc<dyn crate::Cluster>> {
        None
    }
}

#[async_trait]
impl<S: Registrations + ?Sized> Registrations for Arc<S> {
    async fn load(&self) -> Result<Vec<Record>, Error> {
        (**self).load().await
    }
    async fn save(&self, change: Change<'_>) -> Result<(), Error> {
        (**self).save(change).await
    }
}

#[async_trait]
impl<S: Logs + ?Sized> Logs for Arc<S> {
    async fn append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<crate::Appended>, Error> {
        (**self).append(topic, messages).await
    }
    async fn read(
        &self,
        topic: &TopicName,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, Error> {
        (**self).read(topic, from, max_messages, max_bytes).await
    }
    async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64), Error> {
        (**self).bounds(topic).await
    }
    async fn delete_topic(&self, topic: &TopicName) -> Result<(), Error> {
        (**self).delete_topic(topic).await
    }
}

#[async_trait]
impl<S: Progress + ?Sized> Progress for Arc<S> {
    async fn save_cursor(&self, subscriber: &str, cursor: u64) -> Result<(), Error> {
        (**self).save_cursor(subscriber, cursor).await
    }
    async fn put_dead_letter(
        &self,
        subscriber: &str,
        dead: &DeadLetter,
        keep: usize,
    ) -> Result<u64, Error> {
        (**self).put_dead_letter(subscriber, dead, keep).await
    }
    async fn remove_dead_letter(&self, subscriber: &str, offset: u64) -> Result<(), Error> {
        (**self).remove_dead_letter(subscriber, offset).await
    }
    async fn dead_letters(&self, subscriber: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        (**self).dead_letters(subscriber, limit).await
    }
    async fn save_retry(&self, subscriber: &str, retry: PendingRetry) -> Result<(), Error> {
        (**self).save_retry(subscriber, retry).await
    }
    async fn forget_retry(&self, subscriber: &str, offset: u64) -> Result<(), Error> {
        (**self).forget_retry(subscriber, offset).await
    }
    async fn pending_retries(&self, subscriber: &str) -> Result<Vec<PendingRetry>, Error> {
        (**self).pending_retries(subscriber).await
    }
    async fn save_group(&self, group: GroupRecord) -> Result<(), Error> {
        (**self).save_group(group).await
    }
    async fn record_attempts(
        &self,
        topic: &TopicName,
        subscriber: &str,
        attempts: Vec<AttemptRecord>,
        keep: usize,
    ) -> Result<(), Error> {
        (**self)
            .record_attempts(topic, subscriber, attempts, keep)
            .await
    }
    async fn attempts(
        &self,
        topic: &TopicName,
        subscriber: &str,
        query: &AttemptQuery,
    ) -> Result<Vec<AttemptRecord>, Error> {
        (**self).attempts(topic, subscriber, query).await
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn ready(&self) -> Result<(), Error> {
        (**self).ready().await
    }
    fn memory(&self) -> MemoryBudget {
        (**self).memory()
    }
    fn cluster(&self) -> Option<Arc<dyn crate::Cluster>> {
        (**self).cluster()
    }
}

#[async_trait]
impl<S: Registrations + ?Sized> Registrations for Box<S> {
    async fn load(&self) -> Result<Vec<Record>, Error> {
        (**self).load().await
    }
    async fn save(&self, change: Change<'_>) -> Result<(), Error> {
        (**self).save(change).await
    }
}

#[async_trait]
impl<S: Logs + ?Sized> Logs for Box<S> {
    async fn append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<crate::Appended>, Error> {
        (**self).append(topic, messages).await
    }
    async fn read(
        &self,
        topic: &TopicName,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, Error> {
        (**self).read(topic, from, max_messages, max_bytes).await
    }
    async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64), Error> {
        (**self).bounds(topic).await
    }
    async fn delete_topic(&self, topic: &TopicName) -> Result<(), Error> {
        (**self).delete_topic(topic).await
    }
}

#[async_trait]
impl<S: Progress + ?Sized> Progress for Box<S> {
    async fn save_cursor(&self, subscriber: &str, cursor: u64) -> Result<(), Error> {
        (**self).save_cursor(subscriber, cursor).await
    }
    async fn put_dead_letter(
        &self,
        subscriber: &str,
        dead: &DeadLetter,
        keep: usize,
    ) -> Result<u64, Error> {
        (**self).put_dead_letter(subscriber, dead, keep).await
    }
    async fn remove_dead_letter(&self, subscriber: &str, offset: u64) -> Result<(), Error> {
        (**self).remove_dead_letter(subscriber, offset).await
    }
    async fn dead_letters(&self, subscriber: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        (**self).dead_letters(subscriber, limit).await
    }
    async fn save_retry(&self, subscriber: &str, retry: PendingRetry) -> Result<(), Error> {
        (**self).save_retry(subscriber, retry).await
    }
    async fn forget_retry(&self, subscriber: &str, offset: u64) -> Result<(), Error> {
        (**self).forget_retry(subscriber, offset).await
    }
    async fn pending_retries(&self, subscriber: &str) -> Result<Vec<PendingRetry>, Error> {
        (**self).pending_retries(subscriber).await
    }
    async fn save_group(&self, group: GroupRecord) -> Result<(), Error> {
        (**self).save_group(group).await
    }
    async fn record_attempts(
        &self,
        topic: &TopicName,
        subscriber: &str,
        attempts: Vec<AttemptRecord>,
        keep: usize,
    ) -> Result<(), Error> {
        (**self)
            .record_attempts(topic, subscriber, attempts, keep)
            .await
    }
    async fn attempts(
        &self,
        topic: &TopicName,
        subscriber: &str,
        query: &AttemptQuery,
    ) -> Result<Vec<AttemptRecord>, Error> {
        (**self).attempts(topic, subscriber, query).await
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Box<S> {
    async fn ready(&self) -> Result<(), Error> {
        (**self).ready().await
    }
    fn memory(&self) -> MemoryBudget {
        (**self).memory()
    }
    fn cluster(&self) -> Option<Arc<dyn crate::Cluster>> {
        (**self).cluster()
    }
}

/// The id of the message at `offset` of a log whose ids start with
/// `prefix` (12 hex digits, random per log): `msg_<prefix><offset as 12 hex
/// digits>`. Unique across topics (the prefix) and stable across restarts
/// (both parts are kept by the log).
pub fn message_id(prefix: &str, offset: u64) -> String {
    format!("msg_{prefix}{offset:012x}")
}

/// A new random id prefix for a log: 12 hex digits.
pub fn new_id_prefix() -> String {
    let bytes: [u8; 6] = crate::secret::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The offset a message id of this broker's shape claims, if it has the
/// shape (the prefix is not checked here).
pub(crate) fn claimed_offset(id: &str) -> Option<u64> {
    let hex = id.strip_prefix("msg_")?;
    if hex.len() != 24 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&hex[12..], 16).ok()
}

/// Whether two message ids come from the same log (share their prefix).
pub(crate) fn same_log(a: &str, b: &str) -> bool {
    a.len() == 28 && b.len() == 28 && a[..16] == b[..16]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_kind_is_read_off_its_id_and_gives_it_its_prefix() {
        for kind in RecordKind::ALL {
            let id = format!("{}x", kind.prefix());
            assert_eq!(RecordKind::of(&id), Some(kind));
            assert_eq!(kind.strip(&id), Some("x"));
        }
        assert_eq!(RecordKind::of("msg_0"), None);
        assert_eq!(RecordKind::of("sub"), None);
        assert_eq!(RecordKind::Topic.strip("sub_1"), None);
        let topic = Record::Topic(TopicRecord {
            id: TopicRecord::id_of("orders"),
            name: "orders".into(),
            order: 0,
        });
        assert_eq!(topic.kind(), RecordKind::Topic);
        assert_eq!(RecordKind::of(topic.id()), Some(RecordKind::Topic));
    }
}
