//! Topics: creating and deleting them, listing them, and where their logs
//! stand.

use std::{
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use super::{records::topic_record, Broker};
use crate::{
    store::{Change, TopicRecord},
    DeliveryCounts, Error, Listener, Publisher, Subscriber, TopicName,
};

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
    /// Its enabled subscribers whose circuit is not closed: their
    /// endpoint is failing now.
    pub failing: usize,
    /// Its consumer groups.
    pub groups: usize,
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
    /// Its consumer groups, by name.
    pub groups: Vec<Arc<crate::Group>>,
    /// Messages published on it since it was created.
    pub published: u64,
    /// Outcomes of its deliveries since it was created.
    pub deliveries: DeliveryCounts,
}

impl Broker {
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
        let record = topic_record(name, self.next_order());
        self.shared.store.save(Change::Put(&record)).await?;
        self.shared.registry.write().make_explicit(&topic);
        drop(_order);
        self.emit(crate::OpEvent::TopicCreated {
            topic: name.to_owned(),
        })
        .await;
        Ok(())
    }

    /// Deletes `name` with everything on it: its publishers, listeners and
    /// subscribers (their deliveries end at once), and its log. Live
    /// connections on it are ended by the notifier
    /// ([`Notifier::topic_deleted`](crate::Notifier::topic_deleted)). A
    /// topic of the same name made later starts afresh.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::TopicNotFound`], or
    /// [`Error::Storage`] (then part of it may be gone; deleting again
    /// finishes it).
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let topic = TopicName::new(name)?;
        let _order = self.shared.changes.lock().await;
        let (ids, stats): (Vec<String>, _) = {
            let registry = self.shared.registry.read();
            let t = registry.topics.get(name).ok_or(Error::TopicNotFound)?;
            let ids = t
                .publishers
                .values()
                .chain(t.listeners.values())
                .map(|c| c.id.clone())
                .chain(t.subscribers.iter().map(|s| s.id.clone()))
                .chain(t.groups.values().map(|g| g.id.clone()))
                .chain(t.explicit.then(|| TopicRecord::id_of(name)))
                .collect();
            (ids, t.stats.clone())
        };
        // No publish appends from here on, and those appending finish
        // first: once this answers, no earlier publish is still to be
        // answered as accepted, and nothing of the old topic is written
        // to a log that deleting would remove (or make again).
        // A failure (or a caller gone) before the end takes publishes
        // again: the topic stays, and deleting again finishes it.
        let retired = stats.retire().await;
        for id in &ids {
            self.shared.store.save(Change::Remove { id }).await?;
        }
        self.shared.store.delete_topic(&topic).await?;
        let subscribers = self.shared.registry.write().remove_topic(name);
        retired.finish();
        for subscriber in &subscribers {
            self.shared.notifier.changed(subscriber);
        }
        self.shared.notifier.topic_deleted(&topic);
        drop(_order);
        self.emit(crate::OpEvent::TopicDeleted {
            topic: name.to_owned(),
        })
        .await;
        Ok(())
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
                let summary = TopicSummary {
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
                    failing: 0,
                    groups: t.groups.len(),
                };
                (summary, t.subscribers.clone())
            })
            .collect();
        // The circuits are the notifier's: asked with the registry's lock
        // dropped, so the notifier may take its own locks in any order.
        for (summary, subscribers) in &mut topics {
            summary.failing = subscribers
                .iter()
                .filter(|s| s.is_enabled() && self.circuit(s) != crate::Circuit::Closed)
                .count();
        }
        let mut topics: Vec<_> = topics.into_iter().map(|(summary, _)| summary).collect();
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
        let mut groups: Vec<_> = t.groups.values().cloned().collect();
        groups.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(TopicDetail {
            name: t.name.clone(),
            publishers,
            listeners,
            subscribers: t.subscribers.to_vec(),
            groups,
            published: t.stats.published.load(Ordering::Relaxed),
            deliveries: t.stats.deliveries.snapshot(),
        })
    }

    /// How many topics and subscribers are registered (one pass over the
    /// topics under the registry's read lock, nothing cloned).
    pub fn census(&self) -> (usize, usize) {
        let registry = self.shared.registry.read();
        let subscribers = registry.topics.values().map(|t| t.subscribers.len()).sum();
        (registry.topics.len(), subscribers)
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

    /// Whether the store can take writes now
    /// ([`Store::ready`](crate::Store::ready)), for readiness probes.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] saying why not.
    pub async fn store_ready(&self) -> Result<(), Error> {
        self.shared.store.ready().await
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use async_trait::async_trait;

    use crate::{Broker, Error, Notifier, Publish};

    /// Holds every publish in its pace until told to let it go.
    struct Holding(tokio::sync::Semaphore);

    #[async_trait]
    impl Notifier for Holding {
        async fn notify(&self, _: Publish) {}
        async fn pace(&self) -> bool {
            let _ = self.0.acquire().await.map(|p| p.forget());
            true
        }
    }

    #[tokio::test]
    async fn a_deletion_waits_for_the_publishes_under_way_and_a_dropped_one_undoes_itself() {
        let hold = Arc::new(Holding(tokio::sync::Semaphore::new(0)));
        let broker = Broker::new(hold.clone());
        broker.create_topic("t").await.unwrap();
        let p = broker.register_publisher("t", "p").await.unwrap().item;
        let token = p.token().expose().to_owned();
        let publish = |b: &Broker| {
            let (b, token) = (b.clone(), token.clone());
            tokio::spawn(async move { b.publish("t", &token, None, "x".into()).await })
        };

        // A publish held in its pace: a deletion waits for it; given up
        // on, the topic takes publishes again.
        let first = publish(&broker);
        tokio::task::yield_now().await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), broker.delete_topic("t"));
        assert!(gave_up.await.is_err(), "the deletion did not wait");
        hold.0.add_permits(1);
        first.await.unwrap().unwrap();
        hold.0.add_permits(1);
        publish(&broker).await.unwrap().unwrap();

        // Held again, and this time the deletion goes through: the held
        // publish is answered first, later ones find no topic.
        let held = publish(&broker);
        tokio::task::yield_now().await;
        let deleting = tokio::spawn({
            let broker = broker.clone();
            async move { broker.delete_topic("t").await }
        });
        tokio::task::yield_now().await;
        assert!(!deleting.is_finished());
        hold.0.add_permits(1);
        held.await.unwrap().unwrap();
        deleting.await.unwrap().unwrap();
        let late = publish(&broker).await.unwrap();
        assert!(
            matches!(late, Err(Error::Unauthorized | Error::TopicNotFound)),
            "{late:?}"
        );
    }
}
