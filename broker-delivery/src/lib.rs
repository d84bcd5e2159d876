//! Webhook delivery for broker-core: the [`WebhookNotifier`] (a
//! [`broker_core::Notifier`]) and its settings. It depends on broker-core
//! only; the HTTP API (broker-http) asks the broker, not this crate, about
//! deliveries, and the server (broker-server) wires the two together.
//!
//! Each subscriber is a cursor over its topic's log, served by a worker
//! task that exists only while it has work, with at most
//! [`DeliveryConfig::max_in_flight`] requests at a time. So a slow,
//! hanging or dead endpoint only lags behind, and an idle subscriber costs
//! no task.
//!
//! Where things are: the worker `worker.rs`; one attempt's request and its
//! Standard Webhooks signature `request.rs`, [`signature`]; the circuit
//! breaker `health.rs`; retry schedules and `Retry-After` `retry.rs`; which
//! replica delivers whom `lease.rs`, `assign.rs`; publisher pacing
//! `pace.rs`; where deliveries may go `policy.rs`; Prometheus `metrics.rs`.

mod assign;
mod health;
mod lease;
mod metrics;
mod pace;
mod policy;
mod request;
mod retry;
pub mod signature;
mod worker;

pub use metrics::DeliveryCollector;
pub use policy::DestinationPolicy;
/// The TLS library of [`DeliveryConfig::tls`], re-exported so an embedder
/// builds its `ClientConfig` with the same version.
pub use rustls;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock, Weak,
    },
    time::Duration,
};

use async_trait::async_trait;
use broker_core::{Broker, DeadLetter, Notifier, Publish, Subscriber, WeakBroker};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

use policy::PolicyConnector;

/// Settings of webhook delivery.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Requests in flight per subscriber. Default 8.
    pub max_in_flight: usize,
    /// Time to establish a TCP connection. Default 2 s.
    pub connect_timeout: Duration,
    /// Time for a whole attempt: connect, send, response head and the
    /// capped body read. Default 10 s.
    pub request_timeout: Duration,
    /// The most of a response body that is read; the rest is discarded
    /// with its connection. Default 64 KiB.
    pub max_response_bytes: usize,
    /// How long an idle keep-alive connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Attempts in flight to one host (scheme, host and port) across all
    /// its subscribers, and so connections open to it: many subscribers on
    /// one host share them. As many are kept alive when idle, so that
    /// connections are reused rather than churned. Default 256.
    pub max_connections_per_host: usize,
    /// Which addresses deliveries may connect to (checked on the resolved
    /// addresses at every connect). Default: all but link-local, metadata,
    /// unspecified and multicast addresses.
    pub destination_policy: DestinationPolicy,
    /// The first retry (for subscribers that opted in) waits between half
    /// this and this; each further one twice as long. Default 1 s.
    pub retry_base_delay: Duration,
    /// No retry waits longer than this, whatever the backoff or a
    /// `Retry-After` says. Default 5 min.
    pub retry_max_delay: Duration,
    /// Failed attempts in a row that open a subscriber's circuit; 0 never
    /// opens it. Default 5.
    pub circuit_after: u32,
    /// How long a subscriber's circuit stays open (nothing is attempted
    /// meanwhile; then one probe at a time, each failed probe doubling it,
    /// up to 5 min). Default 30 s.
    pub circuit_open_for: Duration,
    /// A subscriber every attempt of which has failed for this long is
    /// disabled (one answering `410 Gone` at once). Default 5 days.
    pub disable_after: Duration,
    /// TLS settings for `https://` subscribers. Default (`None`): the
    /// webpki root certificates, TLS 1.2 and 1.3.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Publishes are paced (answered later, never refused) while the
    /// process is out of CPU and the subscribers that are delivering are
    /// behind by more than this many messages as a whole, each counting
    /// at most 1,024: see [`WebhookNotifier::pace`]. 0 never paces.
    /// Default 4,096.
    pub pace_after: u64,
    /// The longest a publish is paced. Default 100 ms.
    pub pace_at_most: Duration,
    /// With a store that several replicas share: how long a replica's
    /// lease on a subscriber's deliveries lasts unrenewed (renewed every
    /// fifteenth of it, at most every second). A replica killed outright
    /// has its subscribers taken over by the others about this long
    /// after. Default 15 s.
    pub lease_ttl: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_in_flight: 8,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
            pool_idle_timeout: Duration::from_secs(90),
            max_connections_per_host: 256,
            destination_policy: DestinationPolicy::default(),
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(300),
            disable_after: Duration::from_secs(5 * 86_400),
            circuit_after: 5,
            circuit_open_for: Duration::from_secs(30),
            tls: None,
            pace_after: 4_096,
            pace_at_most: Duration::from_millis(100),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// Delivers each published message to each subscriber's URL with its
