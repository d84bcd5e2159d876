//! The `Broker` handle: registration, deregistration and publish.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::HeaderValue;
use parking_lot::RwLock;

mod follow;

/// How long a replica may hold a consumer group's lock (a pull or an ack
/// takes it for a few store round trips).
const GROUP_LOCK_TTL: Duration = Duration::from_secs(5);

use crate::{
    registry::Registry,
    secret::{SigningSecret, Token},
    stats::{Registration, TopicStats, Waiting},
    store::{
        Change, CredentialRecord, DeadLetter, GroupRecord, NewMessage, PendingRetry, Read, Record,
        SubscriberRecord, TopicRecord,
    },
    BatchReceipt, Credential, DeliveryCounts, Endpoint, Error, Group, GroupConfig, GroupStart,
    Limits, Listener, MemoryBudget, MemoryStore, Notifier, Publish, Publisher, Pulled, Receipt,
    Replay, ReplayFrom, Role, Store, Subscriber, TopicName,
};
use crate::{Grants, TokenVerifier};

/// The in-memory broker. Cheap to clone: every clone is a handle to the same
/// registry and notifier.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use broker_core::{Broker, Endpoint, Notifier, Publish};
///
/// #[derive(Default)]
/// struct Recorder(Mutex<Vec<String>>);
///
/// #[async_trait::async_trait]
/// impl Notifier for Recorder {
///     async fn notify(&self, publish: Publish) {
///         for s in publish.subscribers.iter() {
///             self.0.lock().unwrap().push(s.endpoint().url().to_string());
///         }
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let recorder = Arc::new(Recorder::default());
/// let broker = Broker::new(recorder.clone());
/// let publisher = broker.register_publisher("orders", "checkout").await?.item;
/// let endpoint = Endpoint::new("http://127.0.0.1:9000/hook", None, [("X-Key", "k")], broker.limits())?;
/// broker.register_subscriber("orders", endpoint).await?;
///
/// let receipt = broker
///     .publish("orders", publisher.token().expose(), None, "hello".into())
///     .await?;
/// assert_eq!(receipt.subscribers, 1);
/// assert_eq!(*recorder.0.lock().unwrap(), ["http://127.0.0.1:9000/hook"]);
/// # Ok::<_, broker_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Held only for map look-ups and inserts, never across an `.await` or
    /// a call into the notifier: `publish` copies out the subscriber
    /// snapshot (an `Arc`) and drops the guard before notifying.
    registry: RwLock<Registry>,
    /// Orders registration changes: a change is planned under the
    /// registry lock, made durable in the store (an `.await`, so this is
    /// an async mutex, never the registry lock), then applied. Publishes
    /// never take it.
    changes: tokio::sync::Mutex<()>,
    /// Registration order, kept in every stored record.
    order: AtomicU64,
    notifier: Box<dyn Notifier>,
    store: Box<dyn Store>,
    /// The store's memory budget, which deliveries charge too.
    memory: MemoryBudget,
    limits: Limits,
    closed: AtomicBool,
    /// The processes sharing the store, if it is shared
    /// ([`Store::cluster`]).
    cluster: Option<Arc<dyn crate::Cluster>>,
    /// Checks JWT-shaped tokens; set once ([`Broker::with_token_verifier`]).
    verifier: std::sync::OnceLock<Box<dyn TokenVerifier>>,
}

/// A [`Broker`] that a notifier holds without keeping it alive: the broker
/// owns its notifier, so a strong handle back would be a cycle.
#[derive(Clone, Debug, Default)]
pub struct WeakBroker(std::sync::Weak<Shared>);

impl WeakBroker {
    /// The broker, while it is still there.
    pub fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|shared| Broker { shared })
    }
}

/// A topic in the list of topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    /// Its name.
    pub name: TopicName,
    /// How many publishers are registered on it.
    pub publishers: usize,
    /// How many listeners are registered on it.
    pub listeners: usize,
    /// How many subscribers are registered on it.
    pub subscribers: usize,
    /// Messages published on it since it was created.
    pub published: u64,
    /// Outcomes of its deliveries since it was created.
    pub deliveries: DeliveryCounts,
    /// Messages its subscribers have yet to be done with, summed.
    pub lag: u64,
    /// Its subscribers that are disabled.
    pub disabled: usize,
}

/// Everything registered on one topic.
#[derive(Debug, Clone)]
pub struct TopicDetail {
    /// Its name.
    pub name: TopicName,
    /// Its publishers, ordered by name.
    pub publishers: Vec<Arc<Publisher>>,
    /// Its listeners, ordered by name.
    pub listeners: Vec<Arc<Listener>>,
    /// Its subscribers, in registration order.
    pub subscribers: Vec<Arc<Subscriber>>,
    /// Messages published on it since it was created.
    pub published: u64,
    /// Outcomes of its deliveries since it was created.
    pub deliveries: DeliveryCounts,
}

impl Broker {
    /// An in-memory broker ([`MemoryStore`] with its defaults) with default
    /// [`Limits`] that hands publishes to `notifier`.
    pub fn new(notifier: impl Notifier) -> Self {
        Self::with_limits(notifier, Limits::default())
    }

    /// An in-memory broker with the given limits.
    pub fn with_limits(notifier: impl Notifier, limits: Limits) -> Self {
        let broker = Self::build(notifier, limits, Box::new(MemoryStore::default()));
        broker.shared.notifier.attach(&broker);
        broker
    }

