//! Operational events (issue 22): what the broker publishes on the
//! reserved topic `broker.events`, delivered to a real webhook and
//! verified with the `standardwebhooks` crate.

mod common;

use std::time::Duration;

use broker_delivery::DeliveryConfig;
use broker_http::ApiConfig;
use common::{Behaviour, Received, Sink, TestServer};
use serde_json::{json, Value};

/// A server whose retries and circuit are quick.
async fn server(delivery: DeliveryConfig) -> TestServer {
    TestServer::with_config(
        ApiConfig::default(),
        DeliveryConfig {
            retry_base_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(50),
            ..delivery
        },
    )
    .await
}

/// Registers a subscriber on `broker.events` at `sink`; returns its secret.
async fn watch(s: &TestServer, sink: &Sink, filter: Option<Value>) -> String {
    let mut body = json!({"url": sink.url("/events")});
    if let Some(filter) = filter {
        body["filter"] = filter;
    }
    let sub = s.subscriber("broker.events", body).await;
    sub["secret"].as_str().unwrap().to_owned()
}

/// The next event at `sink`, its signature checked with `secret`, its
/// `webhook-event-type` checked against its `type`.
async fn next_event(sink: &mut Sink, secret: &str) -> Value {
    let got: Received = sink.next().await;
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("an operational event is signed like any delivery");
    let event: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        got.headers["webhook-event-type"],
        event["type"].as_str().unwrap(),
        "{event}"
    );
    assert!(
        broker_core::time::parse_rfc3339(event["timestamp"].as_str().unwrap()).is_some(),
        "{event}"
    );
    event
}

