//! What the deliveries measure, for Prometheus (`prometheus-client`):
//! attempt latency and attempts in flight kept as they happen; the queue
//! depth, leases and open circuits read at each scrape. The HTTP API's
//! `/metrics` adds it as one more collector
//! ([`WebhookNotifier::collector`](crate::WebhookNotifier::collector)).

use std::{
    fmt,
    sync::{atomic::Ordering, Arc},
};

use broker_core::Circuit;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
};

use crate::Shared;

/// What the notifier measures per attempt. Cheap to clone: the metrics are
/// shared.
#[derive(Clone, Debug)]
pub(crate) struct DeliveryMetrics {
    pub(crate) latency: Histogram,
    pub(crate) in_flight: Gauge,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics {
            // 0.5 ms to ~16 s.
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            in_flight: Gauge::default(),
        }
    }
}

/// The deliveries' metrics as a [`Collector`]: register it in a
/// `prometheus_client` registry (one with the `broker` prefix gives
/// `broker_delivery_duration_seconds`, `broker_deliveries_in_flight`,
/// `broker_delivery_queue_depth`, `broker_delivery_leases` and
/// `broker_circuits_open`).
pub struct DeliveryCollector {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for DeliveryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryCollector").finish_non_exhaustive()
    }
}

impl Collector for DeliveryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let metrics = &self.shared.metrics;
        let latency = encoder.encode_descriptor(
            "delivery_duration_seconds",
            "Time of one delivery attempt, from connect to the end of the capped response read",
            None,
            metrics.latency.metric_type(),
        )?;
        metrics.latency.encode(latency)?;
        let in_flight = encoder.encode_descriptor(
            "deliveries_in_flight",
            "Delivery attempts in flight",
            None,
            metrics.in_flight.metric_type(),
        )?;
        metrics.in_flight.encode(in_flight)?;

        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| {
            let g = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(metric)
        };
        let in_flight = metrics.in_flight.get().max(0) as usize;
        let queued = self
            .shared
            .pending
            .load(Ordering::Acquire)
            .saturating_sub(in_flight);
        gauge(
            &mut encoder,
            "delivery_queue_depth",
            "Messages read from the log for delivery and not in flight (waiting for a slot or a retry), across all subscribers",
            queued as i64,
        )?;
        if let Some(leases) = self.shared.leases.get() {
            gauge(
                &mut encoder,
                "delivery_leases",
                "Subscribers whose deliveries this replica holds the lease of (replicas sharing a Redis); the replicas' values add up to the subscribers being delivered",
                leases.count() as i64,
            )?;
        }
        let Some(broker) = self.shared.broker() else {
            return Ok(());
        };
        let mut open = encoder.encode_descriptor(
            "circuits_open",
            "Subscribers whose circuit is open or half open, by topic",
            None,
            MetricType::Gauge,
        )?;
        for t in broker.topics() {
            let n = broker.topic(t.name.as_str()).map_or(0, |detail| {
                detail
                    .subscribers
                    .iter()
                    .filter(|s| crate::worker::circuit(s) != Circuit::Closed)
                    .count()
            });
            let labels = [("topic", t.name.as_str())];
            ConstGauge::new(n as i64).encode(open.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