/// method and headers, signed per Standard Webhooks, reading it from the
/// topic's log from the subscriber's cursor on. `notify` only wakes the
/// subscribers' workers.
///
/// Cheap to clone; clones share queues, connections and counters. Must be
/// used inside a Tokio runtime (it spawns its workers there).
///
/// # Examples
///
/// ```
/// use broker_core::Broker;
/// use broker_delivery::{DeliveryConfig, WebhookNotifier};
///
/// let notifier = WebhookNotifier::new(DeliveryConfig {
///     max_in_flight: 4,
///     ..DeliveryConfig::default()
/// });
/// let broker = Broker::new(notifier.clone());
/// assert_eq!(notifier.pending(), 0);
/// ```
#[derive(Clone)]
pub struct WebhookNotifier {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    client: Client<HttpsConnector<PolicyConnector>, Full<Bytes>>,
    config: DeliveryConfig,
    /// Messages read from the log and not yet done with (in flight, waiting
    /// for a retry, or about to be sent), across all subscribers.
    pending: AtomicUsize,
    /// Workers running.
    running: AtomicUsize,
    /// Signalled when a worker stops.
    idle: Notify,
    /// The broker whose log the workers read, set by `attach`.
    broker: OnceLock<WeakBroker>,
    /// Per-host attempt slots. Weak, so a host's entry dies with the last
    /// subscriber queue that uses it; dead entries are swept as the map
    /// doubles.
    hosts: Mutex<HashMap<String, Weak<Semaphore>>>,
    metrics: metrics::DeliveryMetrics,
    /// Publishers' pace: what workers report of their backlogs.
    pace: Arc<pace::Pace>,
    /// Which subscribers this replica delivers, when replicas share the
    /// store (set by `attach`); without, every one.
    leases: OnceLock<Arc<lease::Leases>>,
}

impl Shared {
    /// The attempt slots of the host `url` points at.
    fn host_slots(&self, url: &http::Uri) -> Arc<Semaphore> {
        let key = format!(
            "{}://{}",
            url.scheme_str().unwrap_or("http"),
            url.authority().map_or("", |a| a.as_str())
        );
        let mut hosts = self.hosts.lock();
        if let Some(slots) = hosts.get(&key).and_then(Weak::upgrade) {
            return slots;
        }
        if hosts.len() >= 64 && hosts.len().is_power_of_two() {
            hosts.retain(|_, slots| slots.strong_count() > 0);
        }
        let slots = Arc::new(Semaphore::new(self.config.max_connections_per_host.max(1)));
        hosts.insert(key, Arc::downgrade(&slots));
        slots
    }

