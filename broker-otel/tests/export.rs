//! Spans exported to a real OTLP/HTTP receiver on 127.0.0.1:0, decoded
//! with the protocol's own types: the publisher's trace, one span for
//! the publish and one per delivery attempt; and a collector that never
//! answers slows nothing.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use broker_core::{Broker, Draft, Endpoint, Limits, Spans as _, TraceContext};
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_otel::{OtlpConfig, OtlpExporter};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, trace::v1::Span,
};
use prost::Message as _;
use tokio::{net::TcpListener, sync::mpsc};

const PATIENCE: Duration = Duration::from_secs(10);
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An HTTP server on 127.0.0.1:0 answering each request with the next
/// status of `statuses` (200 once they are used up), sending what it
/// got (path, headers, body) down the channel.
async fn server(
    statuses: Vec<u16>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(String, http::HeaderMap, Bytes)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let statuses = Arc::new(parking_lot::Mutex::new(statuses.into_iter()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, statuses) = (tx.clone(), statuses.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (tx, statuses) = (tx.clone(), statuses.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let _ = tx.send((parts.uri.path().to_owned(), parts.headers, body));
                        let status = statuses.lock().next().unwrap_or(200);
                        let mut res = Response::new(Full::new(Bytes::new()));
                        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("in time")
        .expect("running")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A broker whose retries are quick, reporting spans to `exporter`.
fn broker(exporter: &OtlpExporter) -> (Broker, WebhookNotifier) {
    let notifier = WebhookNotifier::new(DeliveryConfig {
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(20),
        circuit_after: 0,
        ..DeliveryConfig::default()
    });
    let broker = Broker::new(notifier.clone()).with_spans(exporter.clone());
    (broker, notifier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_and_each_attempt_are_spans_of_the_publisher_s_trace() {
    let (collector, mut exported) = server(vec![]).await;
    let (hook, mut delivered) = server(vec![500, 503]).await;
    let exporter = OtlpExporter::start(OtlpConfig {
        linger: Duration::from_millis(50),
        ..OtlpConfig::new(format!("http://{collector}/"))
    })
    .unwrap();
    let (broker, notifier) = broker(&exporter);
    let limits = Limits::default();
    let endpoint = Endpoint::new(&format!("http://{hook}/"), None, [("x-k", "v")], &limits)
        .unwrap()
        .with_max_attempts(3, &limits)
        .unwrap();
    let sub = broker
        .register_subscriber("t", endpoint)
        .await
        .unwrap()
        .item;
    let publisher = broker.register_publisher("t", "p").await.unwrap().item;
    let draft =
        Draft::new(None, Bytes::from_static(b"m")).with_trace(TraceContext::parse(PARENT, None));
    let receipt = broker
        .publish_draft("t", publisher.token().expose(), draft)
        .await
        .unwrap();

    let mut attempt_spans = Vec::new();
    for _ in 0..3 {
        let (_, headers, _) = next(&mut delivered).await;
        let tp = headers["traceparent"].to_str().unwrap().to_owned();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        attempt_spans.push(tp.split('-').nth(2).unwrap().to_owned());
    }
    assert_eq!(notifier.drain(PATIENCE).await, 0);

    // Collect what the collector got until the four spans are there.
    let mut spans: Vec<Span> = Vec::new();
    while spans.len() < 4 {
        let (path, headers, body) = next(&mut exported).await;
        assert_eq!(path, "/v1/traces");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .unwrap()
                .attributes
                .iter()
                .any(|kv| kv.key == "service.name");
            assert!(service);
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    assert_eq!(spans.len(), 4, "{spans:?}");
    for s in &spans {
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    let publish = spans
        .iter()
        .find(|s| s.name == "publish")
        .expect("a publish span");
    assert_eq!(hex(&publish.parent_span_id), "00f067aa0ba902b7");
    let message_id = publish
        .attributes
        .iter()
        .find(|kv| kv.key == "messaging.message.id")
        .unwrap();
    assert!(format!("{:?}", message_id.value).contains(&receipt.id));
    let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.name == "deliver").collect();
    assert_eq!(attempts.len(), 3, "one span per attempt");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    for (span, sent) in attempts.iter().zip(&attempt_spans) {
        assert_eq!(&hex(&span.parent_span_id), &hex(&publish.span_id));
        assert_eq!(&hex(&span.span_id), sent, "the span the attempt sent");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        let has = |key: &str| span.attributes.iter().any(|kv| kv.key == key);
        assert!(has("broker.subscriber.id") && has("http.response.status_code"));
    }
    let codes: Vec<i32> = attempts
        .iter()
        .map(|s| s.status.as_ref().unwrap().code)
        .collect();
    // 2: error, 1: ok.
    assert_eq!(codes, [2, 2, 1]);
    assert!(sub.id().starts_with("sub_"));
    // Counted once the collector's answer is back (awaited, bounded).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while exporter.exported() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            exporter.exported()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(exporter.dropped(), 0);
}

/// A collector that accepts and never answers: publishing and delivery
/// go on, the queue stays bounded, and what did not fit is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_slows_nothing() {
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hanging.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hanging.accept().await {
            held.push(stream); // Never read, never answered.
        }
    });
    let (hook, mut delivered) = server(vec![]).await;
    let exporter = OtlpExporter::start(OtlpConfig {
        queue: 16,
        batch: 4,
        linger: Duration::from_millis(10),
        timeout: Duration::from_secs(30),
        ..OtlpConfig::new(format!("http://{addr}"))
    })
    .unwrap();
    let (broker, notifier) = broker(&exporter);
    let limits = Limits::default();
    let endpoint =
        Endpoint::new(&format!("http://{hook}/"), None, [("x-k", "v")], &limits).unwrap();
    broker.register_subscriber("t", endpoint).await.unwrap();
    let publisher = broker.register_publisher("t", "p").await.unwrap().item;
    const N: usize = 500;
    for _ in 0..N {
        broker
            .publish("t", publisher.token().expose(), None, "m".into())
            .await
            .unwrap();
    }
    for _ in 0..N {
        next(&mut delivered).await;
    }
    assert_eq!(notifier.drain(PATIENCE).await, 0);
    // 1,000 spans, a queue of 16 and one batch of 4 stuck in an export:
    // nearly all dropped, none exported, none waiting beyond the queue.
    assert_eq!(exporter.exported(), 0);
    assert!(
        exporter.dropped() >= 2 * N as u64 - 16 - 4,
        "{}",
        exporter.dropped()
    );
    // And the sink takes spans still, without waiting.
    exporter.record(broker_core::SpanRecord {
        trace_id: [1; 16],
        span_id: [1; 8],
        parent_span_id: [0; 8],
        name: "x",
        kind: broker_core::SpanKind::Producer,
        start: std::time::SystemTime::now(),
        end: std::time::SystemTime::now(),
        ok: true,
        attributes: Vec::new(),
    });
}
