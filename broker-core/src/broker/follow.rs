//! Following the other processes that share the store: one task per
//! broker applies what [`Cluster::changes`] reports (see
//! [`crate::cluster`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use super::{Broker, WeakBroker};
use crate::{
    store::{Record, RecordKind},
    Changes, Cluster, Error, Publish, Subscribers, TopicName,
};

/// Messages read at once to hand live listeners what another process
/// appended.
const PAGE: usize = 256;
/// Payload bytes read at once, likewise.
const PAGE_BYTES: usize = 4 << 20;
/// After a failed application, the next try (a full resync) waits this
/// long.
const RETRY: Duration = Duration::from_secs(1);

/// Applies every change another process makes until the broker is gone or
/// the feed ends. Holds the broker only while applying.
pub(super) async fn follow(weak: WeakBroker, cluster: Arc<dyn Cluster>) {
    let mut failed = false;
    loop {
        let changes = if failed {
            tokio::time::sleep(RETRY).await;
            Changes {
                resync: true,
                ..Changes::default()
            }
        } else {
            match cluster.changes().await {
                Some(changes) => changes,
                None => return,
            }
        };
        let Some(broker) = weak.upgrade() else {
            return;
        };
        match broker.apply(changes, &*cluster).await {
            Ok(()) => {
                if failed {
                    tracing::info!("following the other replicas works again");
                }
                failed = false;
            }
            Err(error) => {
                if !failed {
                    tracing::error!(%error, "applying another replica's changes failed; resyncing");
                }
                failed = true;
            }
        }
    }
}

impl Broker {
    /// Applies `changes` made by other processes: deletions, then
    /// registrations (read again now), then appends.
    async fn apply(&self, changes: Changes, cluster: &dyn Cluster) -> Result<(), Error> {
        for topic in &changes.deleted {
            self.deleted_elsewhere(topic);
        }
        if changes.resync {
            self.resync().await?;
        } else if !changes.registrations.is_empty() {
            // Read under the registration lock: a local change to the same
            // id either happened before (and the store shows it) or waits.
            let _order = self.shared.changes.lock().await;
            let mut fresh = HashSet::new();
            for id in &changes.registrations {
                let record = cluster.record(id).await?;
                if let Some(topic) = self.put_elsewhere(id, record.as_ref())? {
                    fresh.insert(topic);
                }
            }
            self.catch_up_logs(fresh).await?;
        }
        for (topic, first, next) in changes.appended {
            self.appended_elsewhere(&topic, first, next).await?;
        }
        Ok(())
    }

    /// Loads every registration again and makes the registry match it;
    /// then every topic's log end.
    async fn resync(&self) -> Result<(), Error> {
        let _order = self.shared.changes.lock().await;
        let mut records = self.shared.store.load().await?;
        records.sort_by_key(Record::order);
        let stored: HashMap<&str, &Record> = records.iter().map(|r| (r.id(), r)).collect();
        let local = self.shared.registry.read().record_ids();
        for id in local.iter().filter(|id| !stored.contains_key(id.as_str())) {
            self.put_elsewhere(id, None)?;
        }
        for record in &records {
            self.put_elsewhere(record.id(), Some(record))?;
        }
        if let Some(last) = records.last() {
            self.shared
                .order
                .fetch_max(last.order() + 1, Ordering::AcqRel);
        }
        let topics: HashSet<TopicName> =
            self.shared.registry.read().topics.keys().cloned().collect();
        self.catch_up_logs(topics).await
    }

    /// Moves each topic's log end to where the store has it, waking its
    /// waiters and delivery workers.
    async fn catch_up_logs(&self, topics: HashSet<TopicName>) -> Result<(), Error> {
        for topic in topics {
            let (_, next) = self.shared.store.bounds(&topic).await?;
            self.appended_elsewhere(&topic, next, next).await?;
        }
        Ok(())
    }

