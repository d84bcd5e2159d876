//! Live listeners: Server-Sent Events (`sse.rs`) and WebSocket (`ws.rs`)
//! connections that receive a topic's messages as they are published.
//!
//! The [`LiveHub`] is a [`Notifier`]: run the broker with
//! `Broker::new((webhooks, hub))` and it gets every publish. For each, it
//! pushes the message into the bounded queue of every connection listening
//! on the topic (`queue.rs`) and returns: it never waits on a client. A
//! connection whose queue overflows is told `SLOW_CONSUMER` and
//! disconnected, or loses its oldest queued messages
//! ([`Overflow`]); publishing and the other connections carry on.

mod metered;
mod pager;
mod queue;
pub(crate) mod sse;
pub(crate) mod ws;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use broker_core::{Message, Notifier, Publish, TopicName};
use parking_lot::{Mutex, RwLock};

pub(crate) use pager::Pager;
pub(crate) use queue::{LiveEvent, LiveQueue, Next};

/// What happens when a live connection's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The client gets a `SLOW_CONSUMER` error and is disconnected (the
    /// default): it knows it missed messages, and can reconnect and resume
    /// from the topic's log (`Last-Event-ID`).
    #[default]
    Disconnect,
    /// The oldest queued message is dropped (and counted) to make room:
    /// the client stays connected and silently misses messages.
    DropOldest,
}

/// Settings of live listening.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Messages queued per connection before [`LiveConfig::overflow`]
    /// applies. Default 256.
    pub queue_capacity: usize,
    /// What a full queue does. Default [`Overflow::Disconnect`].
    pub overflow: Overflow,
    /// A Server-Sent Events comment or a WebSocket ping this often, so
    /// proxies keep idle connections open and dead ones are found.
    /// Default 15 s.
    pub heartbeat: Duration,
    /// Listen without a token. Default `false`: listening takes a listener
    /// token of the topic or the admin token.
    pub allow_anonymous: bool,
    /// Live connections (SSE and WebSocket together) at once; more are
    /// refused with `503`. Default 10,000.
    pub max_connections: usize,
    /// Topics one WebSocket connection may subscribe to. Default 64.
    pub max_subscriptions: usize,
    /// The largest WebSocket message a client may send, in bytes (64 KiB
    /// for any but `publish`). What a client has sent of a message counts
    /// in the broker's memory budget until answered. Default 2 MiB.
    pub max_frame_bytes: usize,
    /// Time a live connection may take to accept a write (its last words
    /// included: the `SLOW_CONSUMER` error) before it is dropped.
    /// Default 10 s.
    pub write_timeout: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            queue_capacity: 256,
            overflow: Overflow::Disconnect,
            heartbeat: Duration::from_secs(15),
            allow_anonymous: false,
            max_connections: 10_000,
            max_subscriptions: 64,
            max_frame_bytes: 2 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// The transport of a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Sse,
    WebSocket,
}

/// Live connections and who listens to what; the [`Notifier`] that feeds
/// them. Cheap to clone.
///
/// # Examples
///
/// ```
/// use broker_core::Broker;
/// use broker_delivery::{DeliveryConfig, WebhookNotifier};
/// use broker_http::{Api, ApiConfig, LiveConfig, LiveHub};
///
/// let webhooks = WebhookNotifier::new(DeliveryConfig::default());
/// let live = LiveHub::new(LiveConfig::default());
/// let broker = Broker::new((webhooks, live.clone()));
/// let api = Api::new(broker, ApiConfig { live: Some(live), ..ApiConfig::default() });
/// ```
#[derive(Clone)]
pub struct LiveHub {
    shared: Arc<Hub>,
}

struct Hub {
    config: LiveConfig,
    /// Topic → the queues listening on it. Copy-on-write like a topic's
    /// subscribers: a publish clones the `Arc` under the read lock and
    /// pushes after dropping it. Entries go when their last listener does,
    /// so the map is bounded by the live connections.
    topics: RwLock<HashMap<TopicName, Arc<Vec<Arc<LiveQueue>>>>>,
    /// Every open connection, so `close` reaches those listening to
    /// nothing yet; bounded by `max_connections`. Held for inserts and
    /// removals only.
    connections: Mutex<HashMap<u64, (Transport, Arc<LiveQueue>)>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    totals: Totals,
}

/// Counters of connections already closed; open ones keep their own.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    dropped: AtomicU64,
    /// Shared with every queue, which counts its own overflow.
    slow_consumers: Arc<AtomicU64>,
}

