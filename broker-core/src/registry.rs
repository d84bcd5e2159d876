//! The registry: topics, their publishers and subscribers. Plain data with
//! no locking of its own; [`Broker`](crate::Broker) guards it.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
};

use http::Method;

use crate::{
    credential::validate_name,
    message::Subscribers,
    secret::{new_id, SigningSecret, Token},
    stats::{Registration, TopicStats},
    subscriber::Standing,
    Credential, Endpoint, Error, Limits, Role, Subscriber, TopicName,
};

/// What makes two subscriber registrations the same: the method and the
/// canonical URL (the topic is the map it lives in).
type SubscriberKey = (Method, String);

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) topics: HashMap<TopicName, Topic>,
    /// Every publisher and listener by id, so a token finds its credential
    /// in one lookup.
    credentials: HashMap<String, Arc<Credential>>,
    /// Every subscriber by id (whatever its topic), for changes that name
    /// only the id (another replica's).
    subscribers: HashMap<String, Arc<Subscriber>>,
}

pub(crate) struct Topic {
    pub(crate) name: TopicName,
    /// By name: a replayed registration finds its publisher.
    pub(crate) publishers: HashMap<String, Arc<Credential>>,
    /// By name, likewise.
    pub(crate) listeners: HashMap<String, Arc<Credential>>,
    /// Copy-on-write: a publish clones the `Arc`; a change copies the list
    /// only while a publish still holds the old one.
    pub(crate) subscribers: Subscribers,
    subscriber_keys: HashMap<SubscriberKey, Arc<Subscriber>>,
    pub(crate) stats: Arc<TopicStats>,
    /// Created explicitly: kept until deleted, even when empty.
    pub(crate) explicit: bool,
    /// Consumer groups by name.
    pub(crate) groups: HashMap<String, Arc<crate::Group>>,
}

impl Topic {
    fn new(name: TopicName) -> Self {
        Topic {
            name,
            publishers: HashMap::new(),
            listeners: HashMap::new(),
            subscribers: Subscribers::default(),
            subscriber_keys: HashMap::new(),
            stats: Arc::default(),
            explicit: false,
            groups: HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        !self.explicit
            && self.groups.is_empty()
            && self.publishers.is_empty()
            && self.listeners.is_empty()
            && self.subscriber_keys.is_empty()
    }

    fn named(&self, role: Role) -> &HashMap<String, Arc<Credential>> {
        match role {
            Role::Publish => &self.publishers,
            Role::Listen => &self.listeners,
        }
    }

    fn named_mut(&mut self, role: Role) -> &mut HashMap<String, Arc<Credential>> {
        match role {
            Role::Publish => &mut self.publishers,
            Role::Listen => &mut self.listeners,
        }
    }
}

impl Registry {
    pub(crate) fn topic_entry(&mut self, name: &str, limits: &Limits) -> Result<&mut Topic, Error> {
        if !self.topics.contains_key(name) {
            let name = TopicName::new(name)?;
            if self.topics.len() >= limits.max_topics {
                return Err(Error::LimitExceeded {
                    what: "topics",
                    limit: limits.max_topics,
                });
            }
            self.topics.insert(name.clone(), Topic::new(name));
        }
        Ok(self.topics.get_mut(name).expect("inserted above"))
    }

    pub(crate) fn topic_or_create(&mut self, name: &TopicName) -> &mut Topic {
        self.topics
            .entry(name.clone())
            .or_insert_with(|| Topic::new(name.clone()))
    }

    /// Makes `name` an explicit topic (created if needed): it stays until
    /// [`Registry::remove_topic`].
    pub(crate) fn make_explicit(&mut self, name: &TopicName) {
        self.topic_or_create(name).explicit = true;
    }

    /// Removes a topic with everything registered on it; its subscribers
    /// see themselves inactive. Returns the removed subscribers.
    pub(crate) fn remove_topic(&mut self, name: &str) -> Vec<Arc<Subscriber>> {
        let Some(topic) = self.topics.remove(name) else {
            return Vec::new();
        };
        for credential in topic.publishers.values().chain(topic.listeners.values()) {
            self.credentials.remove(&credential.id);
        }
        let subscribers: Vec<_> = topic.subscribers.iter().cloned().collect();
        for subscriber in &subscribers {
            subscriber.active.store(false, Ordering::Release);
            self.subscribers.remove(&subscriber.id);
        }
        subscribers
    }

