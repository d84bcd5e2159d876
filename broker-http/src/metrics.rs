//! Prometheus metrics, through `prometheus-client`: request and publish
//! counters kept as they happen, and the broker's registry and per-topic
//! delivery counters read at each scrape. What the deliveries themselves
//! measure (latency, in flight, queue depth, circuits) comes from their
//! notifier as one more collector ([`Metrics::with_collector`]).

use std::fmt;

use broker_core::Broker;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        MetricType,
    },
    registry::Registry,
};

use crate::LiveHub;

/// `route` and `status` of a request: static, so counting one allocates
/// nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

/// `result` of a publish: `accepted` or the error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    result: &'static str,
}

/// The metrics of one broker, served at `GET /metrics` when set in
/// [`ApiConfig::metrics`](crate::ApiConfig::metrics).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use broker_core::Broker;
/// use broker_delivery::{DeliveryConfig, WebhookNotifier};
/// use broker_http::{Api, ApiConfig, Metrics};
///
/// let notifier = WebhookNotifier::new(DeliveryConfig::default());
/// let broker = Broker::new(notifier.clone());
/// let metrics = Arc::new(Metrics::new(&broker).with_collector(notifier.collector()));
/// let api = Api::new(broker, ApiConfig { metrics: Some(metrics.clone()), ..ApiConfig::default() });
/// assert!(metrics.render().contains("broker_topics"));
/// ```
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    publishes: Family<PublishLabels, Counter>,
}

impl Metrics {
    /// Metrics over `broker`.
    pub fn new(broker: &Broker) -> Self {
        let mut registry = Registry::with_prefix("broker");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        let publishes = Family::<PublishLabels, Counter>::default();
        registry.register(
            "publishes",
            "Publish calls, by result: accepted, or the error code they were refused with",
            publishes.clone(),
        );
        registry.register_collector(Box::new(State {
            broker: broker.clone(),
        }));
        Metrics {
            registry,
            http_requests,
            publishes,
        }
    }

    /// Adds a collector read at each scrape: the deliveries' own metrics
    /// (`broker_delivery::WebhookNotifier::collector`), or any other. Its
    /// names get the `broker_` prefix.
    pub fn with_collector(mut self, collector: impl Collector + 'static) -> Self {
        self.registry.register_collector(Box::new(collector));
        self
    }

    /// Adds the live hub's connections, per-topic listeners and message
    /// counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use broker_core::Broker;
    /// use broker_http::{LiveConfig, LiveHub, Metrics};
    ///
    /// let live = LiveHub::new(LiveConfig::default());
    /// let broker = Broker::new(live.clone());
    /// let metrics = Metrics::new(&broker).with_live(&live);
    /// assert!(metrics.render().contains("broker_live_connections"));
    /// ```
    pub fn with_live(mut self, hub: &LiveHub) -> Self {
        self.registry
            .register_collector(Box::new(LiveState { hub: hub.clone() }));
        self
    }