/// Live listening in numbers, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LiveStats {
    pub(crate) sse: usize,
    pub(crate) websocket: usize,
    pub(crate) sent: u64,
    pub(crate) dropped: u64,
    pub(crate) slow_consumers: u64,
}

impl LiveHub {
    /// A hub with `config`.
    pub fn new(config: LiveConfig) -> Self {
        LiveHub {
            shared: Arc::new(Hub {
                config,
                topics: RwLock::default(),
                connections: Mutex::default(),
                next_id: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                totals: Totals::default(),
            }),
        }
    }

    /// The hub's settings.
    pub fn config(&self) -> &LiveConfig {
        &self.shared.config
    }

    /// Ends every live connection (SSE streams end; WebSockets are closed
    /// with 1001 "going away") and refuses new ones. [`serve`](crate::serve)
    /// calls it when shutdown starts, so live connections do not hold the
    /// graceful shutdown.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let queues: Vec<_> = self
            .shared
            .connections
            .lock()
            .values()
            .map(|(_, q)| q.clone())
            .collect();
        // Woken after the lock is dropped: a woken task may detach at once.
        for q in queues {
            q.close();
        }
    }

    /// Live connections listening on `topic`.
    pub fn listening(&self, topic: &str) -> usize {
        self.shared.topics.read().get(topic).map_or(0, |l| l.len())
    }

    /// Live connections on each topic that has any.
    pub(crate) fn listening_by_topic(&self) -> Vec<(TopicName, usize)> {
        let topics = self.shared.topics.read();
        topics.iter().map(|(t, l)| (t.clone(), l.len())).collect()
    }

    pub(crate) fn stats(&self) -> LiveStats {
        let connections = self.shared.connections.lock();
        let t = &self.shared.totals;
        let mut stats = LiveStats {
            sent: t.sent.load(Ordering::Relaxed),
            dropped: t.dropped.load(Ordering::Relaxed),
            slow_consumers: t.slow_consumers.load(Ordering::Relaxed),
            ..LiveStats::default()
        };
        for (transport, q) in connections.values() {
            match transport {
                Transport::Sse => stats.sse += 1,
                Transport::WebSocket => stats.websocket += 1,
            }
            let (sent, dropped) = q.counts();
            stats.sent += sent;
            stats.dropped += dropped;
        }
        stats
    }

    /// Opens a connection: its queue, detached from every topic.
    pub(crate) fn connect(&self, transport: Transport) -> Result<Connection, crate::ApiError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(crate::ApiError::Broker(broker_core::Error::Closed));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(LiveQueue::new(
            self.shared.config.queue_capacity,
            self.shared.config.overflow,
            self.shared.totals.slow_consumers.clone(),
        ));
        {
            let mut connections = self.shared.connections.lock();
            if connections.len() >= self.shared.config.max_connections {
                return Err(crate::ApiError::TooManyLiveConnections);
            }
            connections.insert(id, (transport, queue.clone()));
        }
        // A `close` that ran between the check and the insert missed this
        // queue: close it here.
        if self.shared.closed.load(Ordering::Acquire) {
            queue.close();
        }
        Ok(Connection {
            hub: self.clone(),
            id,
            queue,
            topics: HashMap::new(),
        })
    }
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub")
            .field("config", &self.shared.config)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Notifier for LiveHub {
    /// Every connection listening on a deleted topic is told: an event
    /// stream ends, a WebSocket gets an error frame and stops listening to
    /// it (its other topics go on).
    fn topic_deleted(&self, topic: &TopicName) {
        let listeners = self.shared.topics.write().remove(topic);
        // Told after the lock is dropped: a woken task may detach at once.
        for queue in listeners.iter().flat_map(|l| l.iter()) {
            queue.topic_deleted(topic.clone());
        }
    }

    fn wants_appended_elsewhere(&self, topic: &TopicName) -> bool {
        self.shared.topics.read().contains_key(topic)
    }

    async fn notify(&self, publish: Publish) {
        let listeners = {
            let topics = self.shared.topics.read();
            match topics.get(publish.message.topic()) {
                Some(listeners) => listeners.clone(),
                None => return,
            }
            // The guard drops here, before any queue is touched.
        };
        // One shared event per publish: each transport's encoding of it is
        // made once, by the first connection that needs it.
        let event = Arc::new(LiveEvent::new(publish.message));
        for queue in listeners.iter() {
            queue.push(&event);
        }
    }
}

/// One live connection: its queue and the topics it listens to, each with
/// the sequence number up to which its replay covered it. Detaches from
/// everything when dropped.
pub(crate) struct Connection {
    hub: LiveHub,
    id: u64,
    pub(crate) queue: Arc<LiveQueue>,
    topics: HashMap<TopicName, Listening>,
}