    /// Marks `n` messages as done with (sent, failed or dropped).
    fn finished(&self, n: usize) {
        if n > 0 {
            self.pending.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// A worker stopped.
    fn stopped(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.idle.notify_waiters();
    }

    fn broker(&self) -> Option<Broker> {
        self.broker.get()?.upgrade()
    }
}

impl WebhookNotifier {
    /// A notifier with its own connection pool.
    pub fn new(mut config: DeliveryConfig) -> Self {
        config.max_in_flight = config.max_in_flight.max(1);
        let tls = config.tls.clone().unwrap_or_else(default_tls);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(PolicyConnector {
                policy: config.destination_policy,
                connect_timeout: config.connect_timeout,
            });
        let client = Client::builder(TokioExecutor::new())
            // Each queue carries its subscriber's Host header, built once.
            .set_host(false)
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.max_connections_per_host)
            .build(connector);
        WebhookNotifier {
            shared: Arc::new(Shared {
                pace: Arc::new(pace::Pace::new(config.pace_after, config.pace_at_most)),
                client,
                config,
                pending: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                idle: Notify::new(),
                broker: OnceLock::new(),
                hosts: Mutex::default(),
                metrics: metrics::DeliveryMetrics::default(),
                leases: OnceLock::new(),
            }),
        }
    }

    /// The deliveries' metrics, to register in a `prometheus_client`
    /// registry (the HTTP API's `Metrics::with_collector`).
    pub fn collector(&self) -> DeliveryCollector {
        DeliveryCollector {
            shared: self.shared.clone(),
        }
    }

    /// Messages read from the log and not yet done with (in flight,
    /// waiting for a retry, or about to be sent), across all subscribers.
    /// What subscribers lag behind in the log beyond that is not counted.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Waits while publishers should be paced: the process is out of CPU
    /// (it used 85 % of its cores over the last 100 ms) and the
    /// subscribers that are delivering (one delivered within the last
    /// second, circuit closed) are behind as a whole by more than
    /// [`DeliveryConfig::pace_after`], each counting at most 1,024
    /// messages; at most [`DeliveryConfig::pace_at_most`]. Publishing
    /// faster than the broker can deliver only grows the log: this gives
    /// the CPU back to the deliveries. A slow endpoint uses no CPU and one
    /// subscriber alone never counts enough, so neither paces anyone.
    /// Returns whether it waited. Every publish waits for it (through
    /// [`Notifier::pace`]) before [`Broker::publish`] returns.
    pub async fn pace(&self) -> bool {
        self.shared.pace.wait().await
    }

    /// Publishes paced so far.
    pub fn paced(&self) -> u64 {
        self.shared.pace.paced()
    }

    /// The backlog the pace goes by: the messages the subscribers that are
    /// delivering are behind, each counting at most 1,024.
    pub fn backlog(&self) -> u64 {
        self.shared.pace.backlog()
    }

    /// Subscribers whose worker runs right now (catching up, delivering,
    /// or waiting for a retry).
    pub fn busy(&self) -> usize {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Waits until every worker has caught up and stopped or `deadline`
    /// has passed, and returns how many messages were still pending. Call
    /// it after [`Broker::close`](broker_core::Broker::close) so no new
    /// ones arrive. What is left stays in the log: with a durable store,
    /// delivery resumes there after a restart.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let all_done = async {
            loop {
                let idle = self.shared.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.busy() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(deadline, all_done).await;
        self.pending()
    }

    /// With replicas sharing the store: stops delivering here at once
    /// (attempts in flight are abandoned, to be made again by the new
    /// owner), waits up to `deadline` for the workers to commit their
    /// cursors, gives every lease back and leaves the live replicas, so
    /// the others take this replica's share over at their next tick (about
    /// a second). Returns how many subscribers were handed back; `Ok(0)`
    /// without a shared store. Call it after
    /// [`Broker::close`](broker_core::Broker::close), instead of
    /// [`drain`](Self::drain).
    ///
    /// # Errors
    ///
    /// [`broker_core::Error::Storage`] when the store could not take the
    /// release: the leases then expire after
    /// [`DeliveryConfig::lease_ttl`].
    pub async fn leave(&self, deadline: Duration) -> Result<usize, broker_core::Error> {
        match self.shared.leases.get() {
            Some(leases) => {
                lease::leave(leases, &self.shared, self.shared.broker(), deadline).await
            }
            None => Ok(0),
        }
    }

    /// Subscribers whose deliveries this replica owns now (with replicas
    /// sharing the store); `None` without a shared store.
    pub fn owned(&self) -> Option<usize> {
        self.shared.leases.get().map(|l| l.count())
    }
}

/// TLS 1.2 and 1.3 with the webpki root certificates, on the ring provider.
fn default_tls() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("config", &self.shared.config)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, publish: Publish) {
        // The message is in the log: each worker reads it from there.
        for subscriber in publish.subscribers.iter() {
            worker::wake(subscriber, &self.shared);
        }
    }

    fn attach(&self, broker: &Broker) {
        if self.shared.broker.set(broker.downgrade()).is_err() {
            tracing::error!("a WebhookNotifier serves one broker; this one is ignored");
            return;
        }
        if let Some(cluster) = broker.cluster() {
            // Replicas share the work: workers start as leases are taken.
            let leases = Arc::new(lease::Leases::new(
                cluster.clone(),
                self.shared.config.lease_ttl,
            ));
            let _ = self.shared.leases.set(leases.clone());
            tokio::spawn(lease::keep(leases, self.shared.clone(), broker.downgrade()));
        }
        // Subscribers whose cursor is behind the log (after a restart)
        // resume at once; the others' workers stop as soon as they see it.
        for topic in broker.topics() {
            if let Ok(detail) = broker.topic(topic.name.as_str()) {
                for subscriber in &detail.subscribers {
                    worker::wake(subscriber, &self.shared);
                }
            }
        }
    }

    fn changed(&self, subscriber: &Arc<Subscriber>) {
        if subscriber.is_active() && subscriber.is_enabled() {
            // Enabled (or new): a person's doing, so the circuit closes.
            worker::enabled(subscriber, &self.shared);
        } else {
            worker::stop(subscriber, &self.shared);
        }
    }

    fn redrive(&self, subscriber: &Arc<Subscriber>, dead: Vec<DeadLetter>) {
        worker::redrive(subscriber, &self.shared, dead);
    }

    fn rewind(&self, subscriber: &Arc<Subscriber>, from: u64) {
        worker::rewind(subscriber, &self.shared, from);
    }

    async fn pace(&self) -> bool {
        self.shared.pace.wait().await
    }

    fn circuit(&self, subscriber: &Subscriber) -> broker_core::Circuit {
        worker::circuit(subscriber)
    }

    fn owned(&self) -> Option<usize> {
        WebhookNotifier::owned(self)
    }

    fn appended_elsewhere(
        &self,
        _: &broker_core::TopicName,
        subscribers: &broker_core::Subscribers,
    ) {
        // Only the workers this replica owns start (`wake` checks).
        for subscriber in subscribers.iter() {
            worker::wake(subscriber, &self.shared);
        }
    }
}