    /// Counts one answered request.
    pub(crate) fn http_request(&self, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// Counts one publish call (HTTP or WebSocket) by its outcome:
    /// `accepted` or the error code.
    pub(crate) fn publish<T>(&self, outcome: &Result<T, crate::ApiError>) {
        let result = match outcome {
            Ok(_) => "accepted",
            Err(e) => e.code(),
        };
        self.publishes
            .get_or_create(&PublishLabels { result })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Reads the broker's state at each scrape: no bookkeeping on the hot path.
#[derive(Debug)]
struct State {
    broker: Broker,
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let topics = self.broker.topics();
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| {
            let g = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(metric)
        };
        gauge(
            &mut encoder,
            "topics",
            "Registered topics",
            topics.len() as i64,
        )?;
        let publishers: usize = topics.iter().map(|t| t.publishers).sum();
        gauge(
            &mut encoder,
            "publishers",
            "Registered publishers",
            publishers as i64,
        )?;
        let subscribers: usize = topics.iter().map(|t| t.subscribers).sum();
        gauge(
            &mut encoder,
            "subscribers",
            "Registered subscribers",
            subscribers as i64,
        )?;

        let mut events = encoder.encode_descriptor(
            "operational_events",
            "Operational events published on broker.events, by type",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in self.broker.events_published() {
            ConstCounter::new(n).encode(events.encode_family(&[("type", kind)])?)?;
        }
        let attempts = ConstCounter::new(self.broker.attempts_recorded());
        let metric = encoder.encode_descriptor(
            "attempts_recorded",
            "Delivery attempts recorded in the attempt log and endpoint stats",
            None,
            attempts.metric_type(),
        )?;
        attempts.encode(metric)?;

        let mut published = encoder.encode_descriptor(
            "messages_published",
            "Messages published, by topic (reset when a topic is removed)",
            None,
            MetricType::Counter,
        )?;
        for t in &topics {
            let labels = [("topic", t.name.as_str())];
            ConstCounter::new(t.published).encode(published.encode_family(&labels)?)?;
        }
        let mut lag = encoder.encode_descriptor(
            "delivery_lag_messages",
            "Messages the topic's subscribers have yet to be done with, summed, by topic",
            None,
            MetricType::Gauge,
        )?;
        for t in &topics {
            let labels = [("topic", t.name.as_str())];
            ConstGauge::new(t.lag as i64).encode(lag.encode_family(&labels)?)?;
        }
        let mut disabled = encoder.encode_descriptor(
            "subscribers_disabled",
            "Disabled subscribers (410 Gone, or failing for --disable-after), by topic",
            None,
            MetricType::Gauge,
        )?;
        for t in &topics {
            let labels = [("topic", t.name.as_str())];
            ConstGauge::new(t.disabled as i64).encode(disabled.encode_family(&labels)?)?;
        }
        let mut deliveries = encoder.encode_descriptor(
            "deliveries",
            "Delivery outcomes, by topic: delivered, failed, dropped (queue full, deregistered), \
             refused (destination policy), retried (extra attempts), dead_lettered (given up on, kept), \
             dead_letter_evicted (an old dead letter dropped to keep the list bounded)",
            None,
            MetricType::Counter,
        )?;
        for t in &topics {
            let d = t.deliveries;
            for (outcome, value) in [
                ("delivered", d.delivered),
                ("failed", d.failed),
                ("dropped", d.dropped),
                ("refused", d.refused),
                ("retried", d.retried),
                ("dead_lettered", d.dead_lettered),
                ("dead_letter_evicted", d.dead_letters_evicted),
                ("filtered", d.filtered),
            ] {
                let labels = [("topic", t.name.as_str()), ("outcome", outcome)];
                ConstCounter::new(value).encode(deliveries.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Reads the live hub at each scrape.
#[derive(Debug)]
struct LiveState {
    hub: LiveHub,
}

impl Collector for LiveState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.hub.stats();
        let mut connections = encoder.encode_descriptor(
            "live_connections",
            "Open live connections, by transport",
            None,
            MetricType::Gauge,
        )?;
        for (transport, n) in [("sse", stats.sse), ("websocket", stats.websocket)] {
            let labels = [("transport", transport)];
            ConstGauge::new(n as i64).encode(connections.encode_family(&labels)?)?;
        }
        let mut listening = encoder.encode_descriptor(
            "live_listeners",
            "Live connections listening, by topic",
            None,
            MetricType::Gauge,
        )?;
        for (topic, n) in self.hub.listening_by_topic() {
            let labels = [("topic", topic.as_str())];
            ConstGauge::new(n as i64).encode(listening.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "live_messages_sent",
                "Messages written to live connections (replays included)",
                stats.sent,
            ),
            (
                "live_messages_dropped",
                "Messages a live connection's full queue lost",
                stats.dropped,
            ),
            (
                "live_slow_consumer_disconnects",
                "Live connections whose queue overflowed: told SLOW_CONSUMER and closed \
                 (with --live-overflow disconnect)",
                stats.slow_consumers,
            ),
        ] {
            let c = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(metric)?;
        }
        Ok(())
    }
}
