//! Operating the broker: Prometheus metrics that follow what happens,
//! readiness, and what an operator sees.

mod common;

use broker_delivery::DeliveryConfig;
use broker_http::ApiConfig;
use common::{dead_port, Sink, TestServer};
use serde_json::json;

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_follow_deliveries_and_publishes() {
    let s = TestServer::start().await;
    let mut live = Sink::ok().await;
    let dead = format!("http://{}/", dead_port().await);
    let token = s.publisher("orders", "p").await;
    s.subscriber("orders", json!({"url": live.url("/")})).await;
    s.subscriber("orders", json!({"url": dead})).await;

    let before = s.get("/metrics").await;
    assert_eq!(before.status, 200);
    let text = String::from_utf8_lossy(&before.body).into_owned();
    assert!(before.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert_eq!(sample(&text, "broker_topics"), Some(1.0));
    assert_eq!(sample(&text, "broker_publishers"), Some(1.0));
    assert_eq!(sample(&text, "broker_subscribers"), Some(2.0));
    assert_eq!(
        sample(
            &text,
            r#"broker_deliveries_total{topic="orders",outcome="delivered"}"#
        ),
        Some(0.0)
    );

    for _ in 0..3 {
        assert_eq!(
            s.publish("orders", &token, "text/plain", "m").await.status,
            202
        );
    }
    assert_eq!(
        s.publish("orders", "nope", "text/plain", "m").await.status,
        401
    );
    for _ in 0..3 {
        live.next().await;
    }
    s.settle().await;

    let text = String::from_utf8_lossy(&s.get("/metrics").await.body).into_owned();
    let d = |outcome: &str| {
        sample(
            &text,
            &format!(r#"broker_deliveries_total{{topic="orders",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(d("delivered"), Some(3.0), "{text}");
    assert_eq!(d("failed"), Some(3.0), "{text}");
    assert_eq!(d("dropped"), Some(0.0));
    assert_eq!(
        sample(&text, r#"broker_messages_published_total{topic="orders"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"broker_publishes_total{result="accepted"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"broker_publishes_total{result="unauthorized"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "broker_delivery_duration_seconds_count"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(sample(&text, "broker_deliveries_in_flight"), Some(0.0));
    assert_eq!(sample(&text, "broker_delivery_queue_depth"), Some(0.0));
    assert_eq!(d("dead_lettered"), Some(3.0), "{text}");
    // Caught up: no lag; nothing disabled, no circuit open (3 failures).
    let topic = |name: &str| sample(&text, &format!(r#"{name}{{topic="orders"}}"#));
    assert_eq!(topic("broker_delivery_lag_messages"), Some(0.0), "{text}");
    assert_eq!(topic("broker_subscribers_disabled"), Some(0.0), "{text}");
    assert_eq!(topic("broker_circuits_open"), Some(0.0), "{text}");
    assert!(
        sample(
            &text,
            r#"broker_http_requests_total{route="messages",status="202"}"#
        ) == Some(3.0),
        "{text}"
    );
    // No secret reaches the exposition.
    assert!(!text.contains(&token));
}

#[tokio::test]
async fn metrics_are_behind_the_admin_token() {
    let api = ApiConfig {
        admin_token: Some("adm".into()),
        ..ApiConfig::default()
    };
    let s = TestServer::with_config(api, DeliveryConfig::default()).await;
    assert_eq!(s.get("/metrics").await.error_code(401), "unauthorized");
    let r = s
        .call("GET", "/metrics", &[("authorization", "Bearer adm")], "")
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_openapi_document_is_served_and_covers_every_route() {
    let s = TestServer::start().await;
    let r = s.get("/v1/openapi.json").await;
    assert_eq!(r.status, 200);
    let served = r.json();
    let file: serde_json::Value =
        serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
    assert_eq!(served, file);
    assert_eq!(served["openapi"], "3.1.0");
    let paths = served["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/healthz", &["get"][..]),
        ("/v1/health", &["get"]),
        ("/v1/stats", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/v1/openapi.json", &["get"]),
        ("/v1/topics", &["get", "post"]),
        ("/v1/topics/{topic}", &["get", "delete"]),
        ("/v1/topics/{topic}/publishers", &["post"]),
        ("/v1/topics/{topic}/publishers/{id}", &["delete"]),
        ("/v1/topics/{topic}/subscribers", &["post"]),
        ("/v1/topics/{topic}/subscribers/{id}", &["delete"]),
        ("/v1/topics/{topic}/subscribers/{id}/dead-letters", &["get"]),
        ("/v1/topics/{topic}/subscribers/{id}/attempts", &["get"]),
        ("/v1/topics/{topic}/subscribers/{id}/redrive", &["post"]),
        ("/v1/topics/{topic}/subscribers/{id}/replay", &["post"]),
        ("/v1/topics/{topic}/subscribers/{id}/enable", &["post"]),
        (
            "/v1/topics/{topic}/subscribers/{id}/rotate-secret",
            &["post"],
        ),
        ("/v1/topics/{topic}/messages", &["get", "post"]),
        ("/v1/topics/{topic}/messages/batch", &["post"]),
        ("/v1/topics/{topic}/messages/{id}", &["get"]),
        ("/v1/topics/{topic}/groups", &["post"]),
        ("/v1/topics/{topic}/groups/{group}", &["delete"]),
        ("/v1/topics/{topic}/groups/{group}/pull", &["post"]),
        ("/v1/topics/{topic}/groups/{group}/ack", &["post"]),
        ("/v1/topics/{topic}/groups/{group}/dead-letters", &["get"]),
        ("/v1/topics/{topic}/groups/{group}/redrive", &["post"]),
        ("/v1/topics/{topic}/listeners", &["post"]),
        ("/v1/topics/{topic}/listeners/{id}", &["delete"]),
        ("/v1/topics/{topic}/events", &["get"]),
        ("/v1/ws", &["get"]),
        ("/v1/tokens", &["post"]),
        ("/v1/whoami", &["get"]),
    ] {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not documented"));
        for m in methods {
            assert!(item.get(*m).is_some(), "{m} {path} is not documented");
        }
        // And the server answers each documented path (not 404 for an
        // unknown route).
        let concrete = path
            .replace("{topic}", "t")
            .replace("{id}", "x")
            .replace("{group}", "g");
        let r = s.call(&methods[0].to_uppercase(), &concrete, &[], "").await;
        if r.status == 404 {
            assert_ne!(r.json()["error"]["code"], "not_found", "{path}");
        }
    }
    assert_eq!(paths.len(), 33, "a documented path the test does not know");
}
