//! Registered subscribers and their delivery counters.

use std::{
    any::Any,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::SystemTime,
};

use crate::{secret::SigningSecret, stats::TopicStats, Endpoint, TopicName};

/// Where a subscriber stands: what a store keeps besides its endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub(crate) cursor: u64,
    pub(crate) order: u64,
    pub(crate) enabled: bool,
    pub(crate) previous_secret: Option<(SigningSecret, SystemTime)>,
}

/// A subscriber's signing secrets.
#[derive(Debug, Clone)]
pub(crate) struct Secrets {
    pub(crate) current: SigningSecret,
    /// The secret before the last rotation, and until when deliveries are
    /// signed with it too.
    pub(crate) previous: Option<(SigningSecret, SystemTime)>,
}

/// A subscriber registered on a topic: its endpoint, its signing secret,
/// whether it is still registered, and what happened to its deliveries.
pub struct Subscriber {
    pub(crate) id: String,
    pub(crate) topic: TopicName,
    /// Where and how deliveries go: replaced whole by a change
    /// ([`Broker::update_subscriber`](crate::Broker::update_subscriber)).
    /// Read per attempt (a short read lock, one reference count).
    endpoint: parking_lot::RwLock<Arc<Endpoint>>,
    /// Counts endpoint changes, so a notifier can tell what it built from
    /// the endpoint is stale without taking the lock.
    endpoint_version: AtomicU64,
    /// The signing secret, and the one it replaced while its overlap
    /// lasts. Read per delivery by a notifier that signs (a short read
    /// lock); written on rotation.
    pub(crate) secrets: parking_lot::RwLock<Secrets>,
    /// Counts rotations, so a notifier can tell its cached signers are
    /// stale without taking the lock.
    pub(crate) secrets_version: AtomicU64,
    pub(crate) active: AtomicBool,
    /// False while disabled (its endpoint answered `410 Gone`, or failed
    /// for too long): nothing is delivered, the cursor waits.
    pub(crate) enabled: AtomicBool,
    /// Its place in registration order (kept in its stored record).
    pub(crate) order: u64,
    /// The offset of its topic's log up to which every message is done
    /// with (delivered, failed for good, or dropped): deliveries resume
    /// here after a restart.
    pub(crate) cursor: AtomicU64,
    pub(crate) stats: DeliveryStats,
    /// Its attempts over the last 5 minutes, hour and day (this
    /// process's).
    pub(crate) endpoint_stats: crate::EndpointStats,
    /// The topic's counters, which outlive the subscriber.
    topic_stats: Arc<TopicStats>,
    /// State a notifier keeps per subscriber (a queue, a keyed MAC, ...).
    /// Lives and dies with the subscriber, so the notifier needs no map of
    /// its own and no lock to find it on the hot path.
    notifier_state: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Subscriber {
    pub(crate) fn new(
        id: String,
        topic: TopicName,
        endpoint: Endpoint,
        secret: SigningSecret,
        topic_stats: Arc<TopicStats>,
        standing: Standing,
    ) -> Self {
        Subscriber {
            id,
            topic,
            endpoint: parking_lot::RwLock::new(Arc::new(endpoint)),
            endpoint_version: AtomicU64::new(0),
            secrets: parking_lot::RwLock::new(Secrets {
                current: secret,
                previous: standing.previous_secret,
            }),
            secrets_version: AtomicU64::new(0),
            active: AtomicBool::new(true),
            enabled: AtomicBool::new(standing.enabled),
            order: standing.order,
            cursor: AtomicU64::new(standing.cursor),
            stats: DeliveryStats::default(),
            endpoint_stats: crate::EndpointStats::default(),
            topic_stats,
            notifier_state: OnceLock::new(),
        }
    }

    pub(crate) fn topic_stats(&self) -> &TopicStats {
        &self.topic_stats
    }

    /// The subscriber's id (`sub_…`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its topic.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// Where and how deliveries go, now: an attempt takes it once and
    /// keeps it (a change applies from the next attempt).
    pub fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.read().clone()
    }

    /// Changes each time the endpoint is changed.
    pub fn endpoint_version(&self) -> u64 {
        self.endpoint_version.load(Ordering::Acquire)
    }

    /// Replaces the endpoint; returns the one it replaced.
    pub(crate) fn set_endpoint(&self, endpoint: Arc<Endpoint>) -> Arc<Endpoint> {
        let old = std::mem::replace(&mut *self.endpoint.write(), endpoint);
        self.endpoint_version.fetch_add(1, Ordering::AcqRel);
        old
    }

    /// The secret deliveries are signed with.
    pub fn secret(&self) -> SigningSecret {
        self.secrets.read().current.clone()
    }

    /// The secret the last rotation replaced, while deliveries are still
    /// signed with it too (until the time given).
    pub fn previous_secret(&self) -> Option<(SigningSecret, SystemTime)> {
        self.secrets
            .read()
            .previous
            .clone()
            .filter(|(_, until)| *until > SystemTime::now())
    }

    /// Changes each time the secret is rotated.
    pub fn secrets_version(&self) -> u64 {
        self.secrets_version.load(Ordering::Acquire)
    }