    /// Applies the registration stored under `id` (`None`: removed).
    /// Returns the topic when this made it new here (its log end is
    /// still to be read).
    pub(super) fn put_elsewhere(
        &self,
        id: &str,
        record: Option<&Record>,
    ) -> Result<Option<TopicName>, Error> {
        let notifier = &self.shared.notifier;
        let Some(record) = record else {
            let mut registry = self.shared.registry.write();
            match RecordKind::of(id) {
                // Removing one not known here is nothing.
                Some(RecordKind::Publisher | RecordKind::Listener) => {
                    registry.remove_credential(id);
                }
                Some(RecordKind::Subscriber) => {
                    if let Some(subscriber) = registry.subscriber_by_id(id).cloned() {
                        registry.remove_subscriber(subscriber.topic().as_str(), id);
                        drop(registry);
                        notifier.changed(&subscriber);
                    }
                }
                Some(RecordKind::Topic) => {
                    let name = RecordKind::Topic.strip(id).unwrap_or_default();
                    if let Some(t) = registry.topics.get_mut(name) {
                        t.explicit = false;
                    }
                    registry.prune(name);
                }
                Some(RecordKind::Group) => {
                    let found = registry.topics.iter().find_map(|(topic, t)| {
                        t.groups
                            .iter()
                            .find(|(_, g)| g.id == id)
                            .map(|(name, _)| (topic.clone(), name.clone()))
                    });
                    if let Some((topic, name)) = found {
                        if let Some(t) = registry.topics.get_mut(&topic) {
                            t.groups.remove(&name);
                        }
                        registry.prune(topic.as_str());
                    }
                }
                None => {}
            }
            return Ok(None);
        };
        let mut registry = self.shared.registry.write();
        let topic = record.topic();
        let new_topic = !registry.topics.contains_key(topic);
        match record {
            Record::Credential(c) if registry.has_credential(&c.id) => return Ok(None),
            Record::Group(g)
                if registry
                    .topics
                    .get(g.topic.as_str())
                    .is_some_and(|t| t.groups.contains_key(&g.name)) =>
            {
                return Ok(None)
            }
            Record::Topic(t) if !new_topic => {
                let name = TopicName::new(&t.name).map_err(|e| Error::storage(e.to_string()))?;
                registry.make_explicit(&name);
                return Ok(None);
            }
            Record::Subscriber(s) => {
                if let Some(subscriber) = registry.subscriber_by_id(&s.id).cloned() {
                    // Changed (`PATCH`): the new endpoint, keyed again.
                    let endpoint = self.stored_endpoint(s)?;
                    let changed = *subscriber.endpoint() != endpoint;
                    if changed {
                        registry.change_endpoint(&subscriber, Arc::new(endpoint))?;
                    }
                    drop(registry);
                    if changed {
                        notifier.changed(&subscriber);
                    }
                    // Enabled or disabled, a rotated secret, a cursor moved.
                    subscriber.cursor.fetch_max(s.cursor, Ordering::AcqRel);
                    let current = subscriber.secrets.read().current.expose() != s.secret;
                    if current {
                        self.restore_secrets(&subscriber, s)?;
                    }
                    if subscriber.enabled.swap(s.enabled, Ordering::AcqRel) != s.enabled {
                        notifier.changed(&subscriber);
                    }
                    return Ok(None);
                }
            }
            _ => {}
        }
        self.restore(&mut registry, record)?;
        let subscriber = match record {
            Record::Subscriber(s) => registry.subscriber_by_id(&s.id).cloned(),
            _ => None,
        };
        let name = registry
            .topics
            .get_key_value(topic)
            .map(|(name, _)| name.clone());
        drop(registry);
        if let Some(subscriber) = subscriber {
            notifier.changed(&subscriber);
        }
        Ok(name.filter(|_| new_topic))
    }