    /// Drops the topic if nothing is registered on it any more.
    pub(crate) fn prune(&mut self, name: &str) {
        if self.topics.get(name).is_some_and(Topic::is_empty) {
            self.topics.remove(name);
        }
    }

    /// The credential a registration of (role, topic, name) resolves to:
    /// the existing one, or a new one not yet inserted (the broker makes
    /// it durable first, then calls [`Registry::insert_credential`]).
    /// Creates the topic if needed; [`Registry::prune`] undoes that.
    pub(crate) fn plan_credential(
        &mut self,
        role: Role,
        topic: &str,
        name: &str,
        limits: &Limits,
    ) -> Result<Registration<Arc<Credential>>, Error> {
        crate::topic::validate(topic)?;
        validate_name(name, role, limits)?;
        if let Some(existing) = self.topics.get(topic).and_then(|t| t.named(role).get(name)) {
            return Ok(Registration::existing(existing.clone()));
        }
        let mut id = new_id(role.kind().prefix());
        while self.credentials.contains_key(&id) {
            id = new_id(role.kind().prefix());
        }
        let t = self.topic_entry(topic, limits)?;
        if t.named(role).len() >= role.max_per_topic(limits) {
            self.prune(topic);
            return Err(role.limit(limits));
        }
        Ok(Registration::created(Arc::new(Credential {
            token: Token::generate(&id),
            id,
            topic: t.name.clone(),
            name: name.to_owned(),
            role,
        })))
    }

    /// Adds a credential, creating its topic if needed (no limit is
    /// checked: the plan did, or it was loaded from the store).
    pub(crate) fn insert_credential(&mut self, credential: Arc<Credential>) {
        let t = self.topic_or_create(&credential.topic);
        t.named_mut(credential.role)
            .insert(credential.name.clone(), credential.clone());
        self.credentials.insert(credential.id.clone(), credential);
    }

    /// The credential of `role` with `id` on `topic`.
    pub(crate) fn find_credential(
        &self,
        role: Role,
        topic: &str,
        id: &str,
    ) -> Result<&Arc<Credential>, Error> {
        crate::topic::validate(topic)?;
        match self.credentials.get(id) {
            Some(c) if c.topic.as_str() == topic && c.role == role => Ok(c),
            _ => Err(role.not_found()),
        }
    }

    /// Whether a publisher or listener with `id` is registered.
    pub(crate) fn has_credential(&self, id: &str) -> bool {
        self.credentials.contains_key(id)
    }

    /// The subscriber with `id`, on whichever topic.
    pub(crate) fn subscriber_by_id(&self, id: &str) -> Option<&Arc<Subscriber>> {
        self.subscribers.get(id)
    }

    /// The ids of every registration a store keeps a record of.
    pub(crate) fn record_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.credentials.keys().cloned().collect();
        for t in self.topics.values() {
            ids.extend(t.subscribers.iter().map(|s| s.id.clone()));
            ids.extend(t.groups.values().map(|g| g.id.clone()));
            if t.explicit {
                ids.push(crate::TopicRecord::id_of(t.name.as_str()));
            }
        }
        ids
    }

    /// Removes a credential found by [`Registry::find_credential`].
    pub(crate) fn remove_credential(&mut self, id: &str) {
        let Some(credential) = self.credentials.remove(id) else {
            return;
        };
        let topic = credential.topic.as_str();
        if let Some(t) = self.topics.get_mut(topic) {
            t.named_mut(credential.role).remove(&credential.name);
        }
        self.prune(topic);
    }

    /// The subscriber a registration resolves to: the existing one, or a
    /// new one not yet inserted (see [`Registry::plan_credential`]).
    pub(crate) fn plan_subscriber(
        &mut self,
        topic: &str,
        endpoint: Endpoint,
        limits: &Limits,
        cursor: u64,
        order: u64,
    ) -> Result<Registration<Arc<Subscriber>>, Error> {
        crate::topic::validate(topic)?;
        let key: SubscriberKey = (endpoint.method().clone(), endpoint.url().to_string());
        if let Some(existing) = self
            .topics
            .get(topic)
            .and_then(|t| t.subscriber_keys.get(&key))
        {
            return if *existing.endpoint() == endpoint {
                Ok(Registration::existing(existing.clone()))
            } else {
                Err(Error::SubscriberConflict {
                    existing: existing.id.clone(),
                })
            };
        }
        let t = self.topic_entry(topic, limits)?;
        if t.subscriber_keys.len() >= limits.max_subscribers_per_topic {
            let limit = limits.max_subscribers_per_topic;
            self.prune(topic);
            return Err(Error::LimitExceeded {
                what: "subscribers on a topic",
                limit,
            });
        }
        // 96 random bits: with 100,000 subscribers on a topic the chance of
        // a clash is about 2^-63, not worth a scan per registration.
        Ok(Registration::created(Arc::new(Subscriber::new(
            new_id(crate::RecordKind::Subscriber.prefix()),
            t.name.clone(),
            endpoint,
            SigningSecret::generate(),
            t.stats.clone(),
            Standing {
                cursor,
                order,
                enabled: true,
                previous_secret: None,
            },
        ))))
    }