    /// False once the subscriber is deregistered: a notifier drops what it
    /// still has queued for it.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Its attempts that succeeded and failed, and their latency, over
    /// the last 5 minutes, hour and 24 hours: those this process made.
    pub fn endpoint_stats(&self) -> crate::StatsWindows {
        self.endpoint_stats.windows(std::time::SystemTime::now())
    }

    /// The offset up to which every message of its topic's log is done
    /// with for this subscriber (see
    /// [`Broker::commit_cursor`](crate::Broker::commit_cursor)). A new
    /// subscriber starts at the end of the log: it gets what is published
    /// after it registered.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// Where its topic's log ends, as far as this broker knows: the offset
    /// after the last message it saw appended (its own publishes, and
    /// those of other processes sharing the store as their announcements
    /// arrive). A reader at or past it has nothing to read yet: the next
    /// append moves it before the notifier is told.
    pub fn log_end(&self) -> u64 {
        self.topic_stats.log_end.load(Ordering::SeqCst)
    }

    /// Whether deliveries go out: false once disabled (see
    /// [`Broker::set_enabled`](crate::Broker::set_enabled)).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// This subscriber's delivery counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Counts `n` deliveries with `outcome`, for this subscriber and for its
    /// topic (whose counters outlive it).
    pub fn record(&self, outcome: Outcome, n: u64) {
        self.stats.record(outcome, n);
        self.topic_stats.deliveries.record(outcome, n);
    }

    /// The notifier's own per-subscriber state, created by `init` on first
    /// use. Returns `None` if a value of another type is already there (a
    /// subscriber serves one notifier).
    ///
    /// # Examples
    ///
    /// ```
    /// # use broker_core::{Broker, Endpoint, Notifier, Publish};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// # struct N;
    /// # #[async_trait::async_trait] impl Notifier for N { async fn notify(&self, _: Publish) {} }
    /// # let broker = Broker::new(N);
    /// # let endpoint = Endpoint::new("http://127.0.0.1:9/", None, [("a", "b")], broker.limits()).unwrap();
    /// # let rt = tokio::runtime::Runtime::new().unwrap();
    /// let subscriber = rt.block_on(broker.register_subscriber("t", endpoint)).unwrap().item;
    /// let seen = subscriber.notifier_state(|| AtomicU64::new(0)).unwrap();
    /// seen.fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(subscriber.notifier_state(|| AtomicU64::new(0)).unwrap().load(Ordering::Relaxed), 1);
    /// ```
    pub fn notifier_state<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.notifier_state
            .get_or_init(|| Box::new(init()))
            .downcast_ref()
    }

    /// The notifier's state, if it made one (of type `T`).
    pub fn notifier_state_if<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.notifier_state.get()?.downcast_ref()
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("endpoint", &self.endpoint)
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

/// What happened to a subscriber's deliveries, counted by the notifier.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letters_evicted: AtomicU64,
    filtered: AtomicU64,
}

/// A point-in-time copy of [`DeliveryStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Answered with a 2xx status.
    pub delivered: u64,
    /// Given up on after the last attempt: an error status, a timeout, a
    /// connection failure.
    pub failed: u64,
    /// Discarded without an attempt: the subscriber's queue was full, it was
    /// deregistered, or the broker shut down first.
    pub dropped: u64,
    /// Not sent because the destination policy refused it.
    pub refused: u64,
    /// Attempts made again after a failure (not deliveries: one delivery
    /// retried twice counts 2 here and 1 in `delivered` or `failed`).
    pub retried: u64,
    /// Deliveries given up on that went to the dead letters (each is also
    /// counted in `failed`).
    pub dead_lettered: u64,
    /// Dead letters dropped to keep a subscriber's list within its bound
    /// (10,000, the oldest first).
    pub dead_letters_evicted: u64,
    /// Messages its filter skipped: done with, never attempted.
    pub filtered: u64,
}

/// What became of deliveries, for [`Subscriber::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with a 2xx status.
    Delivered,
    /// Given up on after its last attempt.
    Failed,
    /// Discarded without an attempt (queue full, deregistered, shutdown).
    Dropped,
    /// Not sent: the destination policy refused it.
    Refused,
    /// An attempt made again after a failure.
    Retried,
    /// Given up on and kept in the dead letters.
    DeadLettered,
    /// An old dead letter dropped to keep the list within its bound.
    DeadLetterEvicted,
    /// Skipped by the subscriber's filter (done with, never attempted).
    Filtered,
}

impl DeliveryStats {
    /// Counts `n` deliveries with `outcome`.
    pub fn record(&self, outcome: Outcome, n: u64) {
        let counter = match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Failed => &self.failed,
            Outcome::Dropped => &self.dropped,
            Outcome::Refused => &self.refused,
            Outcome::Retried => &self.retried,
            Outcome::DeadLettered => &self.dead_lettered,
            Outcome::DeadLetterEvicted => &self.dead_letters_evicted,
            Outcome::Filtered => &self.filtered,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> DeliveryCounts {
        DeliveryCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dead_letters_evicted: self.dead_letters_evicted.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
        }
    }
}
