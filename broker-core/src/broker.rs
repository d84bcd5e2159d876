//! The `Broker` handle: registration, deregistration and publish.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use bytes::Bytes;
use http::HeaderValue;
use parking_lot::{Mutex, RwLock};

use crate::{
    registry::Registry, replay::Retained, secret::random, DeliveryCounts, DeliveryStats, Endpoint,
    Error, Limits, Listener, Message, Notifier, Publish, Publisher, Receipt, Replay, ReplayFrom,
    Role, Subscriber, TopicName,
};

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
/// let publisher = broker.register_publisher("orders", "checkout")?.item;
/// let endpoint = Endpoint::new("http://127.0.0.1:9000/hook", None, [("X-Key", "k")], broker.limits())?;
/// broker.register_subscriber("orders", endpoint)?;
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
    notifier: Box<dyn Notifier>,
    limits: Limits,
    closed: AtomicBool,
    message_prefix: String,
    message_seq: AtomicU64,
}

/// Per-topic state reachable without the registry lock: counters and the
/// replay ring.
#[derive(Debug, Default)]
pub(crate) struct TopicStats {
    pub(crate) published: AtomicU64,
    /// Held while a publish numbers and retains its message, and while a
    /// replay copies out its messages (`Arc`s): never across an `.await`.
    pub(crate) retained: Mutex<Retained>,
    /// Outcomes of all deliveries on the topic, including those of
    /// subscribers since deregistered.
    pub(crate) deliveries: ShardedStats,
}

/// Counters written from every thread that delivers for a topic: split into
/// cache-line-sized shards, each thread writing to its own one, so two
/// cores delivering for one topic do not fight over one cache line.
#[derive(Debug, Default)]
pub(crate) struct ShardedStats {
    shards: [Padded; SHARDS],
}

const SHARDS: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(DeliveryStats);

impl ShardedStats {
    /// This thread's shard: threads take shards round robin.
    fn shard() -> usize {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS as u64) as usize;
        }
        SHARD.with(|s| *s)
    }

    pub(crate) fn record(&self, outcome: crate::Outcome, n: u64) {
        self.shards[Self::shard()].0.record(outcome, n);
    }

    pub(crate) fn snapshot(&self) -> DeliveryCounts {
        self.shards
            .iter()
            .map(|s| s.0.snapshot())
            .fold(DeliveryCounts::default(), |mut sum, c| {
                sum.delivered += c.delivered;
                sum.failed += c.failed;
                sum.dropped += c.dropped;
                sum.refused += c.refused;
                sum.retried += c.retried;
                sum
            })
    }
}

/// The result of a registration: the registered item and whether this call
/// created it (`false` when it replayed an earlier registration).
#[derive(Debug, Clone)]
pub struct Registration<T> {
    /// The publisher or subscriber.
    pub item: T,
    /// True if this call created it.
    pub created: bool,
}

