//! OpenTelemetry export for broker-core: the broker's spans (a publish,
//! each delivery attempt: [`broker_core::SpanRecord`]) sent to a
//! collector over OTLP/HTTP (`POST <endpoint>/v1/traces`, protobuf).
//!
//! The span model and the exporter are the OpenTelemetry crates'
//! (`opentelemetry_sdk::trace::SpanData`, `opentelemetry-otlp`'s
//! `SpanExporter`), over this crate's own small hyper client. What this
//! crate adds is the queue in front of them, so that an unreachable or
//! slow collector never slows or fails publishing or delivery:
//! - recording a span (`Spans::record`) never waits: it puts the span in a bounded
//!   queue ([`OtlpConfig::queue`], 8,192 spans) or, when that is full,
//!   drops it and counts it;
//! - one task takes the queue a batch at a time ([`OtlpConfig::batch`],
//!   512 spans, or what came within a second) and exports it, each export
//!   bounded by [`OtlpConfig::timeout`] (5 s); a batch that fails or
//!   times out is dropped and counted;
//! - the counts are in `/metrics` ([`OtlpExporter::collector`]):
//!   `broker_spans_exported_total` and `broker_spans_dropped_total`.
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use broker_core::Broker;
//! use broker_otel::{OtlpConfig, OtlpExporter};
//!
//! let exporter = OtlpExporter::start(OtlpConfig::new("http://127.0.0.1:4318"))?;
//! let notifier = broker_delivery::WebhookNotifier::new(Default::default());
//! let broker = Broker::new(notifier).with_spans(exporter.clone());
//! # Ok(()) }
//! ```

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
};
use tokio::sync::mpsc;

/// How the exporter sends.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The collector's base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// Spans waiting at most; past it they are dropped. Default 8,192.
    pub queue: usize,
    /// Spans per export at most. Default 512.
    pub batch: usize,
    /// How long a batch waits to fill. Default 1 s.
    pub linger: Duration,
    /// How long an export may take. Default 5 s.
    pub timeout: Duration,
    /// The `service.name` of the spans. Default `webhook-broker`.
    pub service_name: String,
}

impl OtlpConfig {
    /// The defaults, sending to `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            queue: 8_192,
            batch: 512,
            linger: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            service_name: "webhook-broker".to_owned(),
        }
    }
}

/// The exporter: a [`broker_core::Spans`] sink. Cheap to clone; clones
/// share the queue and counts. Must be started within a Tokio runtime.
#[derive(Clone)]
pub struct OtlpExporter {
    queue: mpsc::Sender<broker_core::SpanRecord>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    exported: AtomicU64,
    dropped: AtomicU64,
}

/// Why the exporter could not start.
#[derive(Debug)]
pub struct OtlpError(String);

impl std::fmt::Display for OtlpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the OTLP exporter cannot start: {}", self.0)
    }
}

impl std::error::Error for OtlpError {}

impl OtlpExporter {
    /// Starts the exporting task.
    ///
    /// # Errors
    ///
    /// An endpoint that is not an `http://` or `https://` URL.
    pub fn start(config: OtlpConfig) -> Result<Self, OtlpError> {
        let base = config.endpoint.trim_end_matches('/');
        let url = format!("{base}/v1/traces");
        let uri: http::Uri = url
            .parse()
            .map_err(|e| OtlpError(format!("{url:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(OtlpError(format!(
                "{url:?}: the endpoint must be an http:// URL with a host"
            )));
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Hyper::new(config.timeout))
            .with_endpoint(url)
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| OtlpError(e.to_string()))?;
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .build(),
        );
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(exporter, rx, counts.clone(), config));
        Ok(OtlpExporter { queue, counts })
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.counts.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped so far: the queue was full, or their export failed.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Its counts, to register in a `prometheus_client` registry (the
    /// HTTP API's `Metrics::with_collector`).
    pub fn collector(&self) -> SpanCollector {
        SpanCollector {
            counts: self.counts.clone(),
        }
    }
}

impl broker_core::Spans for OtlpExporter {
    fn record(&self, span: broker_core::SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The exporting task: a batch at a time, each export bounded in time.
async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<broker_core::SpanRecord>,
    counts: Arc<Counts>,
    config: OtlpConfig,
) {
    let scope = InstrumentationScope::builder("webhook-broker")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batch = Vec::with_capacity(config.batch);
    loop {
        let Some(first) = rx.recv().await else {
            return; // Every exporter handle is gone.
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let data: Vec<SpanData> = batch.drain(..).map(|s| span_data(s, &scope)).collect();
        match tokio::time::timeout(config.timeout, exporter.export(data)).await {
            Ok(Ok(())) => {
                counts.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counts.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(spans = n, error = %e, "exporting spans failed: dropped");
            }
            Err(_) => {
                counts.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(spans = n, "exporting spans timed out: dropped");
            }
        }
    }
}

/// A broker span as the SDK's span data.
fn span_data(span: broker_core::SpanRecord, scope: &InstrumentationScope) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from_bytes(span.parent_span_id),
        parent_span_is_remote: false,
        span_kind: match span.kind {
            broker_core::SpanKind::Producer => SpanKind::Producer,
            broker_core::SpanKind::Client => SpanKind::Client,
        },
        name: Cow::Borrowed(span.name),
        start_time: span.start,
        end_time: span.end,
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| match value {
                broker_core::SpanValue::Str(s) => KeyValue::new(key, s),
                broker_core::SpanValue::Int(i) => KeyValue::new(key, i),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if span.ok {
            Status::Ok
        } else {
            Status::error("the attempt failed")
        },
        instrumentation_scope: scope.clone(),
    }
}

/// The exporter's HTTP client: plain HTTP/1.1, each request and its
/// (at most 64 KiB) answer bounded by the export timeout.
#[derive(Debug, Clone)]
struct Hyper {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Hyper {
    fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Hyper {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Hyper {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let send = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, 64 * 1024).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| "the collector did not answer in time")?
    }
}

/// The exporter's counts as Prometheus metrics.
#[derive(Debug)]
pub struct SpanCollector {
    counts: Arc<Counts>,
}

impl Collector for SpanCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "broker_spans_exported",
                "Spans exported to the OTLP collector.",
                &self.counts.exported,
            ),
            (
                "broker_spans_dropped",
                "Spans dropped: the export queue was full, or the export failed or timed out.",
                &self.counts.dropped,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