    /// Takes a rotated secret (and the one it replaced) from `record`.
    fn restore_secrets(
        &self,
        subscriber: &crate::Subscriber,
        record: &crate::SubscriberRecord,
    ) -> Result<(), Error> {
        let stored = super::records::stored_secrets(record)?;
        {
            let mut secrets = subscriber.secrets.write();
            secrets.current = stored.current;
            secrets.previous = stored.previous;
        }
        subscriber.secrets_version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// A topic deleted by another process: everything on it goes here
    /// too, and live connections on it end.
    fn deleted_elsewhere(&self, topic: &TopicName) {
        let subscribers = self.shared.registry.write().remove_topic(topic.as_str());
        for subscriber in &subscribers {
            self.shared.notifier.changed(subscriber);
        }
        self.shared.notifier.topic_deleted(topic);
    }

    /// Another process appended `first..next` to `topic`: the log end
    /// moves (waking fetch and pull waiters), the topic's delivery workers
    /// wake, and the messages go to the notifier if it wants them (live
    /// listeners here).
    async fn appended_elsewhere(
        &self,
        topic: &TopicName,
        first: u64,
        next: u64,
    ) -> Result<(), Error> {
        let (name, subscribers, stats) = {
            let registry = self.shared.registry.read();
            let Some(t) = registry.topics.get(topic.as_str()) else {
                // Nobody here registered on it: nothing to wake or tell.
                return Ok(());
            };
            (t.name.clone(), t.subscribers.clone(), t.stats.clone())
        };
        let before = stats.log_end.fetch_max(next, Ordering::SeqCst);
        if before < next {
            stats
                .published
                .fetch_add(next - before.max(first), Ordering::Relaxed);
            if stats.waiting.load(Ordering::SeqCst) > 0 {
                stats.appended.notify_waiters();
            }
        }
        let notifier = &self.shared.notifier;
        notifier.appended_elsewhere(&name, &subscribers);
        if first >= next || !notifier.wants_appended_elsewhere(&name) {
            return Ok(());
        }
        let mut from = first;
        while from < next {
            let read = self
                .shared
                .store
                .read(&name, from, PAGE, PAGE_BYTES)
                .await?;
            let Some(last) = read.messages.last().map(|m| m.offset) else {
                break;
            };
            for message in read.messages.into_iter().filter(|m| m.offset < next) {
                notifier
                    .notify(Publish {
                        message,
                        subscribers: Subscribers::default(),
                    })
                    .await;
            }
            from = last + 1;
        }
        Ok(())
    }

    /// With replicas sharing the store: a publisher or listener token this
    /// replica does not know may have been issued by another replica a
    /// moment ago, its announcement still on the way. Reads that
    /// credential from the store and registers it here. Returns whether it
    /// found one (then try the token again); `true` too when the credential
    /// is known here by now (the announcement came while the caller's check
    /// failed: trying again finds it); `false` at once without a shared
    /// store, or for a token of no registry shape.
    pub async fn learn_token(&self, token: &str) -> bool {
        let Some(cluster) = &self.shared.cluster else {
            return false;
        };
        let Some(id) = crate::secret::Token::claimed_id(token) else {
            return false;
        };
        if !matches!(
            RecordKind::of(id),
            Some(RecordKind::Publisher | RecordKind::Listener)
        ) {
            return false;
        }
        if self.shared.registry.read().has_credential(id) {
            return true;
        }
        // Looked up before the registration lock is taken, so that tokens
        // of nobody never hold up registrations.
        if !matches!(cluster.record(id).await, Ok(Some(Record::Credential(_)))) {
            return false;
        }
        let _order = self.shared.changes.lock().await;
        // Read again under the lock: a deregistration may have come since.
        let record = match cluster.record(id).await {
            Ok(Some(record @ Record::Credential(_))) => record,
            _ => return false,
        };
        match self.put_elsewhere(id, Some(&record)) {
            Ok(Some(topic)) => {
                let _ = self.catch_up_logs(HashSet::from([topic])).await;
                true
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Takes the registration another process stored under `id` (the
    /// caller holds the registration lock).
    pub(super) async fn adopt(&self, id: &str) -> Result<(), Error> {
        let Some(cluster) = &self.shared.cluster else {
            return Err(Error::storage(format!("{id} is registered already")));
        };
        let record = cluster.record(id).await?;
        if let Some(topic) = self.put_elsewhere(id, record.as_ref())? {
            self.catch_up_logs(HashSet::from([topic])).await?;
        }
        Ok(())
    }

    /// Every subscriber registered, on every topic.
    pub fn subscribers(&self) -> Vec<Arc<crate::Subscriber>> {
        let registry = self.shared.registry.read();
        registry
            .topics
            .values()
            .flat_map(|t| t.subscribers.iter().cloned())
            .collect()
    }

    /// Before this process delivers `subscriber` after another did (a
    /// lease taken over): moves its cursor up to the one committed in the
    /// shared store. Without a shared store, does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn take_over(&self, subscriber: &crate::Subscriber) -> Result<(), Error> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(());
        };
        if let Some(cursor) = cluster.cursor(subscriber.id()).await? {
            subscriber.cursor.fetch_max(cursor, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The processes sharing the store, if it is shared
    /// ([`Store::cluster`](crate::Store::cluster)).
    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.shared.cluster.as_ref()
    }
}
