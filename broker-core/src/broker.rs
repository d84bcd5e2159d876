//! The `Broker` handle: its shared state, construction and shutdown.
//! What it does is split by concern under `broker/`: topics, access
//! (publishers, listeners, tokens), subscribers, publish and read,
//! consumer groups, the delivery side's progress, the store's records,
//! and following the other replicas.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use parking_lot::RwLock;

mod access;
mod delivery;
mod events;
mod follow;
mod groups;
mod lookup;
mod progress;
mod publish;
mod records;
mod spans;
mod subscribers;
#[cfg(test)]
mod test_support;
mod topics;

pub use lookup::{Delivery, DeliveryState, Lookup};
pub use topics::{TopicDetail, TopicSummary};

use crate::{
    registry::Registry, Error, Limits, MemoryBudget, MemoryStore, Notifier, Record, Store,
    TokenVerifier,
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
    /// Operational events published, by [`crate::OpEvent::index`].
    events_published: [AtomicU64; 7],
    /// Delivery attempts recorded (attempt log and endpoint stats).
    attempts_recorded: AtomicU64,
    /// Where traced messages' spans go; set once ([`Broker::with_spans`]).
    spans: std::sync::OnceLock<Box<dyn crate::Spans>>,
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
                spans: std::sync::OnceLock::new(),
                events_published: Default::default(),
                attempts_recorded: AtomicU64::new(0),
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

    /// The limits this broker enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The memory budget the broker's messages are held within: the
    /// store's ([`Store::memory`]). Deliveries charge what they hold.
    pub fn memory(&self) -> &MemoryBudget {
        &self.shared.memory
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
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("limits", &self.shared.limits)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
