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

/// Publishes `body` on `t` as JSON, with an event type if given.
async fn publish_typed(
    server: &TestServer,
    token: &str,
    event_type: Option<&str>,
    body: &str,
) -> common::Reply {
    publish_as(server, token, event_type, "application/json", body).await
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

/// Publishes `body` on `t` with `content_type` and, if given, an event
/// type.
async fn publish_as(
    server: &TestServer,
    token: &str,
    event_type: Option<&str>,
    content_type: &str,
    body: &str,
) -> common::Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", content_type),
    ];
    if let Some(t) = event_type {
        headers.push(("event-type", t));
    }
    server
        .call("POST", "/v1/topics/t/messages", &headers, body.to_owned())
        .await
}

/// The counters of subscriber `id` in the topic detail.
async fn counters(server: &TestServer, id: &str) -> Value {
    let detail = server.get("/v1/topics/t").await.json();
    detail["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {detail}"))["counters"]
        .clone()
}

/// The filter matrix over real subscribers: by event type (exact and
/// prefix), by a CEL expression on JSON fields, both at once; non-JSON
/// payloads, a missing field and a string where a number was expected
/// are no match, never a failed delivery; skipped messages are counted
/// `filtered` and the cursor passes them.
#[tokio::test]
async fn subscribers_get_what_their_filters_match() {
    let server = TestServer::start().await;
    let publisher = server.publisher("t", "p").await;
    let cases = [
        (
            "types",
            json!({"event_types": ["invoice.*", "customer.created"]}),
        ),
        ("cel", json!({"expression": "payload.amount > 100"})),
        (
            "both",
            json!({"event_types": ["invoice.paid"], "expression": "payload.currency == 'EUR'"}),
        ),
        (
            "text",
            json!({"expression": "payload == null && content_type == 'text/plain'"}),
        ),
        ("all", Value::Null),
    ];
    let mut sinks = Vec::new();
    for (name, filter) in &cases {
        let sink = Sink::ok().await;
        let mut body = json!({ "url": sink.url(&format!("/{name}")) });
        if !filter.is_null() {
            body["filter"] = filter.clone();
        }
        let created = server.subscriber("t", body).await;
        if filter.is_null() {
            assert!(created["filter"].is_null(), "{created}");
        } else {
            assert_eq!(
                &created["filter"]["event_types"],
                filter.get("event_types").unwrap_or(&Value::Null)
            );
            assert_eq!(
                &created["filter"]["expression"],
                filter.get("expression").unwrap_or(&Value::Null)
            );
        }
        sinks.push((name, created["id"].as_str().unwrap().to_owned(), sink));
    }
    let json = "application/json";
    let published = [
        (
            Some("invoice.paid"),
            json,
            r#"{"n":0,"amount":150,"currency":"EUR"}"#,
        ),
        (
            Some("invoice.paid"),
            json,
            r#"{"n":1,"amount":50,"currency":"USD"}"#,
        ),
        (Some("customer.created"), json, r#"{"n":2}"#),
        (Some("order.created"), json, r#"{"n":3,"amount":"150"}"#),
        (None, json, r#"{"n":4,"amount":101}"#),
        (Some("invoice.void"), "text/plain", "n5 plain text"),
        (None, json, "n6 not json"),
    ];
    for (t, ct, body) in published {
        let r = publish_as(&server, &publisher, t, ct, body).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    // Which of the above each subscriber gets.
    let wanted: [(&str, &[usize]); 5] = [
        ("types", &[0, 1, 2, 5]),
        ("cel", &[0, 4]),
        ("both", &[0]),
        ("text", &[5]),
        ("all", &[0, 1, 2, 3, 4, 5, 6]),
    ];
    server.settle().await;
    for ((name, id, sink), (wanted_name, wanted)) in sinks.iter_mut().zip(wanted) {
        assert_eq!(**name, wanted_name);
        let mut got: Vec<usize> = sink
            .drain_now()
            .iter()
            .map(|d| {
                let body = String::from_utf8_lossy(&d.body);
                published
                    .iter()
                    .position(|(_, _, b)| *b == body)
                    .unwrap_or_else(|| panic!("{name} got {body}"))
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, wanted, "{name}");
        let c = counters(&server, id).await;
        assert_eq!(c["delivered"], wanted.len(), "{name}: {c}");
        assert_eq!(c["filtered"], published.len() - wanted.len(), "{name}: {c}");
        assert_eq!(c["failed"], 0, "{name}: {c}");
    }
    // The cursor passed every skipped message: nothing is owed.
    let detail = server.get("/v1/topics/t").await.json();
    for s in detail["subscribers"].as_array().unwrap() {
        assert_eq!(s["lag"], 0, "{s}");
    }
}

#[tokio::test]
async fn a_bad_filter_is_refused_saying_why() {
    let server = TestServer::start().await;
    for (filter, says) in [
        (json!({"expression": "payload.amount >"}), "does not parse"),
        (json!({"expression": "x".repeat(4097)}), "4096"),
        (json!({"event_types": []}), "at least one"),
        (json!({"event_types": ["a b"]}), "\"a b\""),
        (
            json!({"event_types": ["a", "b"], "other": 1}),
            "unknown field",
        ),
    ] {
        let r = server
            .post_json(
                "/v1/topics/t/subscribers",
                json!({"url": "http://127.0.0.1:9/x", "filter": filter}),
            )
            .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{message}");
    }
}