    fn build(notifier: impl Notifier, limits: Limits, store: Box<dyn Store>) -> Self {
        Broker {
            shared: Arc::new(Shared {
                registry: RwLock::new(Registry::default()),
                changes: tokio::sync::Mutex::new(()),
                order: AtomicU64::new(0),
                notifier: Box::new(notifier),
                memory: store.memory(),
                cluster: store.cluster(),
                store,
                limits,
                closed: AtomicBool::new(false),
                verifier: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A broker over `store`, with everything the store holds registered
    /// again: the same ids, tokens and secrets as before.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the store cannot be read, or holds a
    /// registration this broker cannot make sense of.
    ///
    /// # Examples
    ///
    /// ```
    /// use broker_core::{Broker, MemoryStore, Publish};
    ///
    /// struct Nobody;
    /// #[async_trait::async_trait]
    /// impl broker_core::Notifier for Nobody {
    ///     async fn notify(&self, _: Publish) {}
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let broker = Broker::open(Nobody, Default::default(), MemoryStore::default()).await?;
    /// assert!(broker.topics().is_empty());
    /// # Ok::<_, broker_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn open(
        notifier: impl Notifier,
        limits: Limits,
        store: impl Store,
    ) -> Result<Self, Error> {
        let mut records = store.load().await?;
        records.sort_by_key(Record::order);
        let broker = Self::build(notifier, limits, Box::new(store));
        {
            let mut registry = broker.shared.registry.write();
            for record in &records {
                broker.restore(&mut registry, record)?;
            }
        }
        let next = records.last().map_or(0, |r| r.order() + 1);
        broker.shared.order.store(next, Ordering::Relaxed);
        let topics: Vec<_> = {
            let registry = broker.shared.registry.read();
            registry
                .topics
                .values()
                .map(|t| (t.name.clone(), t.stats.clone()))
                .collect()
        };
        for (name, stats) in topics {
            let (_, end) = broker.shared.store.bounds(&name).await?;
            stats.log_end.fetch_max(end, Ordering::AcqRel);
        }
        // Now that every subscriber is back, with its cursor.
        broker.shared.notifier.attach(&broker);
        if let Some(cluster) = broker.shared.cluster.clone() {
            tokio::spawn(follow::follow(broker.downgrade(), cluster));
        }
        Ok(broker)
    }

    fn restore(&self, registry: &mut Registry, record: &Record) -> Result<(), Error> {
        let bad = |what: &str| Error::storage(format!("stored {} {what}", record.id()));
        match record {
            Record::Credential(c) => {
                let credential = Credential {
                    id: c.id.clone(),
                    topic: TopicName::new(&c.topic).map_err(|_| bad("has a bad topic"))?,
                    name: c.name.clone(),
                    role: c.role,
                    token: Token::restore(&c.token).ok_or_else(|| bad("has a bad token"))?,
                };
                registry.insert_credential(Arc::new(credential));
            }
            Record::Subscriber(s) => {
                let limits = &self.shared.limits;
                let retry = match &s.schedule {
                    Some(waits) => crate::Retry::Schedule(waits.as_slice().into()),
                    None => crate::Retry::Attempts(s.max_attempts),
                };
                let endpoint = Endpoint::new(&s.url, Some(&s.method), s.headers.clone(), limits)
                    .and_then(|e| e.with_retry(retry, limits))
                    .map(|e| e.with_ordered(s.ordered))
                    .map_err(|e| bad(&format!("is no longer valid: {e}")))?;
                let topic = TopicName::new(&s.topic).map_err(|_| bad("has a bad topic"))?;
                let secret =
                    SigningSecret::restore(&s.secret).ok_or_else(|| bad("has a bad secret"))?;
                let subscriber = registry.restore_subscriber(
                    s.id.clone(),
                    topic,
                    endpoint,
                    secret,
                    crate::subscriber::Standing {
                        cursor: s.cursor,
                        order: s.order,
                        enabled: s.enabled,
                        previous_secret: match &s.previous_secret {
                            Some((secret, until)) => Some((
                                SigningSecret::restore(secret)
                                    .ok_or_else(|| bad("has a bad previous secret"))?,
                                *until,
                            )),
                            None => None,
                        },
                    },
                );
                registry.insert_subscriber(subscriber);
            }
            Record::Topic(t) => {
                let name = TopicName::new(&t.name).map_err(|_| bad("has a bad name"))?;
                registry.make_explicit(&name);
            }
            Record::Group(g) => {
                let topic = TopicName::new(&g.topic).map_err(|_| bad("has a bad topic"))?;
                let state = crate::group::GroupState::of_record(g);
                let group = Group {
                    id: g.id.clone(),
                    topic: topic.clone(),
                    name: g.name.clone(),
                    config: GroupConfig {
                        ack_timeout: g.ack_timeout,
                        max_deliveries: g.max_deliveries,
                    },
                    order: g.order,
                    state: parking_lot::Mutex::new(state),
                    returned: tokio::sync::Notify::new(),
                    persist: tokio::sync::Mutex::new(()),
                };
                registry
                    .topic_or_create(&topic)
                    .groups
                    .insert(g.name.clone(), Arc::new(group));
            }
        }
        Ok(())
    }

    /// Creates `name` explicitly: it stays until [`Broker::delete_topic`],
    /// even with nothing registered on it. Answers once the store has it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`]; [`Error::TopicExists`] when a topic of
    /// that name exists (explicit or not); [`Error::LimitExceeded`];
    /// [`Error::Storage`].
    pub async fn create_topic(&self, name: &str) -> Result<(), Error> {
        let topic = TopicName::new(name)?;
        let _order = self.shared.changes.lock().await;
        {
            let registry = self.shared.registry.read();
            if registry.topics.contains_key(name) {
                return Err(Error::TopicExists);
            }
            let limit = self.shared.limits.max_topics;
            if registry.topics.len() >= limit {
                return Err(Error::LimitExceeded {
                    what: "topics",
                    limit,
                });
            }
        }
        let record = Record::Topic(TopicRecord {
            id: TopicRecord::id_of(name),
            name: name.to_owned(),
            order: self.next_order(),
        });
        self.shared.store.save(Change::Put(&record)).await?;
        self.shared.registry.write().make_explicit(&topic);
        Ok(())
    }

    /// Deletes `name` with everything on it: its publishers, listeners and
    /// subscribers (their deliveries end at once), and its log. Live
    /// connections on it are ended by the notifier
    /// ([`Notifier::topic_deleted`]). A topic of the same name made later
    /// starts afresh.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::TopicNotFound`], or
    /// [`Error::Storage`] (then part of it may be gone; deleting again
    /// finishes it).
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let topic = TopicName::new(name)?;
        let _order = self.shared.changes.lock().await;
        let ids: Vec<String> = {
            let registry = self.shared.registry.read();
            let t = registry.topics.get(name).ok_or(Error::TopicNotFound)?;
            t.publishers
                .values()
                .chain(t.listeners.values())
                .map(|c| c.id.clone())
                .chain(t.subscribers.iter().map(|s| s.id.clone()))
                .chain(t.groups.values().map(|g| g.id.clone()))
                .chain(t.explicit.then(|| TopicRecord::id_of(name)))
                .collect()
        };
        for id in &ids {
            self.shared.store.save(Change::Remove { id }).await?;
        }
        self.shared.store.delete_topic(&topic).await?;
        let subscribers = self.shared.registry.write().remove_topic(name);
        for subscriber in &subscribers {
            self.shared.notifier.changed(subscriber);
        }
        self.shared.notifier.topic_deleted(&topic);
        Ok(())
    }

    /// Creates consumer group `name` on `topic` (creating the topic if
    /// needed), starting at `start`; replaying an existing name returns it
    /// as it is, with `created == false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidGroup`],
    /// [`Error::LimitExceeded`], or [`Error::Storage`].
    pub async fn create_group(
        &self,
        topic: &str,
        name: &str,
        config: GroupConfig,
        start: GroupStart,
    ) -> Result<Registration<Arc<Group>>, Error> {
        crate::topic::validate(topic)?;
        if !crate::group::valid_name(name) {
            return Err(Error::InvalidGroup {
                reason: "a group name is 1-128 characters of [A-Za-z0-9._-]",
            });
        }
        if config.ack_timeout.is_zero() || config.ack_timeout > Duration::from_secs(12 * 3600) {
            return Err(Error::InvalidGroup {
                reason: "ack_timeout must be more than 0 and at most 12h",
            });
        }
        if !(1..=1_000).contains(&config.max_deliveries) {
            return Err(Error::InvalidGroup {
                reason: "max_deliveries must be 1 to 1000",
            });
        }
        let _order = self.shared.changes.lock().await;
        let (name_t, stats) = {
            let mut registry = self.shared.registry.write();
            let t = registry.topic_entry(topic, &self.shared.limits)?;
            if let Some(existing) = t.groups.get(name) {
                return Ok(Registration {
                    item: existing.clone(),
                    created: false,
                });
            }
            (t.name.clone(), t.stats.clone())
        };
        let (first, end) = self.shared.store.bounds(&name_t).await?;
        let end = end.max(stats.log_end.load(Ordering::Acquire));
        let floor = match start {
            GroupStart::Earliest => first,
            GroupStart::Latest => end,
        };
        let group = Arc::new(Group {
            id: Group::id_of(topic, name),
            topic: name_t,
            name: name.to_owned(),
            config,
            order: self.next_order(),
            state: parking_lot::Mutex::new(crate::group::GroupState {
                floor,
                next: floor,
                ..Default::default()
            }),
            returned: tokio::sync::Notify::new(),
            persist: tokio::sync::Mutex::new(()),
        });
        let record = group_record(&group, self.shared.cluster.is_some());
        self.durably(topic, Change::Put(&record)).await?;
        let mut registry = self.shared.registry.write();
        registry
            .topic_or_create(&group.topic)
            .groups
            .insert(name.to_owned(), group.clone());
        Ok(Registration::created(group))
    }

    fn group(&self, topic: &str, name: &str) -> Result<(Arc<Group>, Arc<TopicStats>), Error> {
        crate::topic::validate(topic)?;
        let registry = self.shared.registry.read();
        let t = registry.topics.get(topic).ok_or(Error::GroupNotFound)?;
        let group = t.groups.get(name).ok_or(Error::GroupNotFound)?;
        Ok((group.clone(), t.stats.clone()))
    }

    /// Deletes consumer group `name`: its progress, leases and dead
    /// letters go.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn delete_group(&self, topic: &str, name: &str) -> Result<(), Error> {
        let _order = self.shared.changes.lock().await;
        let (group, _) = self.group(topic, name)?;
        self.shared
            .store
            .save(Change::Remove { id: &group.id })
            .await?;
        let mut registry = self.shared.registry.write();
        if let Some(t) = registry.topics.get_mut(topic) {
            t.groups.remove(name);
        }
        registry.prune(topic);
        Ok(())
    }

    /// Leases up to `max` messages of group `name` to the caller: those
    /// whose lease expired first, then new ones in offset order. Each
    /// comes with a receipt to [`ack`](Broker::ack) within the group's
    /// `ack_timeout`; not acked, it is delivered again, and after
    /// `max_deliveries` it goes to the group's dead letters. When there is
    /// nothing to lease, waits up to `wait` for a publish or a lease to
    /// come back.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn pull(
        &self,
        topic: &str,
        name: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Pulled>, Error> {
        let (group, stats) = self.group(topic, name)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let shared = self.share_group(&group).await?;
            let now = tokio::time::Instant::now();
            let (dead, leased) = {
                let mut state = group.state.lock();
                let dead = state.expire(now, group.config.max_deliveries);
                let end = stats.log_end.load(Ordering::Acquire);
                let leased = state.lease(max, end, now, group.config.ack_timeout);
                (dead, leased)
            };
            let kept = async {
                if !dead.is_empty() {
                    self.group_dead(&group, &dead).await
                } else if shared.is_some() && !leased.is_empty() {
                    // The other replicas must see the leases.
                    self.persist_group(&group).await
                } else {
                    Ok(())
                }
            }
            .await;
            self.unshare_group(&group, shared).await;
            kept?;
            let pulled = self.read_leased(&group, leased).await?;
            if !pulled.is_empty() || now >= deadline {
                return Ok(pulled);
            }
            // Nothing: wait for a publish, a lease given back or expiring,
            // or the deadline.
            let expiry = group.state.lock().next_expiry();
            let until = expiry.map_or(deadline, |e| e.min(deadline));
            let _waiting = Waiting::on(&stats);
            let appended = stats.appended.notified();
            let returned = group.returned.notified();
            tokio::pin!(appended, returned);
            appended.as_mut().enable();
            returned.as_mut().enable();
            // Checked after the waits are enabled: a publish or a lease
            // given back since the lease above is not missed.
            let end = stats.log_end.load(Ordering::SeqCst);
            let idle = {
                let state = group.state.lock();
                state.ready.is_empty()
                    && state.next >= end.min(state.floor.saturating_add(crate::MAX_WINDOW))
            };
            if idle {
                tokio::select! {
                    _ = appended => {}
                    _ = returned => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }

    /// Reads the leased messages from the log; those retention removed are
    /// done with (nothing to deliver).
    async fn read_leased(
        &self,
        group: &Group,
        leased: Vec<crate::group::Leased>,
    ) -> Result<Vec<Pulled>, Error> {
        let mut pulled = Vec::with_capacity(leased.len());
        let mut i = 0;
        while i < leased.len() {
            // A run of consecutive offsets is one read.
            let start = leased[i].offset;
            let mut j = i + 1;
            while j < leased.len() && leased[j].offset == leased[j - 1].offset + 1 {
                j += 1;
            }
            let read = self
                .shared
                .store
                .read(&group.topic, start, j - i, usize::MAX)
                .await?;
            let mut messages = read.messages.into_iter().peekable();
            for lease in &leased[i..j] {
                while messages.next_if(|m| m.offset < lease.offset).is_some() {}
                match messages.next_if(|m| m.offset == lease.offset) {
                    Some(message) => pulled.push(Pulled {
                        message,
                        receipt: crate::group::receipt(lease.offset, lease.nonce),
                        deliveries: lease.deliveries,
                    }),
                    None => {
                        // Gone with retention: nothing to deliver.
                        let mut state = group.state.lock();
                        state.leases.remove(&lease.offset);
                        state.finish(lease.offset);
                    }
                }
            }
            i = j;
        }
        Ok(pulled)
    }

    /// Keeps the dead letters of messages whose deliveries ran out, then
    /// the group's progress.
    async fn group_dead(&self, group: &Group, dead: &[(u64, u32)]) -> Result<(), Error> {
        for &(offset, deliveries) in dead {
            let read = self.shared.store.read(&group.topic, offset, 1, 0).await?;
            let Some(message) = read.messages.into_iter().find(|m| m.offset == offset) else {
                continue; // gone with retention
            };
            let letter = DeadLetter {
                message_id: message.id.clone(),
                offset,
                attempts: deliveries,
                last_status: None,
                last_error: "not acked within the group's ack_timeout".to_owned(),
                failed_at: SystemTime::now(),
            };
            self.shared
                .store
                .put_dead_letter(&group.id, &letter)
                .await?;
        }
        self.persist_group(group).await
    }

    /// Writes the group's progress, in order: each write holds at least
    /// what the one before held.
    async fn persist_group(&self, group: &Group) -> Result<(), Error> {
        let _ordered = group.persist.lock().await;
        let record = group_record(group, self.shared.cluster.is_some());
        self.shared.store.save(Change::Put(&record)).await
    }

    /// Acks pulled messages by their receipts: each is done, never
    /// delivered again (with a data dir, once this returns). Returns
    /// `(acked, stale)`: stale receipts (unknown, expired, already acked)
    /// are counted, not refused.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn ack(
        &self,
        topic: &str,
        name: &str,
        receipts: &[String],
    ) -> Result<(usize, usize), Error> {
        let (group, _) = self.group(topic, name)?;
        let shared = self.share_group(&group).await?;
        let acked = self.ack_shared(&group, receipts).await;
        self.unshare_group(&group, shared).await;
        let acked = acked?;
        if acked > 0 {
            group.returned.notify_waiters();
        }
        Ok((acked, receipts.len() - acked))
    }

    /// Acks what `receipts` still lease, and keeps the progress.
    async fn ack_shared(&self, group: &Group, receipts: &[String]) -> Result<usize, Error> {
        let now = tokio::time::Instant::now();
        let mut acked = 0;
        let mut undead = Vec::new();
        {
            let mut state = group.state.lock();
            for receipt in receipts {
                let Some((offset, nonce)) = crate::group::parse_receipt(receipt) else {
                    continue;
                };
                let live = state
                    .leases
                    .get(&offset)
                    .is_some_and(|l| l.nonce == nonce && l.until > now);
                if !live {
                    continue;
                }
                state.leases.remove(&offset);
                if state.redriven.contains(&offset) {
                    undead.push(offset);
                }
                state.finish(offset);
                acked += 1;
            }
        }
        if acked > 0 {
            self.persist_group(group).await?;
        }
        for offset in undead {
            self.shared
                .store
                .remove_dead_letter(&group.id, offset)
                .await?;
        }
        Ok(acked)
    }

    /// With replicas sharing the store: takes `group`'s lock and its state
    /// as stored, so this replica's change starts from the others'. `None`
    /// (nothing taken) without.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`]; [`Error::GroupNotFound`] when another replica
    /// deleted it.
    async fn share_group(&self, group: &Group) -> Result<Option<String>, Error> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(None);
        };
        let token = cluster.lock(&group.id, GROUP_LOCK_TTL).await?;
        let stored = match cluster.record(&group.id).await {
            Ok(Some(Record::Group(g))) => Ok(g),
            Ok(_) => Err(Error::GroupNotFound),
            Err(e) => Err(e),
        };
        match stored {
            Ok(g) => {
                *group.state.lock() = crate::group::GroupState::of_record(&g);
                Ok(Some(token))
            }
            Err(e) => {
                self.unshare_group(group, Some(token)).await;
                Err(e)
            }
        }
    }

