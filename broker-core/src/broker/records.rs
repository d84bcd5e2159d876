//! The mapping between the registrations held in memory and the
//! [`Record`]s a store keeps of them, both ways, and the writing of them.

use std::sync::{atomic::Ordering, Arc};

use super::Broker;
use crate::{
    registry::Registry,
    secret::{SigningSecret, Token},
    stats::Registration,
    store::{Change, CredentialRecord, GroupRecord, Record, SubscriberRecord, TopicRecord},
    subscriber::Secrets,
    Credential, Endpoint, Error, Group, GroupConfig, Subscriber, TopicName,
};

impl Broker {
    /// The endpoint a stored subscriber describes.
    pub(super) fn stored_endpoint(&self, s: &SubscriberRecord) -> Result<Endpoint, Error> {
        let limits = &self.shared.limits;
        let retry = match &s.schedule {
            Some(waits) => crate::Retry::Schedule(waits.as_slice().into()),
            None => crate::Retry::Attempts(s.max_attempts),
        };
        Endpoint::new(&s.url, Some(&s.method), s.headers.clone(), limits)
            .and_then(|e| e.with_retry(retry, limits))
            .map(|e| e.with_ordered(s.ordered))
            .and_then(|e| {
                let filter = s.filter.as_ref().map(|f| f.compile()).transpose()?;
                Ok(e.with_filter(filter))
            })
            .map_err(|e| Error::storage(format!("stored {} is no longer valid: {e}", s.id)))
    }

    pub(super) fn restore(&self, registry: &mut Registry, record: &Record) -> Result<(), Error> {
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
                let endpoint = self.stored_endpoint(s)?;
                let topic = TopicName::new(&s.topic).map_err(|_| bad("has a bad topic"))?;
                let secrets = stored_secrets(s)?;
                let subscriber = registry.restore_subscriber(
                    s.id.clone(),
                    topic,
                    endpoint,
                    secrets.current,
                    crate::subscriber::Standing {
                        cursor: s.cursor,
                        order: s.order,
                        enabled: s.enabled,
                        previous_secret: secrets.previous,
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
                        filter: g
                            .filter
                            .as_ref()
                            .map(|f| f.compile().map(Arc::new))
                            .transpose()
                            .map_err(|e| bad(&format!("has a filter no longer valid: {e}")))?,
                    },
                    order: g.order,
                    state: parking_lot::Mutex::new(state),
                    returned: tokio::sync::Notify::new(),
                    persist: tokio::sync::Mutex::new(()),
                    filtered: Default::default(),
                };
                registry
                    .topic_or_create(&topic)
                    .groups
                    .insert(g.name.clone(), Arc::new(group));
            }
        }
        Ok(())
    }

    pub(super) fn next_order(&self) -> u64 {
        self.shared.order.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes `change` to the store; if that fails, undoes the topic a
    /// plan may have created.
    pub(super) async fn durably(&self, topic: &str, change: Change<'_>) -> Result<(), Error> {
        let saved = self.shared.store.save(change).await;
        if saved.is_err() {
            self.shared.registry.write().prune(topic);
        }
        saved
    }

    /// Writes a planned registration's `record` to the store
    /// ([`durably`](Self::durably)); `None` once it is there (the caller
    /// inserts its plan). When another replica made the same registration
    /// a moment ago ([`Error::AlreadyRegistered`]), that one it is: takes
    /// it ([`adopt`](Self::adopt)) and returns what `plan_again` then
    /// resolves to (it, or a conflict if its settings differ).
    pub(super) async fn save_or_adopt<T>(
        &self,
        topic: &str,
        record: &Record,
        plan_again: impl FnOnce(&mut Registry) -> Result<Registration<T>, Error>,
    ) -> Result<Option<Registration<T>>, Error> {
        match self.durably(topic, Change::Put(record)).await {
            Ok(()) => Ok(None),
            Err(Error::AlreadyRegistered { id }) => {
                self.adopt(&id).await?;
                let mut registry = self.shared.registry.write();
                let again = plan_again(&mut registry)?;
                if again.created {
                    // Gone again meanwhile: let the caller retry.
                    registry.prune(topic);
                    return Err(Error::AlreadyRegistered { id });
                }
                Ok(Some(again))
            }
            Err(e) => Err(e),
        }
    }
}

/// The record a store keeps of credential `c`, at `order`.
pub(super) fn credential_record(c: &Credential, order: u64) -> Record {
    Record::Credential(CredentialRecord {
        id: c.id.clone(),
        topic: c.topic.to_string(),
        name: c.name.clone(),
        role: c.role,
        token: c.token.expose().to_owned(),
        order,
    })
}

/// The record a store keeps of explicitly created topic `name`, at
/// `order`.
pub(super) fn topic_record(name: &str, order: u64) -> Record {
    Record::Topic(TopicRecord {
        id: TopicRecord::id_of(name),
        name: name.to_owned(),
        order,
    })
}

/// A group's record: its settings and a snapshot of its progress; with
/// `shared` (replicas share the group), its leases too.
pub(super) fn group_record(group: &Group, shared: bool) -> Record {
    Record::Group(group_progress(group, shared))
}

