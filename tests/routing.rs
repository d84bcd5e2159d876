//! Routing by event type (issue 21): what a publisher names with
//! `Event-Type` (or `event_type` on a batch item) is kept with the
//! message, shown where messages are read and sent to webhooks as
//! `webhook-event-type`.

mod common;

use common::{Sink, TestServer};
use serde_json::{json, Value};

async fn listener(server: &TestServer, topic: &str) -> String {
    let r = server
        .post_json(
            &format!("/v1/topics/{topic}/listeners"),
            json!({ "name": "l" }),
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn publish_typed(
    server: &TestServer,
    token: &str,
    event_type: Option<&str>,
    body: &str,
) -> common::Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(t) = event_type {
        headers.push(("event-type", t));
    }
    server
        .call("POST", "/v1/topics/t/messages", &headers, body.to_owned())
        .await
}

#[tokio::test]
async fn an_event_type_is_kept_shown_and_sent_with_the_webhook() {
    let server = TestServer::start().await;
    let mut sink = Sink::ok().await;
    server
        .subscriber("t", json!({ "url": sink.url("/hook") }))
        .await;
    let publisher = server.publisher("t", "p").await;
    let reader = listener(&server, "t").await;

    let r = publish_typed(&server, &publisher, Some("invoice.paid"), r#"{"n":1}"#).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let r = publish_typed(&server, &publisher, None, r#"{"n":2}"#).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let auth = format!("Bearer {publisher}");
    let r = server
        .call(
            "POST",
            "/v1/topics/t/messages/batch",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({"messages": [
                {"payload": {"n": 3}, "event_type": "customer.created"},
                {"data": "AAE=", "content_type": "application/octet-stream"},
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    // Fetched: `event_type` on every message, null when none.
    let r = server
        .call(
            "GET",
            "/v1/topics/t/messages?offset=0",
            &[("authorization", &format!("Bearer {reader}"))],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let types: Vec<Value> = r.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event_type"].clone())
        .collect();
    assert_eq!(
        types,
        [
            json!("invoice.paid"),
            Value::Null,
            json!("customer.created"),
            Value::Null
        ]
    );

    // Delivered: the header when there is a type, none otherwise; the
    // subscriber's own headers cannot name it.
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = sink.next().await;
        got.push((
            String::from_utf8_lossy(&d.body).into_owned(),
            d.headers
                .get("webhook-event-type")
                .map(|v| v.to_str().unwrap().to_owned()),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("\u{0}\u{1}".to_owned(), None),
            (r#"{"n":1}"#.to_owned(), Some("invoice.paid".to_owned())),
            (r#"{"n":2}"#.to_owned(), None),
            (r#"{"n":3}"#.to_owned(), Some("customer.created".to_owned())),
        ]
    );
}

#[tokio::test]
async fn a_bad_event_type_is_refused_and_nothing_is_published() {
    let server = TestServer::start().await;
    let publisher = server.publisher("t", "p").await;
    let long = "x".repeat(129);
    for bad in ["a b", "a/b", "", long.as_str(), "ü"] {
        let r = publish_typed(&server, &publisher, Some(bad), "{}").await;
        assert_eq!(r.error_code(400), "invalid_event_type", "{bad:?}");
    }
    let ok = "x".repeat(128);
    let r = publish_typed(&server, &publisher, Some(&ok), "{}").await;
    assert_eq!(r.status, 202);
    let auth = format!("Bearer {publisher}");
    let r = server
        .call(
            "POST",
            "/v1/topics/t/messages/batch",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({"messages": [{"payload": 1}, {"payload": 2, "event_type": "no spaces"}]})
                .to_string(),
        )
        .await;
    let code = r.error_code(400);
    assert_eq!(code, "invalid_request", "{:?}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[1]: invalid event type"),
        "{:?}",
        r.body
    );
    assert_eq!(server.broker.topic("t").unwrap().published, 1);
}