    /// Gives back the lock [`share_group`](Self::share_group) took.
    async fn unshare_group(&self, group: &Group, token: Option<String>) {
        if let (Some(cluster), Some(token)) = (&self.shared.cluster, token) {
            if let Err(error) = cluster.unlock(&group.id, &token).await {
                tracing::warn!(group = %group.id, %error, "unlocking a group failed; it expires");
            }
        }
    }

    /// Group `name`'s dead letters, oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn group_dead_letters(
        &self,
        topic: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let (group, _) = self.group(topic, name)?;
        self.expire_group(&group).await?;
        self.shared.store.dead_letters(&group.id, limit).await
    }

    /// Takes back the group's leases that expired, making dead letters of
    /// those whose deliveries are spent: a listing shows them without
    /// waiting for someone to pull again.
    async fn expire_group(&self, group: &Group) -> Result<(), Error> {
        let due = group
            .state
            .lock()
            .next_expiry()
            .is_some_and(|at| at <= tokio::time::Instant::now());
        if !due {
            return Ok(());
        }
        let shared = self.share_group(group).await?;
        let dead = group
            .state
            .lock()
            .expire(tokio::time::Instant::now(), group.config.max_deliveries);
        let kept = if dead.is_empty() {
            Ok(())
        } else {
            self.group_dead(group, &dead).await
        };
        self.unshare_group(group, shared).await;
        kept
    }

    /// Puts group `name`'s dead letters (all, or those with the given
    /// message ids) up for pulling again, with fresh deliveries; each
    /// leaves the list once acked. Returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::GroupNotFound`], or
    /// [`Error::Storage`].
    pub async fn redrive_group(
        &self,
        topic: &str,
        name: &str,
        message_ids: Option<&[String]>,
    ) -> Result<usize, Error> {
        let (group, _) = self.group(topic, name)?;
        let mut dead = self
            .shared
            .store
            .dead_letters(&group.id, usize::MAX)
            .await?;
        if let Some(ids) = message_ids {
            dead.retain(|d| ids.contains(&d.message_id));
        }
        let shared = self.share_group(&group).await?;
        {
            let mut state = group.state.lock();
            for d in &dead {
                if state.leases.contains_key(&d.offset) {
                    continue;
                }
                state.redriven.insert(d.offset);
                state.deliveries.insert(d.offset, 0);
                state.ready.insert(d.offset);
            }
        }
        let kept = match shared {
            Some(_) => self.persist_group(&group).await,
            None => Ok(()),
        };
        self.unshare_group(&group, shared).await;
        kept?;
        group.returned.notify_waiters();
        Ok(dead.len())
    }

    /// The limits this broker enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    fn next_order(&self) -> u64 {
        self.shared.order.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a publisher named `name` on `topic`, creating the topic if
    /// needed. Replaying the same (topic, name) returns the same publisher
    /// and token with `created == false`. Answers once the registration is
    /// in the store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidPublisherName`],
    /// [`Error::LimitExceeded`], or [`Error::Storage`].
    pub async fn register_publisher(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Publisher>>, Error> {
        self.register_credential(Role::Publish, topic, name).await
    }

    /// Registers a listener named `name` on `topic`, creating the topic if
    /// needed: its token lets a live client (Server-Sent Events, WebSocket)
    /// receive the topic's messages. Replaying the same (topic, name)
    /// returns the same listener and token with `created == false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidListenerName`],
    /// [`Error::LimitExceeded`], or [`Error::Storage`].
    pub async fn register_listener(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Listener>>, Error> {
        self.register_credential(Role::Listen, topic, name).await
    }

    async fn register_credential(
        &self,
        role: Role,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Credential>>, Error> {
        let _order = self.shared.changes.lock().await;
        let plan =
            self.shared
                .registry
                .write()
                .plan_credential(role, topic, name, &self.shared.limits)?;
        if !plan.created {
            return Ok(plan);
        }
        let c = &plan.item;
        let record = Record::Credential(CredentialRecord {
            id: c.id.clone(),
            topic: c.topic.to_string(),
            name: c.name.clone(),
            role,
            token: c.token.expose().to_owned(),
            order: self.next_order(),
        });
        match self.durably(topic, Change::Put(&record)).await {
            Ok(()) => {}
            Err(Error::AlreadyRegistered { id }) => {
                // Another replica made it a moment ago: that one it is.
                self.adopt(&id).await?;
                let mut registry = self.shared.registry.write();
                let again = registry.plan_credential(role, topic, name, &self.shared.limits)?;
                if again.created {
                    // Gone again meanwhile: let the caller retry.
                    registry.prune(topic);
                    return Err(Error::AlreadyRegistered { id });
                }
                return Ok(again);
            }
            Err(e) => return Err(e),
        }
        self.shared.registry.write().insert_credential(c.clone());
        Ok(plan)
    }

    /// Writes `change` to the store; if that fails, undoes the topic a
    /// plan may have created.
    async fn durably(&self, topic: &str, change: Change<'_>) -> Result<(), Error> {
        let saved = self.shared.store.save(change).await;
        if saved.is_err() {
            self.shared.registry.write().prune(topic);
        }
        saved
    }

    /// Deregisters a publisher: its token stops working at once. Nothing
    /// else on the topic changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::PublisherNotFound`] when no
    /// publisher with that id is on the topic, or [`Error::Storage`].
    pub async fn deregister_publisher(&self, topic: &str, id: &str) -> Result<(), Error> {
        self.deregister_credential(Role::Publish, topic, id).await
    }

    /// Deregisters a listener: its token stops working for new
    /// connections at once. Nothing else on the topic changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::ListenerNotFound`], or
    /// [`Error::Storage`].
    pub async fn deregister_listener(&self, topic: &str, id: &str) -> Result<(), Error> {
        self.deregister_credential(Role::Listen, topic, id).await
    }

    async fn deregister_credential(&self, role: Role, topic: &str, id: &str) -> Result<(), Error> {
        let _order = self.shared.changes.lock().await;
        self.shared
            .registry
            .read()
            .find_credential(role, topic, id)?;
        self.shared.store.save(Change::Remove { id }).await?;
        self.shared.registry.write().remove_credential(id);
        Ok(())
    }

    /// Checks that `token` is a listener token of `topic`, or a verified
    /// token ([`Broker::verify_token`]) whose [`Grants`] may listen there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`]; [`Error::Unauthorized`] when the token is
    /// not a registered listener's; [`Error::Forbidden`] when it is another
    /// topic's; [`Error::InvalidToken`] when the verifier refuses it;
    /// [`Error::InsufficientScope`] when its grants do not cover `topic`.
    pub fn authorize_listener(&self, topic: &str, token: &str) -> Result<(), Error> {
        crate::topic::validate(topic)?;
        if let Some(grants) = self.verify_token(token)? {
            return if grants.may_listen(topic) {
                Ok(())
            } else {
                Err(Error::InsufficientScope {
                    needed: format!("listen:{topic}"),
                })
            };
        }
        let registry = self.shared.registry.read();
        let listener = registry.authenticate(token, Role::Listen)?;
        if listener.topic.as_str() == topic {
            Ok(())
        } else {
            Err(Error::Forbidden)
        }
    }

    /// Sets the verifier of tokens the registry did not issue (JWTs):
    /// from now on a [JWT-shaped](crate::is_jwt_shaped) token presented to
    /// publish or listen goes to it. Without one, such a token is simply
    /// not a registered one ([`Error::Unauthorized`]).
    ///
    /// # Panics
    ///
    /// When the broker has a verifier already: it is set once, as the
    /// broker is made.
    #[must_use]
    pub fn with_token_verifier(self, verifier: impl TokenVerifier) -> Self {
        if self.shared.verifier.set(Box::new(verifier)).is_err() {
            panic!("the broker has a token verifier already");
        }
        self
    }

    /// Whether a token verifier is set.
    pub fn has_token_verifier(&self) -> bool {
        self.shared.verifier.get().is_some()
    }

    /// What a token the registry did not issue may do: `Some` with its
    /// [`Grants`] when `token` is [JWT-shaped](crate::is_jwt_shaped) and a
    /// verifier is set; `None` for any other token (a registry token, the
    /// admin token), which the caller checks its own way.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] with the verifier's reason.
    pub fn verify_token(&self, token: &str) -> Result<Option<Grants>, Error> {
        match self.shared.verifier.get() {
            Some(verifier) if crate::is_jwt_shaped(token) => {
                if token.len() > crate::MAX_JWT_LEN {
                    return Err(Error::InvalidToken {
                        reason: crate::TokenRejection::Malformed,
                    });
                }
                verifier
                    .verify(token)
                    .map(Some)
                    .map_err(|reason| Error::InvalidToken { reason })
            }
            _ => Ok(None),
        }
    }

    /// The part of `topic`'s log that `from` asks a live listener be
    /// replayed: `[start, end)`, where `end` is the log's end now. A
    /// listener attaches first, then takes the range, reads it page by
    /// page ([`Broker::read`]), and skips live messages below `end`.
    ///
    /// - [`ReplayFrom::Last`]`(n)`: the last `n` retained, at most
    ///   [`Limits::replay_messages`].
    /// - [`ReplayFrom::After`]`(id)`: everything retained after the
    ///   message with that id; an id not of this topic's log is taken as
    ///   `Last(replay_messages)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::TopicNotFound`], or
    /// [`Error::Storage`].
    ///
    /// # Examples
    ///
    /// ```
    /// use broker_core::{Broker, Publish, ReplayFrom};
    ///
    /// struct Nobody;
    /// #[async_trait::async_trait]
    /// impl broker_core::Notifier for Nobody {
    ///     async fn notify(&self, _: Publish) {}
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let broker = Broker::new(Nobody);
    /// let token = broker.register_publisher("t", "p").await?.item.token().expose().to_owned();
    /// let mut ids = Vec::new();
    /// for n in 0..3 {
    ///     ids.push(broker.publish("t", &token, None, format!("{n}").into()).await?.id);
    /// }
    /// let last_two = broker.replay_range("t", ReplayFrom::Last(2)).await?;
    /// assert_eq!((last_two.start, last_two.end), (1, 3));
    /// let after_first = broker.replay_range("t", ReplayFrom::After(&ids[0])).await?;
    /// let read = broker.read("t", after_first.start, 10, usize::MAX).await?;
    /// assert_eq!(read.messages[0].id(), ids[1]);
    /// # Ok::<_, broker_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn replay_range(&self, topic: &str, from: ReplayFrom<'_>) -> Result<Replay, Error> {
        crate::topic::validate(topic)?;
        let name = {
            let registry = self.shared.registry.read();
            let t = registry.topics.get(topic).ok_or(Error::TopicNotFound)?;
            t.name.clone()
        };
        let store = &self.shared.store;
        let limit = self.shared.limits.replay_messages as u64;
        let (first, end) = store.bounds(&name).await?;
        let newest = end.saturating_sub(limit).max(first);
        let start = match from {
            ReplayFrom::Last(n) => end.saturating_sub((n as u64).min(limit)).max(first),
            ReplayFrom::After(id) => match crate::store::claimed_offset(id) {
                // Whether the id is of this log: compared with the message
                // at its offset, or, when that one is gone, with the oldest
                // retained one (all of a log's ids share their prefix).
                Some(offset) if offset < end => {
                    let probe = store.read(&name, offset, 1, 0).await?;
                    match probe.messages.first() {
                        Some(m) if m.offset == offset && m.id == id => offset + 1,
                        Some(m) if m.offset > offset && crate::store::same_log(&m.id, id) => {
                            m.offset
                        }
                        _ => newest,
                    }
                }
                _ => newest,
            },
        };
        Ok(Replay {
            start: start.min(end),
            end,
        })
    }

    /// Up to `max_messages` messages of `topic` from offset `from` on,
    /// straight from its log (see [`Store::read`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::Storage`].
    pub async fn read(
        &self,
        topic: &str,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, Error> {
        let name = TopicName::new(topic)?;
        self.shared
            .store
            .read(&name, from, max_messages, max_bytes)
            .await
    }

    /// Registers a subscriber on `topic`, creating the topic if needed.
    /// Replaying the same (topic, method, URL) with the same headers returns
    /// the existing subscriber with `created == false`; it never makes a
    /// second one, also when replays race. Answers once the registration is
    /// in the store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::LimitExceeded`],
    /// [`Error::SubscriberConflict`] when the (method, URL) is registered
    /// with other headers, or [`Error::Storage`].
    pub async fn register_subscriber(
        &self,
        topic: &str,
        endpoint: Endpoint,
    ) -> Result<Registration<Arc<Subscriber>>, Error> {
        let _order = self.shared.changes.lock().await;
        // A new subscriber starts at the end of the log.
        let (_, end) = self.shared.store.bounds(&TopicName::new(topic)?).await?;
        let plan = self.shared.registry.write().plan_subscriber(
            topic,
            endpoint,
            &self.shared.limits,
            end,
            self.shared.order.load(Ordering::Relaxed),
        )?;
        if !plan.created {
            return Ok(plan);
        }
        self.next_order();
        let record = subscriber_record(&plan.item);
        match self.durably(topic, Change::Put(&record)).await {
            Ok(()) => {}
            Err(Error::AlreadyRegistered { id }) => {
                // Another replica made it a moment ago: that one it is
                // (or a conflict, if its settings differ).
                self.adopt(&id).await?;
                let mut registry = self.shared.registry.write();
                let again = registry.plan_subscriber(
                    topic,
                    plan.item.endpoint().clone(),
                    &self.shared.limits,
                    end,
                    self.shared.order.load(Ordering::Relaxed),
                )?;
                if again.created {
                    registry.prune(topic);
                    return Err(Error::AlreadyRegistered { id });
                }
                return Ok(again);
            }
            Err(e) => return Err(e),
        }
        self.shared
            .registry
            .write()
            .insert_subscriber(plan.item.clone());
        plan.item
            .topic_stats()
            .log_end
            .fetch_max(end, Ordering::AcqRel);
        Ok(plan)
    }

    /// Gives subscriber `id` a new signing secret, durably, and returns it.
    /// For `overlap` the old one signs deliveries too (two signatures in
    /// `webhook-signature`, as Standard Webhooks allows), so receivers can
    /// switch without missing a message.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::SubscriberNotFound`], or
    /// [`Error::Storage`].
    pub async fn rotate_secret(
        &self,
        topic: &str,
        id: &str,
        overlap: Duration,
    ) -> Result<SigningSecret, Error> {
        let _order = self.shared.changes.lock().await;
        let subscriber = self.subscriber(topic, id)?;
        let fresh = SigningSecret::generate();
        let before = {
            let mut secrets = subscriber.secrets.write();
            let before = secrets.clone();
            secrets.previous = Some((before.current.clone(), SystemTime::now() + overlap));
            secrets.current = fresh.clone();
            before
        };
        let record = subscriber_record(&subscriber);
        if let Err(e) = self.shared.store.save(Change::Put(&record)).await {
            *subscriber.secrets.write() = before;
            return Err(e);
        }
        subscriber.secrets_version.fetch_add(1, Ordering::AcqRel);
        Ok(fresh)
    }

    /// Enables or disables subscriber `id` on `topic`, durably. A disabled
    /// subscriber gets nothing delivered and its cursor waits; enabled
    /// again, it resumes from its cursor. (The delivery side disables a
    /// subscriber whose endpoint answers `410 Gone` or fails for too long.)
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::SubscriberNotFound`], or
    /// [`Error::Storage`].
    pub async fn set_enabled(
        &self,
        topic: &str,
        id: &str,
        enabled: bool,
    ) -> Result<Arc<Subscriber>, Error> {
        let _order = self.shared.changes.lock().await;
        let subscriber = self.subscriber(topic, id)?;
        if subscriber.is_enabled() == enabled {
            return Ok(subscriber);
        }
        subscriber.enabled.store(enabled, Ordering::Release);
        let record = subscriber_record(&subscriber);
        if let Err(e) = self.shared.store.save(Change::Put(&record)).await {
            subscriber.enabled.store(!enabled, Ordering::Release);
            return Err(e);
        }
        self.shared.notifier.changed(&subscriber);
        Ok(subscriber)
    }
}

/// The record a store keeps of `s`.
/// A group's record: its settings and a snapshot of its progress; with
/// `shared` (replicas share the group), its leases too.
fn group_record(group: &Group, shared: bool) -> Record {
    let state = group.state.lock();
    let (next, leases, ready, redriven) = if shared {
        state.shared_parts()
    } else {
        (state.floor, Vec::new(), Vec::new(), Vec::new())
    };
    Record::Group(GroupRecord {
        next,
        leases,
        ready,
        redriven,
        id: group.id.clone(),
        topic: group.topic.to_string(),
        name: group.name.clone(),
        ack_timeout: group.config.ack_timeout,
        max_deliveries: group.config.max_deliveries,
        order: group.order,
        floor: state.floor,
        done: state.done.iter().copied().collect(),
        deliveries: state.deliveries.iter().map(|(&o, &d)| (o, d)).collect(),
    })
}

fn subscriber_record(s: &Subscriber) -> Record {
    let e = &s.endpoint;
    let secrets = s.secrets.read().clone();
    Record::Subscriber(SubscriberRecord {
        id: s.id.clone(),
        topic: s.topic.to_string(),
        url: e.url().to_string(),
        method: e.method().to_string(),
        headers: e
            .headers()
            .iter()
            .map(|(k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), value)
            })
            .collect(),
        max_attempts: e.max_attempts(),
        schedule: match e.retry() {
            crate::Retry::Schedule(waits) => Some(waits.to_vec()),
            crate::Retry::Attempts(_) => None,
        },
        ordered: e.ordered(),
        enabled: s.is_enabled(),
        secret: secrets.current.expose().to_owned(),
        previous_secret: secrets
            .previous
            .as_ref()
            .map(|(secret, until)| (secret.expose().to_owned(), *until)),
        order: s.order,
        cursor: s.cursor(),
    })
}

impl Broker {
    /// Deregisters a subscriber. Deliveries still queued for it are dropped
    /// by the notifier ([`Subscriber::is_active`] turns false).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::SubscriberNotFound`], or
    /// [`Error::Storage`].
    pub async fn deregister_subscriber(&self, topic: &str, id: &str) -> Result<(), Error> {
        let _order = self.shared.changes.lock().await;
        let subscriber = self
            .shared
            .registry
            .read()
            .find_subscriber(topic, id)?
            .clone();
        self.shared.store.save(Change::Remove { id }).await?;
        self.shared.registry.write().remove_subscriber(topic, id);
        self.shared.notifier.changed(&subscriber);
        Ok(())
    }

    /// Publishes `payload` on `topic` with a publisher's `token`: appends
    /// it to the topic's log (answering once the store has it as durably
    /// as it promises), then hands it to the notifier with the topic's
    /// current subscribers. Never waits on a subscriber.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`]; [`Error::Unauthorized`] when the token is
    /// not a registered publisher's; [`Error::Forbidden`] when it is another
    /// topic's; for a verified token ([`Broker::verify_token`]),
    /// [`Error::InvalidToken`], [`Error::InsufficientScope`] when its
    /// grants do not cover `topic`, and [`Error::TopicNotFound`] when
    /// nothing made the topic yet; [`Error::Closed`] after [`Broker::close`];
    /// [`Error::Overloaded`] while deliveries hold more message bytes than
    /// the whole [`MemoryBudget`] (see [`MemoryBudget::is_full`]; nothing is
    /// kept, retry shortly); [`Error::Storage`] when the log could not take
    /// it.
    pub async fn publish(
        &self,
        topic: &str,
        token: &str,
        content_type: Option<HeaderValue>,
        payload: Bytes,
    ) -> Result<Receipt, Error> {
        let batch = self
            .publish_batch(topic, token, vec![(content_type, payload)])
            .await?;
        let (id, offset) = batch
            .messages
            .into_iter()
            .next()
            .ok_or_else(|| Error::storage("the store numbered no message"))?;
        Ok(Receipt {
            id,
            offset,
            subscribers: batch.subscribers,
        })
    }

    /// Publishes several messages on `topic` at once, all or nothing: they
    /// get consecutive offsets, in order, in one append to the log; then
    /// each is handed to the notifier like a single publish.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`]. An empty batch publishes nothing and is not
    /// an error.
    pub async fn publish_batch(
        &self,
        topic: &str,
        token: &str,
        messages: Vec<(Option<HeaderValue>, Bytes)>,
    ) -> Result<BatchReceipt, Error> {
        crate::topic::validate(topic)?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.shared.memory.is_full() {
            return Err(Error::Overloaded {
                used: self.shared.memory.pinned(),
                limit: self.shared.memory.limit(),
            });
        }
        // Verified before the lock is taken: a signature check may be slow.
        let grants = self.verify_token(token)?;
        let found = match self.publishing_on(topic, token, grants.as_ref()) {
            // Issued by another replica a moment ago?
            Err(Error::Unauthorized) if self.learn_token(token).await => {
                self.publishing_on(topic, token, grants.as_ref())
            }
            found => found,
        };
        let (topic, subscribers, stats) = found?;
        if messages.is_empty() {
            return Ok(BatchReceipt {
                messages: Vec::new(),
                subscribers: subscribers.len(),
            });
        }
        let now = SystemTime::now();
        let new = messages
            .into_iter()
            .map(|(content_type, payload)| NewMessage {
                content_type,
                payload,
                published_at: now,
            })
            .collect();
        let appended = self.shared.store.append(&topic, new).await?;
        let Some(last) = appended.last() else {
            return Err(Error::storage("the store numbered no message"));
        };
        stats
            .published
            .fetch_add(appended.len() as u64, Ordering::Relaxed);
        // SeqCst with `Waiting::on` and the waiters' load of `log_end`: a
        // waiter either sees the new end or is counted here (no lost wake).
        stats.log_end.fetch_max(last.offset + 1, Ordering::SeqCst);
        if stats.waiting.load(Ordering::SeqCst) > 0 {
            stats.appended.notify_waiters();
        }
        let receipt = BatchReceipt {
            messages: appended.iter().map(|m| (m.id.clone(), m.offset)).collect(),
            subscribers: subscribers.len(),
        };
        for message in appended {
            self.shared
                .notifier
                .notify(Publish {
                    message,
                    subscribers: subscribers.clone(),
                })
                .await;
        }
        Ok(receipt)
    }

    /// What a publish with `token` on `topic` goes to: the topic's name,
    /// subscribers and counters, or why not.
    #[allow(clippy::type_complexity)]
    fn publishing_on(
        &self,
        topic: &str,
        token: &str,
        grants: Option<&crate::Grants>,
    ) -> Result<(TopicName, crate::Subscribers, Arc<TopicStats>), Error> {
        let registry = self.shared.registry.read();
        let t = match &grants {
            // A token that no registration made publishes on a topic
            // that something else made (its log is there to append to).
            Some(grants) if grants.may_publish(topic) => {
                registry.topics.get(topic).ok_or(Error::TopicNotFound)?
            }
            Some(_) => {
                return Err(Error::InsufficientScope {
                    needed: format!("publish:{topic}"),
                })
            }
            None => {
                let publisher = registry.authenticate(token, Role::Publish)?;
                if publisher.topic.as_str() != topic {
                    return Err(Error::Forbidden);
                }
                registry
                    .topics
                    .get(topic)
                    .expect("a registered publisher's topic exists")
            }
        };
        Ok((t.name.clone(), t.subscribers.clone(), t.stats.clone()))
    }

    /// Up to `limit` messages of `topic` from `offset` on (from the oldest
    /// retained one when `offset` is older: [`Read::first`] shows the
    /// gap), at most `max_bytes` of payload (at least one message). When
    /// there is nothing at `offset` yet, waits up to `wait` for a publish
    /// and answers as soon as one lands.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::TopicNotFound`], or
    /// [`Error::Storage`].
    pub async fn fetch(
        &self,
        topic: &str,
        offset: u64,
        limit: usize,
        max_bytes: usize,
        wait: std::time::Duration,
    ) -> Result<Read, Error> {
        crate::topic::validate(topic)?;
        let (name, stats) = {
            let registry = self.shared.registry.read();
            let t = registry.topics.get(topic).ok_or(Error::TopicNotFound)?;
            (t.name.clone(), t.stats.clone())
        };
        let read = self
            .shared
            .store
            .read(&name, offset, limit, max_bytes)
            .await?;
        if !read.messages.is_empty() || wait.is_zero() {
            return Ok(read);
        }
        // Nothing there yet: wait for a publish past `offset`.
        let deadline = tokio::time::Instant::now() + wait;
        let want = offset.max(read.next);
        let waiting = Waiting::on(&stats);
        let arrived = async {
            loop {
                let appended = stats.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                if stats.log_end.load(Ordering::SeqCst) > want {
                    return;
                }
                appended.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, arrived).await;
        drop(waiting);
        self.shared
            .store
            .read(&name, offset, limit, max_bytes)
            .await
    }

    /// Whether the store can take writes now ([`Store::ready`]), for
    /// readiness probes.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] saying why not.
    pub async fn store_ready(&self) -> Result<(), Error> {
        self.shared.store.ready().await
    }

    /// The memory budget the broker's messages are held within: the
    /// store's ([`Store::memory`]). Deliveries charge what they hold.
    pub fn memory(&self) -> &MemoryBudget {
        &self.shared.memory
    }

    /// Where `topic`'s log stands: the offset of its oldest retained
    /// message and the offset the next one will get.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::Storage`].
    pub async fn log_bounds(&self, topic: &str) -> Result<(u64, u64), Error> {
        self.shared.store.bounds(&TopicName::new(topic)?).await
    }

    /// Moves `subscriber`'s cursor forward to `cursor` (never back) and
    /// hands it to the store, which keeps it within a short time.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn commit_cursor(&self, subscriber: &Subscriber, cursor: u64) -> Result<(), Error> {
        if subscriber.cursor.fetch_max(cursor, Ordering::AcqRel) >= cursor {
            return Ok(());
        }
        self.shared.store.save_cursor(&subscriber.id, cursor).await
    }

    /// Keeps `subscriber`'s pending retry in the store, so that a restart
    /// goes on with its schedule ([`Store::save_retry`]).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn keep_retry(
        &self,
        subscriber: &Subscriber,
        retry: PendingRetry,
    ) -> Result<(), Error> {
        self.shared.store.save_retry(&subscriber.id, retry).await
    }

    /// Forgets `subscriber`'s pending retry at `offset` (done with).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn forget_retry(&self, subscriber: &Subscriber, offset: u64) -> Result<(), Error> {
        self.shared.store.forget_retry(&subscriber.id, offset).await
    }

    /// `subscriber`'s stored pending retries at or past its cursor, oldest
    /// offset first; those below it (done with before a restart, their
    /// forgetting lost) are forgotten now.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn pending_retries(
        &self,
        subscriber: &Subscriber,
    ) -> Result<Vec<PendingRetry>, Error> {
        let cursor = subscriber.cursor();
        let mut pending = self.shared.store.pending_retries(&subscriber.id).await?;
        let done = pending.partition_point(|r| r.offset < cursor);
        for stale in pending.drain(..done) {
            self.shared
                .store
                .forget_retry(&subscriber.id, stale.offset)
                .await?;
        }
        Ok(pending)
    }

    /// Keeps `subscriber`'s dead letter (a delivery given up on) in the
    /// store; the oldest ones the store drops to stay within its bound are
    /// counted as [`Outcome::DeadLetterEvicted`](crate::Outcome).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn dead_letter(
        &self,
        subscriber: &Subscriber,
        dead: &DeadLetter,
    ) -> Result<(), Error> {
        let evicted = self
            .shared
            .store
            .put_dead_letter(&subscriber.id, dead)
            .await?;
        if evicted > 0 {
            subscriber.record(crate::Outcome::DeadLetterEvicted, evicted);
        }
        Ok(())
    }

    /// Forgets `subscriber`'s dead letter at `offset` (redriven and
    /// delivered).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn forget_dead_letter(
        &self,
        subscriber: &Subscriber,
        offset: u64,
    ) -> Result<(), Error> {
        self.shared
            .store
            .remove_dead_letter(&subscriber.id, offset)
            .await
    }

    fn subscriber(&self, topic: &str, id: &str) -> Result<Arc<Subscriber>, Error> {
        Ok(self
            .shared
            .registry
            .read()
            .find_subscriber(topic, id)?
            .clone())
    }

    /// The dead letters of subscriber `id` on `topic`, oldest first, at
    /// most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::SubscriberNotFound`], or
    /// [`Error::Storage`].
    pub async fn dead_letters(
        &self,
        topic: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let subscriber = self.subscriber(topic, id)?;
        self.shared.store.dead_letters(&subscriber.id, limit).await
    }

    /// Delivers subscriber `id`'s dead letters again with a fresh retry
    /// schedule: all of them, or those with the given message ids. Each
    /// stays in the list until it is delivered (or is dead again). Returns
    /// how many were redriven.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::SubscriberNotFound`], or
    /// [`Error::Storage`].
    pub async fn redrive(
        &self,
        topic: &str,
        id: &str,
        message_ids: Option<&[String]>,
    ) -> Result<usize, Error> {
        let subscriber = self.subscriber(topic, id)?;
        let mut dead = self
            .shared
            .store
            .dead_letters(&subscriber.id, usize::MAX)
            .await?;
        if let Some(ids) = message_ids {
            dead.retain(|d| ids.contains(&d.message_id));
        }
        let n = dead.len();
        if n > 0 {
            self.shared.notifier.redrive(&subscriber, dead);
        }
        Ok(n)
    }

    /// Delivers subscriber `id`'s retained messages again from offset
    /// `from` on (from the oldest retained when `from` is older). Returns
    /// the offset it starts from and how many messages that is.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::SubscriberNotFound`], or
    /// [`Error::Storage`].
    pub async fn replay_subscriber(
        &self,
        topic: &str,
        id: &str,
        from: u64,
    ) -> Result<(u64, u64), Error> {
        let subscriber = self.subscriber(topic, id)?;
        let (first, end) = self.shared.store.bounds(&subscriber.topic).await?;
        let from = from.clamp(first, end);
        if from < end {
            self.shared.notifier.rewind(&subscriber, from);
        }
        Ok((from, end - from))
    }

    /// The offset of the first retained message of `topic` published at or
    /// after `since` (the log's end if none was), found by a binary search
    /// over the log: publish times follow offsets.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::Storage`].
    pub async fn offset_at(&self, topic: &str, since: SystemTime) -> Result<u64, Error> {
        let name = TopicName::new(topic)?;
        let store = &self.shared.store;
        let (mut low, mut high) = store.bounds(&name).await?;
        while low < high {
            let mid = low + (high - low) / 2;
            let read = store.read(&name, mid, 1, 0).await?;
            match read.messages.first() {
                Some(m) if m.published_at < since => low = m.offset.max(mid) + 1,
                Some(_) => high = mid,
                None => low = read.first.max(mid + 1),
            }
        }
        Ok(low)
    }

    /// A handle that does not keep the broker alive, for a notifier to
    /// hold (see [`Notifier::attach`]).
    pub fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.shared))
    }

    /// Stops accepting publishes (they fail with [`Error::Closed`]);
    /// registrations still work. Used when draining before shutdown.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }

    /// Whether [`Broker::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// How many topics and subscribers are registered (one pass over the
    /// topics under the registry's read lock, nothing cloned).
    pub fn census(&self) -> (usize, usize) {
        let registry = self.shared.registry.read();
        let subscribers = registry.topics.values().map(|t| t.subscribers.len()).sum();
        (registry.topics.len(), subscribers)
    }

    /// All topics, ordered by name.
    pub fn topics(&self) -> Vec<TopicSummary> {
        let mut topics: Vec<_> = self
            .shared
            .registry
            .read()
            .topics
            .values()
            .map(|t| {
                let end = t.stats.log_end.load(Ordering::Acquire);
                TopicSummary {
                    name: t.name.clone(),
                    publishers: t.publishers.len(),
                    listeners: t.listeners.len(),
                    subscribers: t.subscribers.len(),
                    published: t.stats.published.load(Ordering::Relaxed),
                    deliveries: t.stats.deliveries.snapshot(),
                    lag: t
                        .subscribers
                        .iter()
                        .map(|s| end.saturating_sub(s.cursor()))
                        .sum(),
                    disabled: t.subscribers.iter().filter(|s| !s.is_enabled()).count(),
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// One topic's publishers, subscribers and counters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::TopicNotFound`].
    pub fn topic(&self, name: &str) -> Result<TopicDetail, Error> {
        crate::topic::validate(name)?;
        let registry = self.shared.registry.read();
        let t = registry.topics.get(name).ok_or(Error::TopicNotFound)?;
        let mut publishers: Vec<_> = t.publishers.values().cloned().collect();
        publishers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut listeners: Vec<_> = t.listeners.values().cloned().collect();
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(TopicDetail {
            name: t.name.clone(),
            publishers,
            listeners,
            subscribers: t.subscribers.to_vec(),
            published: t.stats.published.load(Ordering::Relaxed),
            deliveries: t.stats.deliveries.snapshot(),
        })
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("limits", &self.shared.limits)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use parking_lot::Mutex;

    use super::*;
    use crate::Message;

    /// Records every (message id, subscriber id) it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>);

    #[async_trait::async_trait]
    impl Notifier for Recorder {
        async fn notify(&self, publish: Publish) {
            let mut seen = self.0.lock();
            for s in publish.subscribers.iter() {
                seen.push((publish.message.id().to_owned(), s.id().to_owned()));
            }
        }
    }

    fn broker() -> (Broker, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        (Broker::new(recorder.clone()), recorder)
    }

    fn endpoint(broker: &Broker, url: &str) -> Endpoint {
        Endpoint::new(url, None, [("x-k", "v")], broker.limits()).unwrap()
    }

    #[tokio::test]
    async fn publisher_registration_is_idempotent_per_topic_and_name() {
        let (b, _) = broker();
        let first = b.register_publisher("t", "checkout").await.unwrap();
        let again = b.register_publisher("t", "checkout").await.unwrap();
        assert!(first.created);
        assert!(!again.created);
        assert_eq!(first.item.id(), again.item.id());
        assert_eq!(first.item.token(), again.item.token());
        let other = b.register_publisher("t", "billing").await.unwrap();
        assert!(other.created);
        assert_ne!(other.item.id(), first.item.id());
        let elsewhere = b.register_publisher("u", "checkout").await.unwrap();
        assert!(elsewhere.created);
        assert_ne!(elsewhere.item.token(), first.item.token());
    }

    #[tokio::test]
    async fn subscriber_replay_returns_the_same_subscriber() {
        let (b, _) = broker();
        let first = b
            .register_subscriber("t", endpoint(&b, "http://h:1/x"))
            .await
            .unwrap();
        // Differently spelled, same canonical URL.
        let again = b
            .register_subscriber("t", endpoint(&b, "HTTP://H:1/x"))
            .await
            .unwrap();
        assert!(first.created && !again.created);
        assert_eq!(first.item.id(), again.item.id());
        assert_eq!(first.item.secret(), again.item.secret());
        assert_eq!(b.topic("t").unwrap().subscribers.len(), 1);

        // Same URL with another method is another subscriber.
        let put = Endpoint::new("http://h:1/x", Some("PUT"), [("x-k", "v")], b.limits()).unwrap();
        assert!(b.register_subscriber("t", put).await.unwrap().created);
        // Same key with other headers is a conflict, not a silent change.
        let other = Endpoint::new("http://h:1/x", None, [("x-k", "w")], b.limits()).unwrap();
        assert_eq!(
            b.register_subscriber("t", other).await.unwrap_err(),
            Error::SubscriberConflict {
                existing: first.item.id().to_owned()
            }
        );
        assert_eq!(b.topic("t").unwrap().subscribers.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_replays_create_exactly_one() {
        let (b, _) = broker();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for i in 0..50 {
                        let url = format!("http://h/{i}");
                        let sub = b.register_subscriber("t", endpoint(&b, &url)).await;
                        let publ = b.register_publisher("t", &format!("p{i}")).await;
                        ids.push((
                            sub.unwrap().item.id().to_owned(),
                            publ.unwrap().item.id().to_owned(),
                        ));
                    }
                    ids
                })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.extend(task.await.unwrap());
        }
        let subs: HashSet<_> = ids.iter().map(|(s, _)| s).collect();
        let pubs: HashSet<_> = ids.iter().map(|(_, p)| p).collect();
        assert_eq!(subs.len(), 50);
        assert_eq!(pubs.len(), 50);
        let detail = b.topic("t").unwrap();
        assert_eq!(detail.subscribers.len(), 50);
        assert_eq!(detail.publishers.len(), 50);
    }

    #[tokio::test]
    async fn only_a_registered_publishers_token_publishes_on_its_topic() {
        let (b, rec) = broker();
        let p = b.register_publisher("t", "p").await.unwrap().item;
        let q = b.register_publisher("u", "q").await.unwrap().item;
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap();
        {
            let token = p.token().expose();
            let r = b.publish("t", token, None, "x".into()).await.unwrap();
            assert_eq!(r.subscribers, 1);
            for bad in [
                "",
                "nope",
                "pub_x.y",
                &token[..token.len() - 1],
                &format!("{token}x"),
            ] {
                assert_eq!(
                    b.publish("t", bad, None, "x".into()).await.unwrap_err(),
                    Error::Unauthorized,
                    "{bad:?}"
                );
            }
            let forbidden = b.publish("t", q.token().expose(), None, "x".into()).await;
            assert_eq!(forbidden.unwrap_err(), Error::Forbidden);
            // A valid token on a topic that does not exist is still
            // another topic's token.
            let absent = b.publish("zzz", token, None, "x".into()).await;
            assert_eq!(absent.unwrap_err(), Error::Forbidden);
            let invalid = b.publish("a/b", token, None, "x".into()).await;
            assert!(matches!(invalid, Err(Error::InvalidTopic { .. })));
        }
        assert_eq!(rec.0.lock().len(), 1);
        assert_eq!(b.topic("t").unwrap().published, 1);
    }

    #[tokio::test]
    async fn deregistration_changes_nothing_else() {
        let (b, rec) = broker();
        let p1 = b.register_publisher("t", "p1").await.unwrap().item;
        let p2 = b.register_publisher("t", "p2").await.unwrap().item;
        let s1 = b
            .register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap()
            .item;
        let s2 = b
            .register_subscriber("t", endpoint(&b, "http://h/2"))
            .await
            .unwrap()
            .item;

        b.deregister_publisher("t", p1.id()).await.unwrap();
        assert_eq!(
            b.deregister_publisher("t", p1.id()).await.unwrap_err(),
            Error::PublisherNotFound
        );
        // Another topic's publisher id is not found on this one.
        let other = b.register_publisher("u", "x").await.unwrap().item;
        assert_eq!(
            b.deregister_publisher("t", other.id()).await.unwrap_err(),
            Error::PublisherNotFound
        );
        b.deregister_subscriber("t", s1.id()).await.unwrap();
        assert!(!s1.is_active());
        assert!(s2.is_active());
        assert_eq!(
            b.deregister_subscriber("t", s1.id()).await.unwrap_err(),
            Error::SubscriberNotFound
        );

        {
            let gone = b.publish("t", p1.token().expose(), None, "x".into()).await;
            assert_eq!(gone.unwrap_err(), Error::Unauthorized);
            let r = b
                .publish("t", p2.token().expose(), None, "x".into())
                .await
                .unwrap();
            assert_eq!(r.subscribers, 1);
            let seen = rec.0.lock();
            assert_eq!(*seen, [(r.id.clone(), s2.id().to_owned())]);
        }
        let detail = b.topic("t").unwrap();
        assert_eq!(detail.publishers.len(), 1);
        assert_eq!(detail.publishers[0].id(), p2.id());

        // A topic disappears with its last registration.
        b.deregister_publisher("t", p2.id()).await.unwrap();
        b.deregister_subscriber("t", s2.id()).await.unwrap();
        assert_eq!(b.topic("t").unwrap_err(), Error::TopicNotFound);
        assert_eq!(b.topics().len(), 1);
    }

    #[tokio::test]
    async fn a_publish_keeps_its_snapshot() {
        let (b, _) = broker();
        let s = b
            .register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap()
            .item;
        let snapshot = b.shared.registry.read().topics["t"].subscribers.clone();
        b.deregister_subscriber("t", s.id()).await.unwrap();
        b.register_subscriber("t", endpoint(&b, "http://h/2"))
            .await
            .unwrap();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].id(), s.id());
    }

    #[tokio::test]
    async fn limits_are_enforced_without_side_effects() {
        let limits = Limits {
            max_topics: 1,
            max_publishers_per_topic: 1,
            max_subscribers_per_topic: 1,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        b.register_publisher("t", "a").await.unwrap();
        assert!(matches!(
            b.register_publisher("t", "b").await,
            Err(Error::LimitExceeded { limit: 1, .. })
        ));
        assert!(matches!(
            b.register_publisher("u", "a").await,
            Err(Error::LimitExceeded { what: "topics", .. })
        ));
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap();
        assert!(b
            .register_subscriber("t", endpoint(&b, "http://h/2"))
            .await
            .is_err());
        // Replays still succeed at the limit.
        assert!(!b.register_publisher("t", "a").await.unwrap().created);
        assert!(
            !b.register_subscriber("t", endpoint(&b, "http://h/1"))
                .await
                .unwrap()
                .created
        );
        assert_eq!(b.topics().len(), 1);
    }

    #[tokio::test]
    async fn closed_broker_refuses_publishes() {
        let (b, _) = broker();
        let p = b.register_publisher("t", "p").await.unwrap().item;
        b.close();
        let r = b.publish("t", p.token().expose(), None, "x".into()).await;
        assert_eq!(r.unwrap_err(), Error::Closed);
    }

    #[tokio::test]
    async fn publisher_names_are_validated() {
        let (b, _) = broker();
        for bad in ["", "a\nb", &"n".repeat(129)] {
            assert!(matches!(
                b.register_publisher("t", bad).await,
                Err(Error::InvalidPublisherName { .. })
            ));
        }
        assert!(b.topics().is_empty());
    }

    /// A verifier that takes `a.<name>.ok`, with the scope its name
    /// stands for, and refuses every other JWT-shaped token as expired.
    struct Scoped;

    impl TokenVerifier for Scoped {
        fn verify(&self, token: &str) -> Result<Grants, crate::TokenRejection> {
            let scope = match token {
                "a.publisher.ok" => "publish:t listen:u*",
                "a.anywhere.ok" => "publish:*",
                "a.admin.ok" => "admin",
                _ => return Err(crate::TokenRejection::Expired),
            };
            Ok(Grants::from_scope(scope))
        }
    }

    #[tokio::test]
    async fn verified_tokens_publish_and_listen_as_their_scope_says() {
        let recorder = Arc::new(Recorder::default());
        let b = Broker::new(recorder.clone()).with_token_verifier(Scoped);
        assert!(b.has_token_verifier());
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap();
        let p = b.register_publisher("t", "p").await.unwrap().item;
        let l = b.register_listener("t", "l").await.unwrap().item;

        let publisher = "a.publisher.ok";
        let r = b.publish("t", publisher, None, "x".into()).await.unwrap();
        assert_eq!((r.offset, r.subscribers), (0, 1));
        assert_eq!(recorder.0.lock().len(), 1);
        let batch = vec![(None, "y".into()), (None, "z".into())];
        let r = b.publish_batch("t", publisher, batch).await.unwrap();
        assert_eq!(r.messages.len(), 2);
        // Scope, not registration: another topic is refused by name...
        b.register_subscriber("v", endpoint(&b, "http://h/2"))
            .await
            .unwrap();
        assert_eq!(
            b.publish("v", publisher, None, "x".into())
                .await
                .unwrap_err(),
            Error::InsufficientScope {
                needed: "publish:v".into()
            }
        );
        // ...and a covered topic nothing made yet has no log to take it.
        let anywhere = "a.anywhere.ok";
        assert_eq!(
            b.publish("nothing", anywhere, None, "x".into())
                .await
                .unwrap_err(),
            Error::TopicNotFound
        );
        assert_eq!(
            b.publish("t", "a.b.expired", None, "x".into())
                .await
                .unwrap_err(),
            Error::InvalidToken {
                reason: crate::TokenRejection::Expired
            }
        );

        assert_eq!(b.authorize_listener("u.1", publisher), Ok(()));
        assert_eq!(
            b.authorize_listener("t", publisher),
            Err(Error::InsufficientScope {
                needed: "listen:t".into()
            })
        );
        assert_eq!(b.authorize_listener("anything", "a.admin.ok"), Ok(()));
        // `admin` does not publish, as the admin token does not.
        assert!(matches!(
            b.publish("t", "a.admin.ok", None, "x".into()).await,
            Err(Error::InsufficientScope { .. })
        ));
        assert_eq!(
            b.verify_token("a.admin.ok").unwrap(),
            Some(Grants::from_scope("admin"))
        );
        let long = format!("a.{}.ok", "b".repeat(crate::MAX_JWT_LEN));
        assert_eq!(
            b.verify_token(&long),
            Err(Error::InvalidToken {
                reason: crate::TokenRejection::Malformed
            })
        );

        // Registered tokens work beside it, and never reach it.
        assert_eq!(b.verify_token(p.token().expose()), Ok(None));
        b.publish("t", p.token().expose(), None, "x".into())
            .await
            .unwrap();
        assert_eq!(b.authorize_listener("t", l.token().expose()), Ok(()));
        assert_eq!(
            b.authorize_listener("t", "a.b"),
            Err(Error::Unauthorized),
            "not JWT-shaped: the registry's to refuse"
        );
    }

    #[tokio::test]
    async fn without_a_verifier_a_jwt_is_just_an_unknown_token() {
        let (b, _) = broker();
        b.register_publisher("t", "p").await.unwrap();
        assert!(!b.has_token_verifier());
        assert_eq!(b.verify_token("a.admin.ok"), Ok(None));
        let r = b.publish("t", "a.publisher.ok", None, "x".into()).await;
        assert_eq!(r.unwrap_err(), Error::Unauthorized);
    }

    #[test]
    #[should_panic(expected = "a token verifier already")]
    fn a_verifier_is_set_once() {
        let (b, _) = broker();
        let _ = b.with_token_verifier(Scoped).with_token_verifier(Scoped);
    }

    #[tokio::test]
    async fn listener_tokens_listen_and_never_publish() {
        let (b, _) = broker();
        let l = b.register_listener("t", "dashboard").await.unwrap();
        assert!(l.created && l.item.id().starts_with("lis_"));
        assert!(!b.register_listener("t", "dashboard").await.unwrap().created);
        let p = b.register_publisher("t", "p").await.unwrap().item;
        let token = l.item.token().expose();
        assert_eq!(b.authorize_listener("t", token), Ok(()));
        // A listener token is not a publisher's, and the reverse.
        let publish = b.publish("t", token, None, "x".into()).await;
        assert_eq!(publish.unwrap_err(), Error::Unauthorized);
        assert_eq!(
            b.authorize_listener("t", p.token().expose()),
            Err(Error::Unauthorized)
        );
        b.register_publisher("u", "p").await.unwrap();
        assert_eq!(b.authorize_listener("u", token), Err(Error::Forbidden));
        let detail = b.topic("t").unwrap();
        assert_eq!(detail.listeners.len(), 1);
        assert_eq!(b.topics()[0].listeners, 1);
        // Deregistering a listener by a publisher's id, or the reverse, finds nothing.
        assert_eq!(
            b.deregister_listener("t", p.id()).await,
            Err(Error::ListenerNotFound)
        );
        assert_eq!(
            b.deregister_publisher("t", l.item.id()).await,
            Err(Error::PublisherNotFound)
        );
        b.deregister_listener("t", l.item.id()).await.unwrap();
        assert_eq!(b.authorize_listener("t", token), Err(Error::Unauthorized));
        // A listener alone keeps a topic.
        b.register_listener("v", "x").await.unwrap();
        assert!(b.topic("v").is_ok());
    }

    async fn publish_n(b: &Broker, topic: &str, sizes: &[usize]) -> Vec<String> {
        let token = b.register_publisher(topic, "p").await.unwrap().item;
        let mut ids = Vec::new();
        for &n in sizes {
            let r = b.publish(topic, token.token().expose(), None, vec![b'x'; n].into());
            ids.push(r.await.unwrap().id);
        }
        ids
    }

    async fn ids_from(b: &Broker, topic: &str, range: Replay) -> Vec<String> {
        let read = b
            .read(topic, range.start, usize::MAX, usize::MAX)
            .await
            .unwrap();
        read.messages
            .iter()
            .filter(|m| m.offset() < range.end)
            .map(|m| m.id().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn last_n_is_bounded_by_replay_messages() {
        let limits = Limits {
            replay_messages: 3,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        let ids = publish_n(&b, "t", &[1, 1, 1, 1]).await;
        let all = b
            .replay_range("t", ReplayFrom::Last(usize::MAX))
            .await
            .unwrap();
        assert_eq!(all, Replay { start: 1, end: 4 });
        assert_eq!(all.up_to(), Some(3));
        assert_eq!(ids_from(&b, "t", all).await, ids[1..]);
        let two = b.replay_range("t", ReplayFrom::Last(2)).await.unwrap();
        assert_eq!(ids_from(&b, "t", two).await, ids[2..]);
        let none = b.replay_range("t", ReplayFrom::Last(0)).await.unwrap();
        assert!(none.is_empty());
        assert_eq!(none.up_to(), Some(3));
        assert_eq!(
            b.replay_range("zz", ReplayFrom::Last(1)).await.unwrap_err(),
            Error::TopicNotFound
        );
    }

    #[tokio::test]
    async fn replay_after_an_id_resumes_after_it_whatever_the_count() {
        let limits = Limits {
            replay_messages: 2,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        let ids = publish_n(&b, "t", &[1, 1, 1, 1, 1]).await;
        let after = |id: String| {
            let b = b.clone();
            async move {
                let range = b.replay_range("t", ReplayFrom::After(&id)).await.unwrap();
                ids_from(&b, "t", range).await
            }
        };
        // Everything retained after it, not only `replay_messages`.
        assert_eq!(after(ids[0].clone()).await, ids[1..]);
        assert!(after(ids[4].clone()).await.is_empty());
        // Ids not of this topic's log replay the newest `replay_messages`.
        let other = publish_n(&b, "u", &[1]).await;
        for foreign in [
            "",
            "msg_",
            "nonsense",
            "msg_000000000000000000000001",
            &other[0],
        ] {
            assert_eq!(after(foreign.to_owned()).await, ids[3..], "{foreign:?}");
        }
        // Replay off still covers the log.
        let off = Broker::with_limits(
            Recorder::default(),
            Limits {
                replay_messages: 0,
                ..Limits::default()
            },
        );
        publish_n(&off, "t", &[1]).await;
        let r = off.replay_range("t", ReplayFrom::Last(5)).await.unwrap();
        assert!(r.is_empty() && r.up_to() == Some(0));
    }

    #[tokio::test]
    async fn an_id_whose_message_retention_removed_resumes_at_the_oldest_retained() {
        let store = MemoryStore::new(
            crate::Retention {
                bytes_per_topic: 2 * (1 + crate::memory::MESSAGE_OVERHEAD as u64),
                ..crate::Retention::default()
            },
            1 << 20,
        );
        let b = Broker::open(Recorder::default(), Limits::default(), store)
            .await
            .unwrap();
        let ids = publish_n(&b, "t", &[1, 1, 1, 1]).await;
        let range = b
            .replay_range("t", ReplayFrom::After(&ids[0]))
            .await
            .unwrap();
        assert_eq!(range, Replay { start: 2, end: 4 });
        assert_eq!(ids_from(&b, "t", range).await, ids[2..]);
    }

    /// A store that remembers every change, to check what the broker
    /// makes durable and what it loads back.
    #[derive(Default)]
    struct Remembering {
        log: MemoryStore,
        records: Mutex<Vec<Record>>,
    }

    #[async_trait::async_trait]
    impl Store for Remembering {
        async fn load(&self) -> Result<Vec<Record>, Error> {
            Ok(self.records.lock().clone())
        }
        async fn save(&self, change: Change<'_>) -> Result<(), Error> {
            let mut records = self.records.lock();
            match change {
                Change::Put(r) => {
                    records.retain(|old| old.id() != r.id());
                    records.push(r.clone());
                }
                Change::Remove { id } => records.retain(|r| r.id() != id),
            }
            Ok(())
        }
        async fn append(
            &self,
            topic: &TopicName,
            messages: Vec<NewMessage>,
        ) -> Result<Vec<Arc<Message>>, Error> {
            self.log.append(topic, messages).await
        }
        async fn read(
            &self,
            topic: &TopicName,
            from: u64,
            max_messages: usize,
            max_bytes: usize,
        ) -> Result<Read, Error> {
            self.log.read(topic, from, max_messages, max_bytes).await
        }
        async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64), Error> {
            self.log.bounds(topic).await
        }
        async fn put_dead_letter(&self, s: &str, dead: &DeadLetter) -> Result<u64, Error> {
            self.log.put_dead_letter(s, dead).await
        }
        async fn remove_dead_letter(&self, s: &str, offset: u64) -> Result<(), Error> {
            self.log.remove_dead_letter(s, offset).await
        }
        async fn dead_letters(&self, s: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
            self.log.dead_letters(s, limit).await
        }
    }

    #[tokio::test]
    async fn a_reopened_broker_has_the_same_registrations() {
        let store = Arc::new(Remembering::default());
        let b = Broker::open(Recorder::default(), Limits::default(), store.clone())
            .await
            .unwrap();
        let p = b.register_publisher("t", "p").await.unwrap().item;
        let l = b.register_listener("t", "l").await.unwrap().item;
        let gone = b.register_publisher("t", "gone").await.unwrap().item;
        let endpoint = Endpoint::new("http://h/1", Some("PUT"), [("x-k", "v")], b.limits())
            .unwrap()
            .with_max_attempts(3, b.limits())
            .unwrap();
        let s1 = b
            .register_subscriber("t", endpoint.clone())
            .await
            .unwrap()
            .item;
        let s2 = b
            .register_subscriber("u", endpoint.clone())
            .await
            .unwrap()
            .item;
        b.deregister_publisher("t", gone.id()).await.unwrap();
        // A replay writes nothing.
        b.register_publisher("t", "p").await.unwrap();
        assert_eq!(store.records.lock().len(), 4);

        let again = Broker::open(Recorder::default(), Limits::default(), store.clone())
            .await
            .unwrap();
        let replayed = again.register_publisher("t", "p").await.unwrap();
        assert!(!replayed.created);
        assert_eq!(replayed.item.token(), p.token());
        again.authorize_listener("t", l.token().expose()).unwrap();
        let sub = again.register_subscriber("t", endpoint).await.unwrap();
        assert!(!sub.created);
        assert_eq!(sub.item.id(), s1.id());
        assert_eq!(sub.item.secret(), s1.secret());
        assert_eq!(sub.item.endpoint().max_attempts(), 3);
        assert_eq!(again.topic("u").unwrap().subscribers[0].id(), s2.id());
        assert!(again.topic("t").unwrap().publishers.len() == 1);
        // A rotation and a disabling are stored too.
        let fresh = again
            .rotate_secret("u", s2.id(), Duration::from_secs(3600))
            .await
            .unwrap();
        again.set_enabled("u", s2.id(), false).await.unwrap();
        let third = Broker::open(Recorder::default(), Limits::default(), store.clone())
            .await
            .unwrap();
        let s2_again = third.topic("u").unwrap().subscribers[0].clone();
        assert_eq!(s2_again.secret(), fresh);
        assert_eq!(s2_again.previous_secret().unwrap().0, s2.secret());
        assert!(!s2_again.is_enabled());
        // New registrations come after the loaded ones.
        again.register_publisher("t", "q").await.unwrap();
        let orders: Vec<u64> = store.records.lock().iter().map(Record::order).collect();
        assert!(orders.windows(2).all(|w| w[0] < w[1]), "{orders:?}");
    }

    /// A store whose writes fail.
    struct Failing;

    #[async_trait::async_trait]
    impl Store for Failing {
        async fn load(&self) -> Result<Vec<Record>, Error> {
            Ok(Vec::new())
        }
        async fn save(&self, _: Change<'_>) -> Result<(), Error> {
            Err(Error::storage("disk full"))
        }
        async fn append(
            &self,
            _: &TopicName,
            _: Vec<NewMessage>,
        ) -> Result<Vec<Arc<Message>>, Error> {
            Err(Error::storage("disk full"))
        }
        async fn read(&self, _: &TopicName, _: u64, _: usize, _: usize) -> Result<Read, Error> {
            Err(Error::storage("disk full"))
        }
        async fn bounds(&self, _: &TopicName) -> Result<(u64, u64), Error> {
            Err(Error::storage("disk full"))
        }
        async fn put_dead_letter(&self, _: &str, _: &DeadLetter) -> Result<u64, Error> {
            Err(Error::storage("disk full"))
        }
        async fn remove_dead_letter(&self, _: &str, _: u64) -> Result<(), Error> {
            Err(Error::storage("disk full"))
        }
        async fn dead_letters(&self, _: &str, _: usize) -> Result<Vec<DeadLetter>, Error> {
            Err(Error::storage("disk full"))
        }
    }

    #[tokio::test]
    async fn a_registration_the_store_refuses_leaves_nothing_behind() {
        let b = Broker::open(Recorder::default(), Limits::default(), Failing)
            .await
            .unwrap();
        let err = b.register_publisher("t", "p").await.unwrap_err();
        assert!(matches!(err, Error::Storage { .. }), "{err:?}");
        assert!(b.topics().is_empty());
        assert!(b
            .register_subscriber("t", endpoint(&b, "http://h/"))
            .await
            .is_err());
        assert!(b.topics().is_empty());
    }
}