impl<T> Registration<T> {
    pub(crate) fn created(item: T) -> Self {
        Registration {
            item,
            created: true,
        }
    }
    pub(crate) fn existing(item: T) -> Self {
        Registration {
            item,
            created: false,
        }
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
    /// A broker with default [`Limits`] that hands publishes to `notifier`.
    pub fn new(notifier: impl Notifier) -> Self {
        Self::with_limits(notifier, Limits::default())
    }

    /// A broker with the given limits.
    pub fn with_limits(notifier: impl Notifier, limits: Limits) -> Self {
        let prefix: [u8; 6] = random();
        Broker {
            shared: Arc::new(Shared {
                registry: RwLock::new(Registry::default()),
                notifier: Box::new(notifier),
                limits,
                closed: AtomicBool::new(false),
                message_prefix: prefix.iter().map(|b| format!("{b:02x}")).collect(),
                message_seq: AtomicU64::new(0),
            }),
        }
    }

    /// The limits this broker enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Registers a publisher named `name` on `topic`, creating the topic if
    /// needed. Replaying the same (topic, name) returns the same publisher
    /// and token with `created == false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidPublisherName`], or
    /// [`Error::LimitExceeded`].
    pub fn register_publisher(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Publisher>>, Error> {
        self.shared.registry.write().register_credential(
            Role::Publish,
            topic,
            name,
            &self.shared.limits,
        )
    }

    /// Deregisters a publisher: its token stops working at once. Nothing
    /// else on the topic changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::PublisherNotFound`] when no
    /// publisher with that id is on the topic.
    pub fn deregister_publisher(&self, topic: &str, id: &str) -> Result<(), Error> {
        self.shared
            .registry
            .write()
            .deregister_credential(Role::Publish, topic, id)
    }

    /// Registers a listener named `name` on `topic`, creating the topic if
    /// needed: its token lets a live client (Server-Sent Events, WebSocket)
    /// receive the topic's messages. Replaying the same (topic, name)
    /// returns the same listener and token with `created == false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::InvalidListenerName`], or
    /// [`Error::LimitExceeded`].
    pub fn register_listener(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Registration<Arc<Listener>>, Error> {
        self.shared.registry.write().register_credential(
            Role::Listen,
            topic,
            name,
            &self.shared.limits,
        )
    }

    /// Deregisters a listener: its token stops working for new
    /// connections at once. Nothing else on the topic changes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::ListenerNotFound`].
    pub fn deregister_listener(&self, topic: &str, id: &str) -> Result<(), Error> {
        self.shared
            .registry
            .write()
            .deregister_credential(Role::Listen, topic, id)
    }

    /// Checks that `token` is a listener token of `topic`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`]; [`Error::Unauthorized`] when the token is
    /// not a registered listener's; [`Error::Forbidden`] when it is another
    /// topic's.
    pub fn authorize_listener(&self, topic: &str, token: &str) -> Result<(), Error> {
        crate::topic::validate(topic)?;
        let registry = self.shared.registry.read();
        let listener = registry.authenticate(token, Role::Listen)?;
        if listener.topic.as_str() == topic {
            Ok(())
        } else {
            Err(Error::Forbidden)
        }
    }

    /// The retained messages of `topic` that `from` asks for (see
    /// [`Limits::replay_messages`]), oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::TopicNotFound`].
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
    /// let token = broker.register_publisher("t", "p")?.item.token().expose().to_owned();
    /// let mut ids = Vec::new();
    /// for n in 0..3 {
    ///     ids.push(broker.publish("t", &token, None, format!("{n}").into()).await?.id);
    /// }
    /// let last_two = broker.replay("t", ReplayFrom::Last(2))?;
    /// assert_eq!(last_two.messages.len(), 2);
    /// assert_eq!(last_two.messages[0].payload().as_ref(), b"1");
    /// let after_first = broker.replay("t", ReplayFrom::After(&ids[0]))?;
    /// assert_eq!(after_first.messages[0].id(), ids[1]);
    /// # Ok::<_, broker_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn replay(&self, topic: &str, from: ReplayFrom<'_>) -> Result<Replay, Error> {
        crate::topic::validate(topic)?;
        let stats = {
            let registry = self.shared.registry.read();
            let t = registry.topics.get(topic).ok_or(Error::TopicNotFound)?;
            t.stats.clone()
        };
        let retained = stats.retained.lock();
        Ok(retained.replay(&from, &self.shared.message_prefix))
    }

    /// Registers a subscriber on `topic`, creating the topic if needed.
    /// Replaying the same (topic, method, URL) with the same headers returns
    /// the existing subscriber with `created == false`; it never makes a
    /// second one, also when replays race.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::LimitExceeded`], or
    /// [`Error::SubscriberConflict`] when the (method, URL) is registered
    /// with other headers.
    pub fn register_subscriber(
        &self,
        topic: &str,
        endpoint: Endpoint,
    ) -> Result<Registration<Arc<Subscriber>>, Error> {
        self.shared
            .registry
            .write()
            .register_subscriber(topic, endpoint, &self.shared.limits)
    }

    /// Deregisters a subscriber. Deliveries still queued for it are dropped
    /// by the notifier ([`Subscriber::is_active`] turns false).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::SubscriberNotFound`].
    pub fn deregister_subscriber(&self, topic: &str, id: &str) -> Result<(), Error> {
        self.shared
            .registry
            .write()
            .deregister_subscriber(topic, id)
    }

    /// Publishes `payload` on `topic` with a publisher's `token`, handing it
    /// to the notifier with the topic's current subscribers. Returns once
    /// the notifier has taken it; never waits on a subscriber.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`]; [`Error::Unauthorized`] when the token is
    /// not a registered publisher's; [`Error::Forbidden`] when it is another
    /// topic's; [`Error::Closed`] after [`Broker::close`].
    pub async fn publish(
        &self,
        topic: &str,
        token: &str,
        content_type: Option<HeaderValue>,
        payload: Bytes,
    ) -> Result<Receipt, Error> {
        crate::topic::validate(topic)?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let (topic, subscribers, stats) = {
            let registry = self.shared.registry.read();
            let publisher = registry.authenticate(token, Role::Publish)?;
            if publisher.topic.as_str() != topic {
                return Err(Error::Forbidden);
            }
            let t = registry
                .topics
                .get(topic)
                .expect("a registered publisher's topic exists");
            (t.name.clone(), t.subscribers.clone(), t.stats.clone())
            // The guard drops here, before the notifier runs.
        };
        stats.published.fetch_add(1, Ordering::Relaxed);
        let message = {
            // Numbered under the topic's ring lock, so the ring (and any
            // replay) is in sequence order; dropped before notifying.
            let mut retained = stats.retained.lock();
            let seq = self.shared.message_seq.fetch_add(1, Ordering::Relaxed);
            let message = Arc::new(Message {
                id: format!("msg_{}{seq:012x}", self.shared.message_prefix),
                seq,
                topic,
                content_type,
                payload,
                published_at: SystemTime::now(),
            });
            retained.push(&message, &self.shared.limits);
            message
        };
        let receipt = Receipt {
            id: message.id.clone(),
            subscribers: subscribers.len(),
        };
        self.shared
            .notifier
            .notify(Publish {
                message,
                subscribers,
            })
            .await;
        Ok(receipt)
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

    /// All topics, ordered by name.
    pub fn topics(&self) -> Vec<TopicSummary> {
        let mut topics: Vec<_> = self
            .shared
            .registry
            .read()
            .topics
            .values()
            .map(|t| TopicSummary {
                name: t.name.clone(),
                publishers: t.publishers.len(),
                listeners: t.listeners.len(),
                subscribers: t.subscribers.len(),
                published: t.stats.published.load(Ordering::Relaxed),
                deliveries: t.stats.deliveries.snapshot(),
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
    use std::{collections::HashSet, thread};

    use parking_lot::Mutex;

    use super::*;

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

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn publisher_registration_is_idempotent_per_topic_and_name() {
        let (b, _) = broker();
        let first = b.register_publisher("t", "checkout").unwrap();
        let again = b.register_publisher("t", "checkout").unwrap();
        assert!(first.created);
        assert!(!again.created);
        assert_eq!(first.item.id(), again.item.id());
        assert_eq!(first.item.token(), again.item.token());
        let other = b.register_publisher("t", "billing").unwrap();
        assert!(other.created);
        assert_ne!(other.item.id(), first.item.id());
        let elsewhere = b.register_publisher("u", "checkout").unwrap();
        assert!(elsewhere.created);
        assert_ne!(elsewhere.item.token(), first.item.token());
    }

    #[test]
    fn subscriber_replay_returns_the_same_subscriber() {
        let (b, _) = broker();
        let first = b
            .register_subscriber("t", endpoint(&b, "http://h:1/x"))
            .unwrap();
        // Differently spelled, same canonical URL.
        let again = b
            .register_subscriber("t", endpoint(&b, "HTTP://H:1/x"))
            .unwrap();
        assert!(first.created && !again.created);
        assert_eq!(first.item.id(), again.item.id());
        assert_eq!(first.item.secret(), again.item.secret());
        assert_eq!(b.topic("t").unwrap().subscribers.len(), 1);

        // Same URL with another method is another subscriber.
        let put = Endpoint::new("http://h:1/x", Some("PUT"), [("x-k", "v")], b.limits()).unwrap();
        assert!(b.register_subscriber("t", put).unwrap().created);
        // Same key with other headers is a conflict, not a silent change.
        let other = Endpoint::new("http://h:1/x", None, [("x-k", "w")], b.limits()).unwrap();
        assert_eq!(
            b.register_subscriber("t", other).unwrap_err(),
            Error::SubscriberConflict {
                existing: first.item.id().to_owned()
            }
        );
        assert_eq!(b.topic("t").unwrap().subscribers.len(), 2);
    }

    #[test]
    fn concurrent_replays_create_exactly_one() {
        let (b, _) = broker();
        let ids: Vec<(String, String)> = thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut ids = Vec::new();
                        for i in 0..50 {
                            let sub = b
                                .register_subscriber("t", endpoint(&b, &format!("http://h/{i}")))
                                .unwrap();
                            let publ = b.register_publisher("t", &format!("p{i}")).unwrap();
                            ids.push((sub.item.id().to_owned(), publ.item.id().to_owned()));
                        }
                        ids
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let subs: HashSet<_> = ids.iter().map(|(s, _)| s).collect();
        let pubs: HashSet<_> = ids.iter().map(|(_, p)| p).collect();
        assert_eq!(subs.len(), 50);
        assert_eq!(pubs.len(), 50);
        let detail = b.topic("t").unwrap();
        assert_eq!(detail.subscribers.len(), 50);
        assert_eq!(detail.publishers.len(), 50);
    }

    #[test]
    fn only_a_registered_publishers_token_publishes_on_its_topic() {
        let (b, rec) = broker();
        let p = b.register_publisher("t", "p").unwrap().item;
        let q = b.register_publisher("u", "q").unwrap().item;
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .unwrap();
        block_on(async {
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
        });
        assert_eq!(rec.0.lock().len(), 1);
        assert_eq!(b.topic("t").unwrap().published, 1);
    }

    #[test]
    fn deregistration_changes_nothing_else() {
        let (b, rec) = broker();
        let p1 = b.register_publisher("t", "p1").unwrap().item;
        let p2 = b.register_publisher("t", "p2").unwrap().item;
        let s1 = b
            .register_subscriber("t", endpoint(&b, "http://h/1"))
            .unwrap()
            .item;
        let s2 = b
            .register_subscriber("t", endpoint(&b, "http://h/2"))
            .unwrap()
            .item;

        b.deregister_publisher("t", p1.id()).unwrap();
        assert_eq!(
            b.deregister_publisher("t", p1.id()).unwrap_err(),
            Error::PublisherNotFound
        );
        // Another topic's publisher id is not found on this one.
        let other = b.register_publisher("u", "x").unwrap().item;
        assert_eq!(
            b.deregister_publisher("t", other.id()).unwrap_err(),
            Error::PublisherNotFound
        );
        b.deregister_subscriber("t", s1.id()).unwrap();
        assert!(!s1.is_active());
        assert!(s2.is_active());
        assert_eq!(
            b.deregister_subscriber("t", s1.id()).unwrap_err(),
            Error::SubscriberNotFound
        );

        block_on(async {
            let gone = b.publish("t", p1.token().expose(), None, "x".into()).await;
            assert_eq!(gone.unwrap_err(), Error::Unauthorized);
            let r = b
                .publish("t", p2.token().expose(), None, "x".into())
                .await
                .unwrap();
            assert_eq!(r.subscribers, 1);
            let seen = rec.0.lock();
            assert_eq!(*seen, [(r.id.clone(), s2.id().to_owned())]);
        });
        let detail = b.topic("t").unwrap();
        assert_eq!(detail.publishers.len(), 1);
        assert_eq!(detail.publishers[0].id(), p2.id());

        // A topic disappears with its last registration.
        b.deregister_publisher("t", p2.id()).unwrap();
        b.deregister_subscriber("t", s2.id()).unwrap();
        assert_eq!(b.topic("t").unwrap_err(), Error::TopicNotFound);
        assert_eq!(b.topics().len(), 1);
    }

    #[test]
    fn a_publish_keeps_its_snapshot() {
        let (b, _) = broker();
        let s = b
            .register_subscriber("t", endpoint(&b, "http://h/1"))
            .unwrap()
            .item;
        let snapshot = b.shared.registry.read().topics["t"].subscribers.clone();
        b.deregister_subscriber("t", s.id()).unwrap();
        b.register_subscriber("t", endpoint(&b, "http://h/2"))
            .unwrap();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].id(), s.id());
    }

    #[test]
    fn limits_are_enforced_without_side_effects() {
        let limits = Limits {
            max_topics: 1,
            max_publishers_per_topic: 1,
            max_subscribers_per_topic: 1,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        b.register_publisher("t", "a").unwrap();
        assert!(matches!(
            b.register_publisher("t", "b"),
            Err(Error::LimitExceeded { limit: 1, .. })
        ));
        assert!(matches!(
            b.register_publisher("u", "a"),
            Err(Error::LimitExceeded { what: "topics", .. })
        ));
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .unwrap();
        assert!(b
            .register_subscriber("t", endpoint(&b, "http://h/2"))
            .is_err());
        // Replays still succeed at the limit.
        assert!(!b.register_publisher("t", "a").unwrap().created);
        assert!(
            !b.register_subscriber("t", endpoint(&b, "http://h/1"))
                .unwrap()
                .created
        );
        assert_eq!(b.topics().len(), 1);
    }

    #[test]
    fn closed_broker_refuses_publishes() {
        let (b, _) = broker();
        let p = b.register_publisher("t", "p").unwrap().item;
        b.close();
        let r = block_on(b.publish("t", p.token().expose(), None, "x".into()));
        assert_eq!(r.unwrap_err(), Error::Closed);
    }

    #[test]
    fn publisher_names_are_validated() {
        let (b, _) = broker();
        for bad in ["", "a\nb", &"n".repeat(129)] {
            assert!(matches!(
                b.register_publisher("t", bad),
                Err(Error::InvalidPublisherName { .. })
            ));
        }
        assert!(b.topics().is_empty());
    }

    #[test]
    fn listener_tokens_listen_and_never_publish() {
        let (b, _) = broker();
        let l = b.register_listener("t", "dashboard").unwrap();
        assert!(l.created && l.item.id().starts_with("lis_"));
        assert!(!b.register_listener("t", "dashboard").unwrap().created);
        let p = b.register_publisher("t", "p").unwrap().item;
        let token = l.item.token().expose();
        assert_eq!(b.authorize_listener("t", token), Ok(()));
        // A listener token is not a publisher's, and the reverse.
        let publish = block_on(b.publish("t", token, None, "x".into()));
        assert_eq!(publish.unwrap_err(), Error::Unauthorized);
        assert_eq!(
            b.authorize_listener("t", p.token().expose()),
            Err(Error::Unauthorized)
        );
        b.register_publisher("u", "p").unwrap();
        assert_eq!(b.authorize_listener("u", token), Err(Error::Forbidden));
        let detail = b.topic("t").unwrap();
        assert_eq!(detail.listeners.len(), 1);
        assert_eq!(b.topics()[0].listeners, 1);
        // Deregistering a listener by a publisher's id, or the reverse, finds nothing.
        assert_eq!(
            b.deregister_listener("t", p.id()),
            Err(Error::ListenerNotFound)
        );
        assert_eq!(
            b.deregister_publisher("t", l.item.id()),
            Err(Error::PublisherNotFound)
        );
        b.deregister_listener("t", l.item.id()).unwrap();
        assert_eq!(b.authorize_listener("t", token), Err(Error::Unauthorized));
        // A listener alone keeps a topic.
        b.register_listener("v", "x").unwrap();
        assert!(b.topic("v").is_ok());
    }

    fn publish_n(b: &Broker, topic: &str, sizes: &[usize]) -> Vec<String> {
        let token = b.register_publisher(topic, "p").unwrap().item;
        block_on(async {
            let mut ids = Vec::new();
            for &n in sizes {
                let r = b.publish(topic, token.token().expose(), None, vec![b'x'; n].into());
                ids.push(r.await.unwrap().id);
            }
            ids
        })
    }

    #[test]
    fn the_replay_ring_is_bounded_by_count_and_bytes() {
        let limits = Limits {
            replay_messages: 3,
            replay_bytes: 10,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        let ids = publish_n(&b, "t", &[1, 1, 1, 1]);
        let all = b.replay("t", ReplayFrom::Last(usize::MAX)).unwrap();
        let kept: Vec<_> = all.messages.iter().map(|m| m.id().to_owned()).collect();
        assert_eq!(kept, ids[1..]);
        let seq = all.messages.last().unwrap().sequence();
        assert_eq!(all.up_to, Some(seq));
        // Bytes: a 6-byte message evicts until it fits in 10.
        let more = publish_n(&b, "t", &[6]);
        let kept = b.replay("t", ReplayFrom::Last(10)).unwrap().messages;
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[2].id(), more[0]);
        // Too large for the ring: not kept, yet counted in `up_to`.
        let big = publish_n(&b, "t", &[11]);
        let r = b.replay("t", ReplayFrom::Last(10)).unwrap();
        assert_eq!(r.messages.last().unwrap().id(), more[0]);
        assert!(r.up_to > Some(r.messages.last().unwrap().sequence()));
        assert!(!r.messages.iter().any(|m| m.id() == big[0]));
        assert_eq!(
            b.replay("t", ReplayFrom::Last(0)).unwrap().messages.len(),
            0
        );
        assert_eq!(
            b.replay("zz", ReplayFrom::Last(1)).unwrap_err(),
            Error::TopicNotFound
        );
    }

    #[test]
    fn replay_after_an_id_resumes_after_it() {
        let (b, _) = broker();
        let ids = publish_n(&b, "t", &[1, 1, 1]);
        let after = |id: &str| -> Vec<String> {
            b.replay("t", ReplayFrom::After(id))
                .unwrap()
                .messages
                .iter()
                .map(|m| m.id().to_owned())
                .collect()
        };
        assert_eq!(after(&ids[0]), ids[1..]);
        assert!(after(&ids[2]).is_empty());
        // Ids this broker never issued replay all that is retained.
        for foreign in ["", "msg_", "nonsense", "msg_000000000000000000000001"] {
            assert_eq!(after(foreign), ids, "{foreign:?}");
        }
        // Nothing retained with replay off, but `up_to` still moves.
        let off = Broker::with_limits(
            Recorder::default(),
            Limits {
                replay_messages: 0,
                ..Limits::default()
            },
        );
        publish_n(&off, "t", &[1]);
        let r = off.replay("t", ReplayFrom::Last(5)).unwrap();
        assert!(r.messages.is_empty() && r.up_to.is_some());
    }
}
