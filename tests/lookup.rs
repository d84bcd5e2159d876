//! Message lookup (issue 22): `GET /v1/topics/{topic}/messages/{id}`
//! shows the message and where each subscriber's delivery of it stands.

mod common;

use std::{sync::Arc, time::Duration};

use broker_core::Limits;
use broker_delivery::DeliveryConfig;
use broker_http::{ApiConfig, ServerConfig};
use common::{Behaviour, Sink, TestServer, PATIENCE};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

async fn server(limits: Limits) -> TestServer {
    TestServer::with_all(
        ApiConfig::default(),
        DeliveryConfig {
            // A retry waits long enough to be seen waiting.
            retry_base_delay: Duration::from_secs(60),
            retry_max_delay: Duration::from_secs(60),
            circuit_after: 0,
            ..DeliveryConfig::default()
        },
        ServerConfig::default(),
        limits,
    )
    .await
}

async fn listener(s: &TestServer) -> String {
    let r = s
        .post_json("/v1/topics/t/listeners", json!({"name": "reader"}))
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn look(s: &TestServer, token: &str, id: &str) -> common::Reply {
    let auth = format!("Bearer {token}");
    s.call(
        "GET",
        &format!("/v1/topics/t/messages/{id}"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await
}

/// Waits (bounded) until `sub`'s delivery of `id` is in `state`; returns
/// it.
async fn until_state(s: &TestServer, token: &str, id: &str, sub: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = look(s, token, id).await.json();
        let delivery = found["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["subscriber_id"] == sub)
            .cloned();
        if let Some(d) = delivery.filter(|d| d["state"] == state) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sub} never {state}: {found}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_subscriber_s_delivery_has_its_state() {
    let s = server(Limits {
        max_dead_letters: 1,
        ..Limits::default()
    })
    .await;
    let token = s.publisher("t", "p").await;
    let reader = listener(&s).await;
    let ok = Sink::ok().await;
    let failing = Sink::start(Behaviour::Status(500)).await;
    let dead = Sink::start(Behaviour::Status(400)).await;
    let gate = Arc::new(Semaphore::new(0));
    let held = Sink::start(Behaviour::Gated(gate.clone())).await;
    let mut ids = std::collections::HashMap::new();
    for (name, url, extra) in [
        ("ok", ok.url("/"), json!({})),
        (
            "retrying",
            failing.url("/"),
            json!({"retry": {"max_attempts": 3}}),
        ),
        ("dead", dead.url("/"), json!({})),
        (
            "filtered",
            ok.url("/f"),
            json!({"filter": {"event_types": ["invoice.*"]}}),
        ),
        ("held", held.url("/"), json!({})),
    ] {
        let mut body = json!({ "url": url });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let sub = s.subscriber("t", body).await;
        ids.insert(name, sub["id"].as_str().unwrap().to_owned());
    }
    let r = s
        .publish("t", &token, "application/json", "{\"n\":1}")
        .await;
    let first = r.json()["id"].as_str().unwrap().to_owned();

    let d = until_state(&s, &reader, &first, &ids["ok"], "delivered").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status"], 200);
    assert!(broker_core::time::parse_rfc3339(d["last_attempt_at"].as_str().unwrap()).is_some());
    let d = until_state(&s, &reader, &first, &ids["retrying"], "retrying").await;
    assert_eq!(
        (d["attempts"].as_u64(), d["last_status"].as_u64()),
        (Some(1), Some(500))
    );
    let d = until_state(&s, &reader, &first, &ids["dead"], "dead_lettered").await;
    assert_eq!(d["last_status"], 400);
    let d = until_state(&s, &reader, &first, &ids["filtered"], "filtered").await;
    assert_eq!(d["attempts"], 0);
    let d = until_state(&s, &reader, &first, &ids["held"], "pending").await;
    assert_eq!(
        (d["attempts"].as_u64(), &d["last_status"]),
        (Some(0), &Value::Null)
    );

    // The message itself, as fetch shows it.
    let found = look(&s, &reader, &first).await.json();
    assert_eq!(found["id"], first.as_str());
    assert_eq!(found["offset"], 0);
    assert_eq!(found["payload"], json!({"n": 1}));
    assert_eq!(found["encoding"], "json");
    assert_eq!(found["event_type"], Value::Null);
    assert_eq!(found["deliveries"].as_array().unwrap().len(), 5);

    // A second dead letter evicts the first (the cap is 1): dropped.
    s.publish("t", &token, "text/plain", "two").await;
    until_state(&s, &reader, &first, &ids["dead"], "dropped").await;
    gate.add_permits(10);
    until_state(&s, &reader, &first, &ids["held"], "delivered").await;

    // A subscriber registered after the message was never owed it.
    let late = s.subscriber("t", json!({"url": ok.url("/late")})).await;
    let found = look(&s, &reader, &first).await.json();
    assert!(
        !found["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["subscriber_id"] == late["id"]),
        "{found}"
    );
}

#[tokio::test]
async fn unknown_messages_are_404_and_readers_need_a_token() {
    let s = server(Limits::default()).await;
    let token = s.publisher("t", "p").await;
    let reader = listener(&s).await;
    let r = s.publish("t", &token, "text/plain", "m").await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(look(&s, &reader, &id).await.status, 200);
    // Another offset of the same log, another log's id, no id shape.
    let other_offset = format!("{}{:012x}", &id[..16], 7);
    for unknown in [
        other_offset.as_str(),
        "msg_0123456789ab000000000000",
        "nope",
    ] {
        assert_eq!(
            look(&s, &reader, unknown).await.error_code(404),
            "message_not_found",
            "{unknown}"
        );
    }
    let r = s
        .call("GET", &format!("/v1/topics/t/messages/{id}"), &[], "")
        .await;
    assert_eq!(r.error_code(401), "unauthorized");
    let r = s
        .call("POST", &format!("/v1/topics/t/messages/{id}"), &[], "")
        .await;
    assert_eq!(r.status, 405);
}