/// How a connection listens to one topic.
struct Listening {
    /// The offset up to which the replay covered it (queued messages up
    /// to it are skipped); `None` until the replay says.
    covered: Option<u64>,
    /// Which messages it wants (`None`: all).
    filter: Option<Arc<broker_core::Filter>>,
}

impl Connection {
    /// Starts listening on `topic`: after this, every publish on it is
    /// queued. Call before taking the replay, then [`Connection::covered`].
    pub(crate) fn attach(&mut self, topic: TopicName, filter: Option<broker_core::Filter>) {
        if self.topics.contains_key(&topic) {
            return;
        }
        let mut topics = self.hub.shared.topics.write();
        let list = topics.entry(topic.clone()).or_default();
        Arc::make_mut(list).push(self.queue.clone());
        drop(topics);
        // Until the replay says otherwise, nothing is covered.
        self.topics.insert(
            topic,
            Listening {
                covered: None,
                filter: filter.map(Arc::new),
            },
        );
    }

    /// Sets what the replay covered on `topic`: queued messages up to
    /// `up_to` are skipped.
    pub(crate) fn covered(&mut self, topic: &str, up_to: Option<u64>) {
        if let Some(listening) = self.topics.get_mut(topic) {
            listening.covered = up_to;
        }
    }

    /// Stops listening on `topic`; whether it was listening.
    pub(crate) fn detach(&mut self, topic: &str) -> bool {
        let Some((name, _)) = self.topics.remove_entry(topic) else {
            return false;
        };
        let mut topics = self.hub.shared.topics.write();
        if let Some(list) = topics.get_mut(&name) {
            Arc::make_mut(list).retain(|q| !Arc::ptr_eq(q, &self.queue));
            if list.is_empty() {
                topics.remove(&name);
            }
        }
        true
    }

    /// Whether it listens to `topic`.
    pub(crate) fn wants_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// How many topics it listens to.
    pub(crate) fn subscriptions(&self) -> usize {
        self.topics.len()
    }

    /// Whether a queued `message` is still wanted: its topic is listened
    /// to, the replay did not already cover it, and the subscription's
    /// filter matches.
    pub(crate) fn wants(&self, message: &Message) -> bool {
        match self.topics.get(message.topic().as_str()) {
            Some(listening) => {
                listening
                    .covered
                    .is_none_or(|up_to| message.offset() > up_to)
                    && listening.filter.as_ref().is_none_or(|f| f.matches(message))
            }
            None => false,
        }
    }

    /// Whether a replayed `message` is wanted: the subscription's filter
    /// matches.
    pub(crate) fn wants_replayed(&self, message: &Message) -> bool {
        self.topics
            .get(message.topic().as_str())
            .is_some_and(|l| l.filter.as_ref().is_none_or(|f| f.matches(message)))
    }

    pub(crate) fn config(&self) -> &LiveConfig {
        &self.hub.shared.config
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let topics: Vec<TopicName> = self.topics.keys().cloned().collect();
        for t in topics {
            self.detach(t.as_str());
        }
        // Under the lock `stats` reads under, so a scrape sees the counts
        // once: in the connection or in the totals.
        let mut connections = self.hub.shared.connections.lock();
        let (sent, dropped) = self.queue.counts();
        let totals = &self.hub.shared.totals;
        totals.sent.fetch_add(sent, Ordering::Relaxed);
        totals.dropped.fetch_add(dropped, Ordering::Relaxed);
        connections.remove(&self.id);
    }
}

/// The query parameters of the live endpoints. Others are ignored (clients
/// add cache busters).
#[derive(Debug, Default)]
pub(crate) struct Query<'a> {
    /// A token, for clients that cannot set headers (browsers' `EventSource`
    /// and `WebSocket`).
    pub(crate) access_token: Option<&'a str>,
    /// Retained messages to replay first.
    pub(crate) last_n: Option<usize>,
    /// `filter=<JSON>` (percent-encoded), as a subscriber's `filter`.
    pub(crate) filter: Option<broker_core::Filter>,
}