    /// A subscriber loaded from the store, given its topic's counters.
    pub(crate) fn restore_subscriber(
        &mut self,
        id: String,
        topic: TopicName,
        endpoint: Endpoint,
        secret: SigningSecret,
        standing: Standing,
    ) -> Arc<Subscriber> {
        let stats = self.topic_or_create(&topic).stats.clone();
        Arc::new(Subscriber::new(
            id, topic, endpoint, secret, stats, standing,
        ))
    }

    /// Adds a subscriber, creating its topic if needed.
    pub(crate) fn insert_subscriber(&mut self, subscriber: Arc<Subscriber>) {
        let key: SubscriberKey = (
            subscriber.endpoint().method().clone(),
            subscriber.endpoint().url().to_string(),
        );
        let t = self.topic_or_create(&subscriber.topic);
        Arc::make_mut(&mut t.subscribers.0).push(subscriber.clone());
        t.subscriber_keys.insert(key, subscriber.clone());
        self.subscribers.insert(subscriber.id.clone(), subscriber);
    }

    /// Gives `subscriber` a new endpoint, keyed again by its (method,
    /// URL); returns the one it replaced.
    ///
    /// # Errors
    ///
    /// [`Error::SubscriberConflict`] when another subscriber of the topic
    /// has the new (method, URL); [`Error::SubscriberNotFound`] when it is
    /// not registered (any more).
    pub(crate) fn change_endpoint(
        &mut self,
        subscriber: &Arc<Subscriber>,
        endpoint: Arc<Endpoint>,
    ) -> Result<Arc<Endpoint>, Error> {
        let t = self
            .topics
            .get_mut(subscriber.topic.as_str())
            .filter(|t| t.subscribers.iter().any(|s| s.id == subscriber.id))
            .ok_or(Error::SubscriberNotFound)?;
        let key_of = |e: &Endpoint| -> SubscriberKey { (e.method().clone(), e.url().to_string()) };
        let (old_key, new_key) = (key_of(&subscriber.endpoint()), key_of(&endpoint));
        if let Some(other) = t.subscriber_keys.get(&new_key) {
            if other.id != subscriber.id {
                return Err(Error::SubscriberConflict {
                    existing: other.id.clone(),
                });
            }
        }
        t.subscriber_keys.remove(&old_key);
        t.subscriber_keys.insert(new_key, subscriber.clone());
        Ok(subscriber.set_endpoint(endpoint))
    }

    /// The subscriber with `id` on `topic`.
    pub(crate) fn find_subscriber(&self, topic: &str, id: &str) -> Result<&Arc<Subscriber>, Error> {
        crate::topic::validate(topic)?;
        self.topics
            .get(topic)
            .and_then(|t| t.subscribers.iter().find(|s| s.id == id))
            .ok_or(Error::SubscriberNotFound)
    }

    /// Removes a subscriber found by [`Registry::find_subscriber`]; its
    /// queued deliveries see it inactive.
    pub(crate) fn remove_subscriber(&mut self, topic: &str, id: &str) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(pos) = t.subscribers.iter().position(|s| s.id == id) else {
            return;
        };
        let subscriber = Arc::make_mut(&mut t.subscribers.0).remove(pos);
        self.subscribers.remove(&subscriber.id);
        t.subscriber_keys.remove(&(
            subscriber.endpoint().method().clone(),
            subscriber.endpoint().url().to_string(),
        ));
        subscriber.active.store(false, Ordering::Release);
        self.prune(topic);
    }

    /// The credential of `role` that `token` belongs to, compared in
    /// constant time.
    pub(crate) fn authenticate(&self, token: &str, role: Role) -> Result<&Arc<Credential>, Error> {
        let id = Token::claimed_id(token).ok_or(Error::Unauthorized)?;
        match self.credentials.get(id) {
            Some(c) if c.role == role && c.token.verify(token) => Ok(c),
            _ => Err(Error::Unauthorized),
        }
    }
}