#[tokio::test]
async fn a_410_disables_with_an_event_and_enabling_says_so_too() {
    let s = server(DeliveryConfig::default()).await;
    let mut events = Sink::ok().await;
    let secret = watch(&s, &events, Some(json!({"event_types": ["subscriber.*"]}))).await;
    let gone = Sink::start(Behaviour::Status(410)).await;
    let token = s.publisher("t", "p").await;
    let sub = s.subscriber("t", json!({"url": gone.url("/")})).await;
    let id = sub["id"].as_str().unwrap();
    // Filtered out: the events subscriber takes only subscriber.*.
    assert_eq!(
        s.post_json("/v1/topics", json!({"name": "x"})).await.status,
        201
    );

    s.publish("t", &token, "text/plain", "m").await;
    let event = next_event(&mut events, &secret).await;
    assert_eq!(
        event["type"], "subscriber.disabled",
        "the topic.created before it is filtered out: {event}"
    );
    assert_eq!(
        event["data"],
        json!({"topic": "t", "subscriber_id": id, "reason": "gone"})
    );

    let r = s
        .post_json(&format!("/v1/topics/t/subscribers/{id}/enable"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let event = next_event(&mut events, &secret).await;
    assert_eq!(event["type"], "subscriber.enabled");
    assert_eq!(event["data"], json!({"topic": "t", "subscriber_id": id}));
    // Enabling an enabled subscriber changes nothing and says nothing.
    s.post_json(&format!("/v1/topics/t/subscribers/{id}/enable"), json!({}))
        .await;
    s.settle().await;
    assert!(events.drain_now().is_empty());
    let metrics = String::from_utf8_lossy(&s.get("/metrics").await.body).into_owned();
    for line in [
        "broker_operational_events_total{type=\"subscriber.disabled\"} 1",
        "broker_operational_events_total{type=\"subscriber.enabled\"} 1",
        "broker_operational_events_total{type=\"topic.created\"} 1",
        // The 410, and the two events delivered.
        "broker_attempts_recorded_total 3",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_circuit_that_opens_and_closes_says_both() {
    let s = server(DeliveryConfig {
        circuit_after: 2,
        circuit_open_for: Duration::from_millis(200),
        max_in_flight: 1,
        ..DeliveryConfig::default()
    })
    .await;
    let mut events = Sink::ok().await;
    let secret = watch(
        &s,
        &events,
        Some(json!({"event_types": ["subscriber.circuit_*"]})),
    )
    .await;
    let mut flaky = Sink::start(Behaviour::script(&[(500, None), (500, None)])).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": flaky.url("/"), "retry": {"max_attempts": 5}}),
        )
        .await;
    let id = sub["id"].as_str().unwrap();
    s.publish("t", &token, "text/plain", "m").await;

    let opened = next_event(&mut events, &secret).await;
    assert_eq!(opened["type"], "subscriber.circuit_opened");
    assert_eq!(
        opened["data"],
        json!({"topic": "t", "subscriber_id": id, "failures": 2})
    );
    // The probe after 200 ms gets through and closes it.
    let closed = next_event(&mut events, &secret).await;
    assert_eq!(closed["type"], "subscriber.circuit_closed");
    assert_eq!(closed["data"], json!({"topic": "t", "subscriber_id": id}));
    assert_eq!(flaky.drain_now().len(), 3, "two failures, then the probe");
}

#[tokio::test]
async fn a_dead_letter_says_which_message_after_how_many_attempts() {
    let s = server(DeliveryConfig {
        circuit_after: 0,
        ..DeliveryConfig::default()
    })
    .await;
    let mut events = Sink::ok().await;
    let secret = watch(&s, &events, Some(json!({"event_types": ["message.*"]}))).await;
    let failing = Sink::start(Behaviour::Status(503)).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": failing.url("/"), "retry": {"max_attempts": 2}}),
        )
        .await;
    let id = sub["id"].as_str().unwrap();
    let r = s.publish("t", &token, "text/plain", "m").await;
    let message_id = r.json()["id"].as_str().unwrap().to_owned();

    let event = next_event(&mut events, &secret).await;
    assert_eq!(event["type"], "message.dead_lettered");
    assert_eq!(
        event["data"],
        json!({"topic": "t", "subscriber_id": id, "message_id": message_id,
               "attempts": 2, "last_status": 503})
    );
}

/// Topics created and deleted through the API, read back by a listener:
/// the events are messages like any other, with their type as the
/// message's event type.
#[tokio::test]
async fn topics_created_and_deleted_are_in_the_events_log() {
    let s = server(DeliveryConfig::default()).await;
    assert_eq!(
        s.post_json("/v1/topics", json!({"name": "broker.events"}))
            .await
            .status,
        201
    );
    let listener = s
        .post_json(
            "/v1/topics/broker.events/listeners",
            json!({"name": "console"}),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.post_json("/v1/topics", json!({"name": "a"})).await.status,
        201
    );
    assert_eq!(s.delete("/v1/topics/a").await.status, 204);
    let auth = format!("Bearer {listener}");
    let r = s
        .call(
            "GET",
            "/v1/topics/broker.events/messages?offset=0",
            &[("authorization", auth.as_str())],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let fetched = r.json();
    let messages = fetched["messages"].as_array().unwrap();
    let kinds: Vec<_> = messages
        .iter()
        .map(|m| {
            let body = &m["payload"];
            assert_eq!(m["event_type"], body["type"], "{m}");
            assert_eq!(body["data"]["topic"], "a");
            m["event_type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["topic.created", "topic.deleted"], "{fetched}");
}

/// A `broker.events` subscriber that is disabled (410) makes no event
/// about itself; the other subscriber there hears of everything else.
#[tokio::test]
async fn a_failing_events_subscriber_makes_no_events_about_itself() {
    let s = server(DeliveryConfig::default()).await;
    let gone = Sink::start(Behaviour::Status(410)).await;
    let mut events = Sink::ok().await;
    let bad = s
        .subscriber("broker.events", json!({"url": gone.url("/gone")}))
        .await;
    let secret = watch(&s, &events, None).await;
    assert_eq!(
        s.post_json("/v1/topics", json!({"name": "x"})).await.status,
        201
    );
    assert_eq!(
        next_event(&mut events, &secret).await["type"],
        "topic.created"
    );
    // Awaited (bounded): the 410 disables the bad one.
    let bad_id = bad["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let detail = s
            .get(&format!("/v1/topics/broker.events/subscribers/{bad_id}"))
            .await
            .json();
        if detail["status"] == "disabled" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{detail}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.post_json("/v1/topics", json!({"name": "y"})).await.status,
        201
    );
    s.settle().await;
    let rest: Vec<Value> = events
        .drain_now()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(rest.len(), 1, "only y's creation: {rest:?}");
    assert_eq!(rest[0]["type"], "topic.created");
    assert_eq!(rest[0]["data"]["topic"], "y");
}

#[tokio::test]
async fn nobody_publishes_on_broker_events() {
    let s = server(DeliveryConfig::default()).await;
    let r = s
        .post_json("/v1/topics/broker.events/publishers", json!({"name": "me"}))
        .await;
    assert_eq!(r.error_code(403), "reserved_topic");
    // Whatever the token, even a publisher's of another topic.
    let other = s.publisher("t", "p").await;
    for token in [other.as_str(), "not-a-token"] {
        let r = s
            .publish("broker.events", token, "application/json", "{}")
            .await;
        assert_eq!(r.error_code(403), "reserved_topic");
        let auth = format!("Bearer {token}");
        let r = s
            .call(
                "POST",
                "/v1/topics/broker.events/messages/batch",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                r#"{"messages":[{"payload":{}}]}"#,
            )
            .await;
        assert_eq!(r.error_code(403), "reserved_topic");
    }
    // Readers are welcome.
    let r = s
        .post_json(
            "/v1/topics/broker.events/listeners",
            json!({"name": "reader"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}