impl<'a> Query<'a> {
    /// Parses a query string. Values are taken verbatim: tokens and numbers
    /// never need percent-encoding.
    pub(crate) fn parse(query: Option<&'a str>) -> Result<Self, crate::ApiError> {
        let mut parsed = Query::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "access_token" if !value.is_empty() => parsed.access_token = Some(value),
                "last_n" => {
                    let n = value.parse().map_err(|_| {
                        crate::ApiError::InvalidQuery("last_n must be a whole number")
                    })?;
                    parsed.last_n = Some(n);
                }
                "filter" => parsed.filter = Some(filter_param(value)?),
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// The `filter` query parameter: the JSON of a filter, percent-encoded
/// (`%XX` only: a `+` stays a `+`, as CEL means it).
fn filter_param(value: &str) -> Result<broker_core::Filter, crate::ApiError> {
    let invalid =
        |reason: String| crate::ApiError::from(broker_core::Error::InvalidFilter { reason });
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid("the filter parameter has a bad %-escape".into()))?;
            decoded.push(hex);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let request: crate::json::FilterRequest = serde_json::from_slice(&decoded)
        .map_err(|e| invalid(format!("the filter parameter is not a filter's JSON: {e}")))?;
    request.compile()
}

/// The token a live request presents: `Authorization: Bearer` or
/// `X-API-Key`, or else the `access_token` query parameter.
pub(crate) fn presented_token<'a>(
    parts: &'a http::request::Parts,
    query: &Query<'a>,
) -> Result<Option<&'a str>, crate::ApiError> {
    Ok(crate::handlers::credential(&parts.headers)?.or(query.access_token))
}

/// Whether `token` may listen on `topic`: the admin token, a listener token
/// of the topic, or none at all when anonymous listening is on.
pub(crate) async fn authorize(
    api: &crate::Api,
    hub: &LiveHub,
    topic: &str,
    token: Option<&str>,
) -> Result<(), crate::ApiError> {
    if token.is_none() && hub.config().allow_anonymous {
        return Ok(());
    }
    // An open hub still refuses a wrong token: it was meant to count.
    crate::handlers::authorize_reader_fresh(api, topic, token).await
}

/// Real messages for unit tests: only a publish makes one.
#[cfg(test)]
pub(crate) fn published(payloads: &[&[u8]]) -> Vec<Arc<Message>> {
    struct Nobody;
    #[async_trait]
    impl Notifier for Nobody {
        async fn notify(&self, _: Publish) {}
    }
    let broker = broker_core::Broker::new(Nobody);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let publisher = rt
        .block_on(broker.register_publisher("t", "p"))
        .unwrap()
        .item;
    for payload in payloads {
        let publish = broker.publish(
            "t",
            publisher.token().expose(),
            None,
            payload.to_vec().into(),
        );
        rt.block_on(publish).unwrap();
    }
    rt.block_on(broker.read("t", 0, payloads.len(), usize::MAX))
        .unwrap()
        .messages
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use broker_core::{Broker, ReplayFrom};

    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A message published between attaching and taking the replay is in
    /// both: it is sent once, from the replay.
    #[test]
    fn what_the_replay_covers_is_not_sent_again_live() {
        let hub = LiveHub::new(LiveConfig::default());
        let broker = Broker::new(hub.clone());
        let token = block_on(broker.register_publisher("t", "p")).unwrap().item;
        let publish = |body: &'static str| {
            block_on(broker.publish("t", token.token().expose(), None, body.into())).unwrap()
        };
        publish("old");
        let mut conn = hub.connect(Transport::Sse).unwrap();
        conn.attach(TopicName::new("t").unwrap(), None);
        assert_eq!(hub.listening("t"), 1);
        publish("in between");
        let range = block_on(broker.replay_range("t", ReplayFrom::Last(10))).unwrap();
        conn.covered("t", range.up_to());
        publish("after");
        let mut pager = Pager::new(broker.clone(), TopicName::new("t").unwrap(), range);
        let mut replayed = Vec::new();
        loop {
            let page = block_on(std::future::poll_fn(|cx| pager.poll_page(cx))).unwrap();
            if page.is_empty() {
                break;
            }
            replayed.extend(page.iter().map(|m| m.payload().clone()));
        }
        assert_eq!(replayed, ["old", "in between"]);
        let mut live = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Next::Event(e)) = conn.queue.poll_next(&mut cx) {
            if conn.wants(&e.message) {
                live.push(e.message.payload().clone());
            }
        }
        assert_eq!(live, ["after"]);
        // Dropping the connection detaches it everywhere.
        drop(conn);
        assert_eq!(hub.listening("t"), 0);
        assert!(hub.listening_by_topic().is_empty());
        assert_eq!(hub.stats().sse, 0);
    }

    #[test]
    fn a_closed_hub_ends_its_connections_and_refuses_new_ones() {
        let hub = LiveHub::new(LiveConfig::default());
        let conn = hub.connect(Transport::WebSocket).unwrap();
        hub.close();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            conn.queue.poll_next(&mut cx),
            Poll::Ready(Next::Closed)
        ));
        assert!(hub.connect(Transport::Sse).is_err());
    }
}