/// The group's record with its progress as of now: its registration and
/// what [`Progress::save_group`](crate::Progress::save_group) keeps.
pub(super) fn group_progress(group: &Group, shared: bool) -> GroupRecord {
    let state = group.state.lock();
    let (next, leases, ready, redriven) = if shared {
        state.shared_parts()
    } else {
        (state.floor, Vec::new(), Vec::new(), Vec::new())
    };
    GroupRecord {
        next,
        leases,
        ready,
        redriven,
        id: group.id.clone(),
        topic: group.topic.to_string(),
        name: group.name.clone(),
        ack_timeout: group.config.ack_timeout,
        max_deliveries: group.config.max_deliveries,
        filter: group
            .config
            .filter
            .as_deref()
            .map(crate::store::FilterRecord::of),
        order: group.order,
        floor: state.floor,
        done: state.done.iter().copied().collect(),
        deliveries: state.deliveries.iter().map(|(&o, &d)| (o, d)).collect(),
    }
}

/// The record a store keeps of `s`.
pub(super) fn subscriber_record(s: &Subscriber) -> Record {
    let e = s.endpoint();
    let secrets = s.secrets.read().clone();
    Record::Subscriber(SubscriberRecord {
        id: s.id.clone(),
        topic: s.topic.to_string(),
        url: e.url().to_string(),
        method: e.method().to_string(),
        headers: e.header_pairs(),
        max_attempts: e.max_attempts(),
        schedule: match e.retry() {
            crate::Retry::Schedule(waits) => Some(waits.to_vec()),
            crate::Retry::Attempts(_) => None,
        },
        ordered: e.ordered(),
        filter: e.filter().map(crate::store::FilterRecord::of),
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

/// The signing secrets stored in `s`: the current one and, while its
/// overlap lasts, the one it replaced.
pub(super) fn stored_secrets(s: &SubscriberRecord) -> Result<Secrets, Error> {
    let bad = |what: &str| Error::storage(format!("stored {} {what}", s.id));
    let current = SigningSecret::restore(&s.secret).ok_or_else(|| bad("has a bad secret"))?;
    let previous = match &s.previous_secret {
        Some((secret, until)) => Some((
            SigningSecret::restore(secret).ok_or_else(|| bad("has a bad previous secret"))?,
            *until,
        )),
        None => None,
    };
    Ok(Secrets { current, previous })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::broker::test_support::{endpoint, Recorder};
    use crate::{
        DeadLetter, GroupRecord, Limits, Logs, MemoryStore, NewMessage, Progress, Read,
        Registrations, Store,
    };

    /// A store that remembers every change, to check what the broker
    /// makes durable and what it loads back.
    #[derive(Default)]
    struct Remembering {
        log: MemoryStore,
        records: Mutex<Vec<Record>>,
    }

    #[async_trait::async_trait]
    impl Registrations for Remembering {
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
    }

    #[async_trait::async_trait]
    impl Logs for Remembering {
        async fn append(
            &self,
            topic: &TopicName,
            messages: Vec<NewMessage>,
        ) -> Result<Vec<crate::Appended>, Error> {
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
    }

    #[async_trait::async_trait]
    impl Progress for Remembering {
        async fn save_group(&self, group: GroupRecord) -> Result<(), Error> {
            self.save(Change::Put(&Record::Group(group))).await
        }

        async fn put_dead_letter(
            &self,
            s: &str,
            dead: &DeadLetter,
            keep: usize,
        ) -> Result<u64, Error> {
            self.log.put_dead_letter(s, dead, keep).await
        }

        async fn remove_dead_letter(&self, s: &str, offset: u64) -> Result<(), Error> {
            self.log.remove_dead_letter(s, offset).await
        }

        async fn dead_letters(&self, s: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
            self.log.dead_letters(s, limit).await
        }
    }

    impl Store for Remembering {}

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
    impl Registrations for Failing {
        async fn load(&self) -> Result<Vec<Record>, Error> {
            Ok(Vec::new())
        }

        async fn save(&self, _: Change<'_>) -> Result<(), Error> {
            Err(Error::storage("disk full"))
        }
    }

    #[async_trait::async_trait]
    impl Logs for Failing {
        async fn append(
            &self,
            _: &TopicName,
            _: Vec<NewMessage>,
        ) -> Result<Vec<crate::Appended>, Error> {
            Err(Error::storage("disk full"))
        }

        async fn read(&self, _: &TopicName, _: u64, _: usize, _: usize) -> Result<Read, Error> {
            Err(Error::storage("disk full"))
        }

        async fn bounds(&self, _: &TopicName) -> Result<(u64, u64), Error> {
            Err(Error::storage("disk full"))
        }
    }

    #[async_trait::async_trait]
    impl Progress for Failing {
        async fn put_dead_letter(&self, _: &str, _: &DeadLetter, _: usize) -> Result<u64, Error> {
            Err(Error::storage("disk full"))
        }

        async fn remove_dead_letter(&self, _: &str, _: u64) -> Result<(), Error> {
            Err(Error::storage("disk full"))
        }

        async fn dead_letters(&self, _: &str, _: usize) -> Result<Vec<DeadLetter>, Error> {
            Err(Error::storage("disk full"))
        }
    }

    impl Store for Failing {}

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
