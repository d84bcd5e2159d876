//! Webhook subscribers: registering them, their secrets and standing, and
//! their dead letters and replays.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use super::{records::subscriber_record, Broker};
use crate::{
    secret::SigningSecret,
    stats::Registration,
    store::{Change, DeadLetter},
    Endpoint, Error, Subscriber, TopicName,
};

impl Broker {
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
        let adopted = self
            .save_or_adopt(topic, &record, |registry| {
                registry.plan_subscriber(
                    topic,
                    (*plan.item.endpoint()).clone(),
                    &self.shared.limits,
                    end,
                    self.shared.order.load(Ordering::Relaxed),
                )
            })
            .await?;
        if let Some(adopted) = adopted {
            return Ok(adopted);
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

    /// Changes where and how subscriber `id` on `topic` is delivered to:
    /// `endpoint` replaces its URL, method, headers, retry policy, order
    /// and filter, durably (and, with replicas, everywhere). It keeps its
    /// id, secret, cursor, retries, dead letters and counters. Attempts
    /// from the next on use the new endpoint; an attempt in flight
    /// finishes with the old one. Messages a worker has already read are
    /// not filtered again. Enabled, its circuit closes (a person's doing).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::SubscriberNotFound`],
    /// [`Error::SubscriberConflict`] when another subscriber of the topic
    /// has the new (method, URL), or [`Error::Storage`] (nothing changed).
    pub async fn update_subscriber(
        &self,
        topic: &str,
        id: &str,
        endpoint: Endpoint,
    ) -> Result<Arc<Subscriber>, Error> {
        let _order = self.shared.changes.lock().await;
        let subscriber = self.subscriber(topic, id)?;
        if *subscriber.endpoint() == endpoint {
            return Ok(subscriber);
        }
        let old = self
            .shared
            .registry
            .write()
            .change_endpoint(&subscriber, Arc::new(endpoint))?;
        let record = subscriber_record(&subscriber);
        if let Err(e) = self.shared.store.save(Change::Put(&record)).await {
            let _ = self
                .shared
                .registry
                .write()
                .change_endpoint(&subscriber, old);
            return Err(e);
        }
        self.shared.notifier.changed(&subscriber);
        Ok(subscriber)
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
        let (subscriber, changed) = self.switch(topic, id, enabled).await?;
        if changed && enabled {
            self.emit(crate::OpEvent::SubscriberEnabled {
                topic: topic.to_owned(),
                subscriber_id: id.to_owned(),
            })
            .await;
        }
        Ok(subscriber)
    }

    /// Disables `subscriber` for `reason` (what the delivery side does on
    /// `410 Gone`, or after failing for too long), durably, and says so on
    /// `broker.events`.
    ///
    /// # Errors
    ///
    /// [`Error::SubscriberNotFound`], or [`Error::Storage`].
    pub async fn disable_subscriber(
        &self,
        subscriber: &Subscriber,
        reason: crate::DisableReason,
    ) -> Result<(), Error> {
        let (topic, id) = (subscriber.topic().as_str(), subscriber.id());
        let (_, changed) = self.switch(topic, id, false).await?;
        if changed {
            self.emit(crate::OpEvent::SubscriberDisabled {
                topic: topic.to_owned(),
                subscriber_id: id.to_owned(),
                reason,
            })
            .await;
        }
        Ok(())
    }

    /// [`Broker::set_enabled`], and whether it changed anything.
    async fn switch(
        &self,
        topic: &str,
        id: &str,
        enabled: bool,
    ) -> Result<(Arc<Subscriber>, bool), Error> {
        let _order = self.shared.changes.lock().await;
        let subscriber = self.subscriber(topic, id)?;
        if subscriber.is_enabled() == enabled {
            return Ok((subscriber, false));
        }
        subscriber.enabled.store(enabled, Ordering::Release);
        let record = subscriber_record(&subscriber);
        if let Err(e) = self.shared.store.save(Change::Put(&record)).await {
            subscriber.enabled.store(!enabled, Ordering::Release);
            return Err(e);
        }
        self.shared.notifier.changed(&subscriber);
        Ok((subscriber, true))
    }

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

    /// Subscriber `id` on `topic`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::SubscriberNotFound`].
    pub fn subscriber(&self, topic: &str, id: &str) -> Result<Arc<Subscriber>, Error> {
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
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::broker::test_support::{broker, endpoint};

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
}
