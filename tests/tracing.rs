//! Trace context (issue 22): a publish's W3C `traceparent` and
//! `tracestate` are kept with the message, and each delivery attempt
//! sends a `traceparent` of the same trace with a span of its own.

mod common;

use std::{collections::HashSet, time::Duration};

use broker_delivery::DeliveryConfig;
use broker_http::ApiConfig;
use common::{Behaviour, Sink, TestServer};
use serde_json::json;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn publish_traced(s: &TestServer, token: &str, headers: &[(&str, &str)]) -> common::Reply {
    let auth = format!("Bearer {token}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    s.call("POST", "/v1/topics/t/messages", &all, "traced")
        .await
}

/// `(trace id, span id, flags)` of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<_> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

#[tokio::test]
async fn every_attempt_is_a_span_of_the_publisher_s_trace() {
    let s = TestServer::with_config(
        ApiConfig::default(),
        DeliveryConfig {
            retry_base_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(20),
            circuit_after: 0,
            ..DeliveryConfig::default()
        },
    )
    .await;
    let token = s.publisher("t", "p").await;
    let mut flaky = Sink::start(Behaviour::script(&[(500, None), (503, None)])).await;
    s.subscriber(
        "t",
        json!({"url": flaky.url("/"), "retry": {"max_attempts": 3},
               "headers": {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}}),
    )
    .await;
    let r = publish_traced(
        &s,
        &token,
        &[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let mut spans = HashSet::new();
    for _ in 0..3 {
        let got = flaky.next().await;
        let (trace, span, flags) = parts(got.headers["traceparent"].to_str().unwrap());
        assert_eq!(
            trace, TRACE,
            "the publisher's trace, not the subscriber's header"
        );
        assert_eq!(flags, "01");
        assert_ne!(span, "00f067aa0ba902b7", "a span of its own");
        assert!(spans.insert(span), "a new span per attempt");
        assert_eq!(got.headers["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(got.headers.get_all("traceparent").iter().count(), 1);
    }
}

#[tokio::test]
async fn without_a_valid_traceparent_no_trace_is_sent() {
    let s = TestServer::start().await;
    let token = s.publisher("t", "p").await;
    let mut sink = Sink::ok().await;
    s.subscriber("t", json!({"url": sink.url("/")})).await;
    for headers in [
        &[][..],
        &[("traceparent", "00-not-a-trace-01")][..],
        &[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )][..],
    ] {
        let r = publish_traced(&s, &token, headers).await;
        assert_eq!(r.status, 202, "an invalid one is ignored: {:?}", r.body);
        let got = sink.next().await;
        assert!(got.headers.get("traceparent").is_none(), "{headers:?}");
    }
}

/// A batch's trace context goes with each of its messages, each with a
/// publish span of its own.
#[tokio::test]
async fn a_batch_joins_the_trace_of_its_request() {
    let s = TestServer::start().await;
    let token = s.publisher("t", "p").await;
    let mut sink = Sink::ok().await;
    s.subscriber("t", json!({"url": sink.url("/")})).await;
    let auth = format!("Bearer {token}");
    let r = s
        .call(
            "POST",
            "/v1/topics/t/messages/batch",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("traceparent", PARENT),
            ],
            r#"{"messages":[{"payload":1},{"payload":2}]}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let mut spans = HashSet::new();
    for _ in 0..2 {
        let got = sink.next().await;
        let (trace, span, _) = parts(got.headers["traceparent"].to_str().unwrap());
        assert_eq!(trace, TRACE);
        spans.insert(span);
    }
    assert_eq!(spans.len(), 2);
}
