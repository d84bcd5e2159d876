//! Idempotent publishing (issue 21): the same `Idempotency-Key` on the
//! same topic appends nothing and is answered as the first publish was;
//! the same key with another payload or event type is `422`.

mod common;

use common::{Sink, TestServer};
use serde_json::{json, Value};

/// Publishes `body` on `topic` with `key` (and an event type if given).
async fn publish_keyed(
    server: &TestServer,
    topic: &str,
    token: &str,
    key: &str,
    event_type: Option<&str>,
    body: &str,
) -> common::Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("idempotency-key", key),
    ];
    if let Some(t) = event_type {
        headers.push(("event-type", t));
    }
    server
        .call(
            "POST",
            &format!("/v1/topics/{topic}/messages"),
            &headers,
            body.to_owned(),
        )
        .await
}

async fn batch(server: &TestServer, token: &str, items: Value) -> common::Reply {
    let auth = format!("Bearer {token}");
    server
        .call(
            "POST",
            "/v1/topics/t/messages/batch",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({ "messages": items }).to_string(),
        )
        .await
}

/// The ids of every message in topic `t`'s log.
async fn log_ids(server: &TestServer, reader: &str) -> Vec<String> {
    let r = server
        .call(
            "GET",
            "/v1/topics/t/messages?offset=0&limit=1000",
            &[("authorization", &format!("Bearer {reader}"))],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn listener(server: &TestServer) -> String {
    let r = server
        .post_json("/v1/topics/t/listeners", json!({ "name": "l" }))
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_repeated_key_is_answered_as_the_first_publish_and_delivered_once() {
    let server = TestServer::start().await;
    let mut sink = Sink::ok().await;
    server
        .subscriber("t", json!({ "url": sink.url("/hook") }))
        .await;
    let token = server.publisher("t", "p").await;
    let reader = listener(&server).await;

    let first = publish_keyed(&server, "t", &token, "order-42", None, r#"{"n":1}"#).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    assert_eq!(sink.next().await.body, br#"{"n":1}"#[..]);

    // A second subscriber now: the replay still answers the first count.
    let other = Sink::ok().await;
    server
        .subscriber("t", json!({ "url": other.url("/hook") }))
        .await;
    let again = publish_keyed(&server, "t", &token, "order-42", None, r#"{"n":1}"#).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(
        again.json(),
        first.json(),
        "the original id, offset, subscribers"
    );
    assert_eq!(first.json()["subscribers"], 1);

    // Another key, and no key, make messages; so does the same key on
    // another topic.
    let next = publish_keyed(&server, "t", &token, "order-43", None, r#"{"n":1}"#).await;
    assert_eq!(next.status, 202);
    assert_eq!(next.json()["offset"], 1);
    let plain = server
        .publish("t", &token, "application/json", r#"{"n":1}"#)
        .await;
    assert_eq!(plain.status, 202);
    let elsewhere = server.publisher("u", "p").await;
    let u = publish_keyed(&server, "u", &elsewhere, "order-42", None, r#"{"n":1}"#).await;
    assert_eq!(u.status, 202, "{:?}", u.body);

    server.settle().await;
    assert_eq!(log_ids(&server, &reader).await.len(), 3);
    // The first subscriber got each message once: the replay went nowhere.
    let rest: Vec<_> = sink.drain_now().into_iter().map(|r| r.body).collect();
    assert_eq!(rest.len(), 2, "{rest:?}");
}

#[tokio::test]
async fn a_key_reused_for_another_payload_or_event_type_is_422_and_appends_nothing() {
    let server = TestServer::start().await;
    let token = server.publisher("t", "p").await;
    let reader = listener(&server).await;
    let r = publish_keyed(&server, "t", &token, "k", Some("a.b"), r#"{"n":1}"#).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let other_body = publish_keyed(&server, "t", &token, "k", Some("a.b"), r#"{"n":2}"#).await;
    assert_eq!(other_body.error_code(422), "idempotency_key_reused");
    let other_type = publish_keyed(&server, "t", &token, "k", Some("a.c"), r#"{"n":1}"#).await;
    assert_eq!(other_type.error_code(422), "idempotency_key_reused");
    let no_type = publish_keyed(&server, "t", &token, "k", None, r#"{"n":1}"#).await;
    assert_eq!(no_type.error_code(422), "idempotency_key_reused");
    // The first is still answered.
    let same = publish_keyed(&server, "t", &token, "k", Some("a.b"), r#"{"n":1}"#).await;
    assert_eq!(same.status, 200);
    assert_eq!(log_ids(&server, &reader).await.len(), 1);
}

#[tokio::test]
async fn a_bad_key_is_400_before_anything_is_published() {
    let server = TestServer::start().await;
    let token = server.publisher("t", "p").await;
    let reader = listener(&server).await;
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "tab\there"] {
        let r = publish_keyed(&server, "t", &token, bad, None, "{}").await;
        assert_eq!(r.error_code(400), "invalid_idempotency_key", "{bad:?}");
    }
    let longest = "k".repeat(255);
    let r = publish_keyed(&server, "t", &token, &longest, None, "{}").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let spaced = publish_keyed(&server, "t", &token, "with space ~!", None, "{}").await;
    assert_eq!(spaced.status, 202, "{:?}", spaced.body);
    let r = batch(
        &server,
        &token,
        json!([{"payload": 1, "idempotency_key": ""}]),
    )
    .await;
    assert_eq!(r.error_code(400), "invalid_request");
    assert_eq!(log_ids(&server, &reader).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_publishes_with_one_key_make_one_message() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut sink = Sink::ok().await;
    server
        .subscriber("t", json!({ "url": sink.url("/hook") }))
        .await;
    let token = server.publisher("t", "p").await;
    let reader = listener(&server).await;
    for round in 0..5 {
        let key = format!("race-{round}");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (server, token, key) = (server.clone(), token.clone(), key.clone());
                tokio::spawn(async move {
                    let r = publish_keyed(&server, "t", &token, &key, None, r#"{"race":1}"#).await;
                    (
                        r.status.as_u16(),
                        r.json()["id"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let created = answers.iter().filter(|(s, _)| *s == 202).count();
        let replayed = answers.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!((created, replayed), (1, 15), "round {round}: {answers:?}");
        assert!(
            answers.iter().all(|(_, id)| *id == answers[0].1),
            "{answers:?}"
        );
    }
    server.settle().await;
    assert_eq!(log_ids(&server, &reader).await.len(), 5);
    let mut delivered = Vec::new();
    for _ in 0..5 {
        delivered.push(sink.next().await);
    }
    server.settle().await;
    assert!(sink.drain_now().is_empty(), "each message delivered once");
}

#[tokio::test]
async fn batch_items_take_keys_and_a_repeated_batch_is_answered_whole() {
    let server = TestServer::start().await;
    let token = server.publisher("t", "p").await;
    let reader = listener(&server).await;
    let items = json!([
        {"payload": {"n": 1}, "idempotency_key": "a"},
        {"payload": {"n": 2}, "idempotency_key": "b"},
        {"payload": {"n": 3}},
    ]);
    let first = batch(&server, &token, items.clone()).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let shape = |r: &common::Reply| -> Vec<(u64, bool)> {
        r.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["offset"].as_u64().unwrap(),
                    m["replayed"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&first), [(0, false), (1, false), (2, false)]);
    // Again: the keyed ones are replays, the unkeyed one is new.
    let again = batch(&server, &token, items).await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    assert_eq!(shape(&again), [(0, true), (1, true), (3, false)]);
    // Every item a replay: 200 and the header.
    let keyed_only = json!([
        {"payload": {"n": 2}, "idempotency_key": "b"},
        {"payload": {"n": 1}, "idempotency_key": "a"},
    ]);
    let replay = batch(&server, &token, keyed_only).await;
    assert_eq!(replay.status, 200, "{:?}", replay.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(shape(&replay), [(1, true), (0, true)]);
    // One key twice in a batch: one message; with two payloads: 422 and
    // nothing of the batch appended.
    let twice = json!([
        {"payload": {"n": 5}, "idempotency_key": "c"},
        {"payload": {"n": 5}, "idempotency_key": "c"},
    ]);
    assert_eq!(
        shape(&batch(&server, &token, twice).await),
        [(4, false), (4, true)]
    );
    let clash = json!([
        {"payload": {"n": 6}, "idempotency_key": "d"},
        {"payload": {"n": 7}, "idempotency_key": "d"},
    ]);
    let r = batch(&server, &token, clash).await;
    assert_eq!(r.error_code(422), "idempotency_key_reused");
    let reused = json!([
        {"payload": {"n": 8}},
        {"payload": {"n": 9}, "idempotency_key": "a"},
    ]);
    let r = batch(&server, &token, reused).await;
    assert_eq!(r.error_code(422), "idempotency_key_reused");
    assert_eq!(log_ids(&server, &reader).await.len(), 5);
}

#[tokio::test]
async fn a_deleted_topic_forgets_its_keys() {
    let server = TestServer::start().await;
    let token = server.publisher("t", "p").await;
    let r = publish_keyed(&server, "t", &token, "k", None, "{}").await;
    assert_eq!(r.status, 202);
    assert_eq!(server.delete("/v1/topics/t").await.status, 204);
    let token = server.publisher("t", "p").await;
    let r = publish_keyed(&server, "t", &token, "k", None, r#"{"other":1}"#).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}
