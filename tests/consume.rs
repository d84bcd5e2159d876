//! Consumers that pull: fetch by offset (paging, long-poll, retention
//! gaps, payload encodings), batch publish, and the health answer; the
//! real server on 127.0.0.1:0.

mod common;

use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use broker_core::{MemoryStore, Retention};
use broker_delivery::DeliveryConfig;
use broker_http::ApiConfig;
use common::{TestServer, PATIENCE};
use serde_json::{json, Value};

async fn listener(s: &TestServer, topic: &str) -> String {
    let r = s
        .post_json(
            &format!("/v1/topics/{topic}/listeners"),
            json!({"name": "reader"}),
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn fetch(s: &TestServer, topic: &str, token: &str, query: &str) -> common::Reply {
    let auth = format!("Bearer {token}");
    s.call(
        "GET",
        &format!("/v1/topics/{topic}/messages?{query}"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await
}

async fn publish(
    s: &TestServer,
    topic: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Value {
    let auth = format!("Bearer {token}");
    let r = s
        .call(
            "POST",
            &format!("/v1/topics/{topic}/messages"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", content_type),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.json()
}

#[tokio::test]
async fn fetch_pages_through_the_log_with_every_encoding() {
    let s = TestServer::start().await;
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    for n in 0..250 {
        publish(&s, "t", &p, "text/plain", n.to_string().into_bytes()).await;
    }
    publish(&s, "t", &p, "application/json", br#"{"n":250}"#.to_vec()).await;
    let binary = vec![0u8, 255, 13, 10, 7];
    publish(&s, "t", &p, "application/octet-stream", binary.clone()).await;

    let mut offset = 0;
    let mut seen = Vec::new();
    loop {
        let page = fetch(&s, "t", &l, &format!("offset={offset}&limit=100")).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let page = page.json();
        assert_eq!(page["first_offset"], 0);
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            assert_eq!(page["next_offset"], 252);
            break;
        }
        assert!(messages.len() <= 100);
        for m in &messages {
            assert_eq!(m["offset"], offset, "{m}");
            assert!(m["id"].as_str().unwrap().starts_with("msg_"));
            assert!(m["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
            offset += 1;
        }
        assert_eq!(page["next_offset"], offset);
        seen.extend(messages);
    }
    assert_eq!(seen.len(), 252);
    assert_eq!(seen[7]["payload"], "7");
    assert_eq!(seen[7]["encoding"], "text");
    assert_eq!(seen[7]["content_type"], "text/plain");
    assert_eq!(seen[250]["payload"], json!({"n": 250}));
    assert_eq!(seen[250]["encoding"], "json");
    assert_eq!(seen[251]["encoding"], "base64");
    assert_eq!(
        STANDARD
            .decode(seen[251]["payload"].as_str().unwrap())
            .unwrap(),
        binary
    );
    // The token may come as a query parameter too (clients without headers).
    let r = s
        .call(
            "GET",
            &format!("/v1/topics/t/messages?offset=250&limit=1&access_token={l}"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.json()["messages"][0]["offset"], 250);
}

#[tokio::test]
async fn fetch_refuses_bad_parameters_and_strangers() {
    let s = TestServer::with_config(
        ApiConfig {
            admin_token: Some("admin-secret".into()),
            ..ApiConfig::default()
        },
        DeliveryConfig::default(),
    )
    .await;
    let admin = [("authorization", "Bearer admin-secret")];
    let r = s
        .call(
            "POST",
            "/v1/topics/t/listeners",
            &[admin[0], ("content-type", "application/json")],
            r#"{"name":"r"}"#,
        )
        .await;
    let l = r.json()["token"].as_str().unwrap().to_owned();
    let r = s
        .call(
            "POST",
            "/v1/topics/u/listeners",
            &[admin[0], ("content-type", "application/json")],
            r#"{"name":"r"}"#,
        )
        .await;
    let other = r.json()["token"].as_str().unwrap().to_owned();
    for query in [
        "limit=0",
        "limit=1001",
        "offset=-1",
        "offset=x",
        "wait=31s",
        "wait=soon",
    ] {
        let r = fetch(&s, "t", &l, query).await;
        assert_eq!(r.error_code(400), "invalid_query", "{query}");
    }
    let r = s.call("GET", "/v1/topics/t/messages", &[], "").await;
    assert_eq!(r.error_code(401), "unauthorized");
    assert_eq!(
        fetch(&s, "t", "lis_nope.x", "").await.error_code(401),
        "unauthorized"
    );
    assert_eq!(
        fetch(&s, "t", &other, "").await.error_code(403),
        "forbidden"
    );
    assert_eq!(fetch(&s, "t/x", &l, "").await.status, 404);
    // The admin token reads any topic; an unknown one is 404.
    assert_eq!(fetch(&s, "t", "admin-secret", "").await.status, 200);
    let r = fetch(&s, "nothing-here", "admin-secret", "").await;
    assert_eq!(r.error_code(404), "topic_not_found");
    assert_eq!(fetch(&s, "bad!topic", "admin-secret", "").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_as_soon_as_a_message_lands() {
    let s = Arc::new(TestServer::start().await);
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    // Nothing at offset 0 yet: it waits (up to 20 s).
    let waiting = tokio::spawn({
        let (s, l) = (s.clone(), l.clone());
        async move {
            let started = tokio::time::Instant::now();
            let r = fetch(&s, "t", &l, "offset=0&wait=20s").await;
            (r, started.elapsed())
        }
    });
    // Give the fetch time to start waiting; it must not answer meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "answered before any message");
    publish(&s, "t", &p, "text/plain", b"hello".to_vec()).await;
    let (r, took) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the long poll answered")
        .unwrap();
    assert_eq!(r.json()["messages"][0]["payload"], "hello");
    assert!(
        took < Duration::from_secs(10),
        "woken by the publish, not the wait: {took:?}"
    );
    // Past the end with a short wait: an empty list when it runs out.
    let r = fetch(&s, "t", &l, "offset=5&wait=100ms").await.json();
    assert_eq!(r["messages"], json!([]));
    assert_eq!(r["next_offset"], 1);
}

#[tokio::test]
async fn a_fetch_before_retention_starts_at_the_oldest_and_shows_the_gap() {
    // Room for about three 1 KiB messages per topic.
    let retention = Retention {
        bytes_per_topic: 3 * (1024 + 160),
        ..Retention::default()
    };
    let s = TestServer::with_store(
        DeliveryConfig::default(),
        MemoryStore::new(retention, 1 << 20),
    )
    .await;
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    for _ in 0..10 {
        publish(&s, "t", &p, "text/plain", vec![b'x'; 1024]).await;
    }
    let r = fetch(&s, "t", &l, "offset=0").await.json();
    let first = r["first_offset"].as_u64().unwrap();
    assert!(first > 0, "{r}");
    assert_eq!(r["messages"][0]["offset"].as_u64(), Some(first));
    assert_eq!(r["next_offset"], 10);
}

#[tokio::test]
async fn a_batch_is_published_all_or_nothing() {
    let s = TestServer::start().await;
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    let auth = format!("Bearer {p}");
    let batch = |body: Value| {
        let (s, auth) = (&s, auth.clone());
        async move {
            s.call(
                "POST",
                "/v1/topics/t/messages/batch",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await
        }
    };
    let r = batch(json!({"messages": [
        {"payload": {"a": 1}},
        {"data": STANDARD.encode([0xffu8, 0, 1]), "content_type": "application/octet-stream"},
        {"data": STANDARD.encode("plain"), "content_type": "text/plain"},
    ]}))
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let r = r.json();
    let offsets: Vec<u64> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 2]);
    assert_eq!(r["subscribers"], 0);
    let read = fetch(&s, "t", &l, "offset=0").await.json();
    assert_eq!(read["messages"][0]["payload"], json!({"a": 1}));
    assert_eq!(read["messages"][0]["id"], r["messages"][0]["id"]);
    assert_eq!(read["messages"][1]["encoding"], "base64");
    assert_eq!(read["messages"][2]["payload"], "plain");

    // A bad item anywhere refuses the whole batch, naming it.
    for (bad, index) in [
        (
            json!({"messages": [{"payload": 1}, {"payload": 2}, {"data": "%%%"}]}),
            2,
        ),
        (json!({"messages": [{"payload": 1}, {}]}), 1),
        (json!({"messages": [{"payload": 1, "data": "AA=="}]}), 0),
        (
            json!({"messages": [{"data": "AA==", "content_type": "bad\nvalue"}]}),
            0,
        ),
        (json!({"messages": [{"payload": 1, "extra": true}]}), 0),
    ] {
        let r = batch(bad.clone()).await;
        assert_eq!(r.error_code(400), "invalid_request", "{bad}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(&format!("messages[{index}]")), "{message}");
    }
    for bad in [
        json!({"messages": []}),
        json!({"messages": vec![json!({"payload": 1}); 1001]}),
    ] {
        assert_eq!(batch(bad).await.status, 400);
    }
    assert_eq!(
        batch(json!({"items": []})).await.error_code(400),
        "invalid_json"
    );
    // Nothing of the refused batches was published.
    let detail = s.get("/v1/topics/t").await.json();
    assert_eq!(detail["counters"]["published"], 3);
    assert_eq!(
        fetch(&s, "t", &l, "offset=3").await.json()["next_offset"],
        3
    );
    // Only the topic's publishers.
    let r = s
        .call(
            "POST",
            "/v1/topics/t/messages/batch",
            &[
                ("authorization", &format!("Bearer {l}")),
                ("content-type", "application/json"),
            ],
            json!({"messages": [{"payload": 1}]}).to_string(),
        )
        .await;
    assert_eq!(r.error_code(401), "unauthorized");
}

#[tokio::test]
async fn health_tells_uptime_and_counts() {
    let s = TestServer::start().await;
    s.publisher("a", "p").await;
    s.subscriber("a", json!({"url": "http://127.0.0.1:9/x"}))
        .await;
    s.subscriber("b", json!({"url": "http://127.0.0.1:9/y"}))
        .await;
    let h = s.get("/healthz").await.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["topics"], 2);
    assert_eq!(h["subscribers"], 2);
    assert!(h["uptime_seconds"].as_u64().is_some(), "{h}");
}

#[tokio::test]
async fn explicit_topics_are_created_once_and_stay_until_deleted() {
    let s = TestServer::start().await;
    let r = s.post_json("/v1/topics", json!({"name": "orders"})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json(), json!({"name": "orders"}));
    let again = s.post_json("/v1/topics", json!({"name": "orders"})).await;
    assert_eq!(again.error_code(409), "topic_exists");
    // A topic made by a registration exists too.
    s.publisher("implicit", "p").await;
    let r = s.post_json("/v1/topics", json!({"name": "implicit"})).await;
    assert_eq!(r.error_code(409), "topic_exists");
    for bad in [
        json!({"name": "no spaces"}),
        json!({"name": ""}),
        json!({}),
        json!({"name": "a", "x": 1}),
    ] {
        assert_eq!(
            s.post_json("/v1/topics", bad.clone()).await.status,
            400,
            "{bad}"
        );
    }
    // Empty, it stays; a publisher coming and going leaves it there.
    let token = s.publisher("orders", "p").await;
    let id = s.get("/v1/topics/orders").await.json()["publishers"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.delete(&format!("/v1/topics/orders/publishers/{id}"))
            .await
            .status,
        204
    );
    assert_eq!(s.get("/v1/topics/orders").await.status, 200);
    let names: Vec<Value> = s.get("/v1/topics").await.json()["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert!(names.contains(&json!("orders")), "{names:?}");
    let _ = token;

    // Deleting takes everything with it; the name starts afresh.
    let p = s.publisher("orders", "p2").await;
    publish(&s, "orders", &p, "text/plain", b"old".to_vec()).await;
    assert_eq!(s.delete("/v1/topics/orders").await.status, 204);
    assert_eq!(
        s.get("/v1/topics/orders").await.error_code(404),
        "topic_not_found"
    );
    assert_eq!(
        s.delete("/v1/topics/orders").await.error_code(404),
        "topic_not_found"
    );
    let p = s.publisher("orders", "p2").await;
    let first = publish(&s, "orders", &p, "text/plain", b"new".to_vec()).await;
    assert_eq!(first["offset"], 0, "a new log");
    // An implicit topic can be deleted too.
    assert_eq!(s.delete("/v1/topics/implicit").await.status, 204);
}

#[tokio::test]
async fn an_explicit_topic_survives_a_restart_and_its_deletion_removes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let open =
        || broker_store::DiskStore::open(dir.path(), broker_store::Options::default()).unwrap();
    {
        let s = TestServer::with_store(DeliveryConfig::default(), open()).await;
        assert_eq!(
            s.post_json("/v1/topics", json!({"name": "kept"}))
                .await
                .status,
            201
        );
        let p = s.publisher("gone", "p").await;
        publish(&s, "gone", &p, "text/plain", b"x".to_vec()).await;
        assert!(dir.path().join("topics/gone").exists());
        assert_eq!(s.delete("/v1/topics/gone").await.status, 204);
        assert!(
            !dir.path().join("topics/gone").exists(),
            "its log is deleted"
        );
        s.stop().await;
    }
    let s = TestServer::with_store(DeliveryConfig::default(), open()).await;
    assert_eq!(
        s.get("/v1/topics/kept").await.status,
        200,
        "explicit, empty, kept"
    );
    assert_eq!(s.get("/v1/topics/gone").await.status, 404);
}

// ---- consumer groups -------------------------------------------------------

async fn pull(s: &TestServer, topic: &str, group: &str, token: &str, body: Value) -> common::Reply {
    let auth = format!("Bearer {token}");
    s.call(
        "POST",
        &format!("/v1/topics/{topic}/groups/{group}/pull"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

async fn ack(s: &TestServer, topic: &str, group: &str, token: &str, receipts: &[String]) -> Value {
    let auth = format!("Bearer {token}");
    let r = s
        .call(
            "POST",
            &format!("/v1/topics/{topic}/groups/{group}/ack"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            json!({ "receipts": receipts }).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

fn receipts(pulled: &Value) -> Vec<String> {
    pulled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["receipt"].as_str().unwrap().to_owned())
        .collect()
}

fn offsets(pulled: &Value) -> Vec<u64> {
    pulled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_group_is_created_once_and_validated() {
    let s = TestServer::start().await;
    let r = s
        .post_json("/v1/topics/t/groups", json!({"name": "workers"}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"name": "workers", "topic": "t", "ack_timeout": "30s", "max_deliveries": 5, "filter": null})
    );
    let again = s
        .post_json(
            "/v1/topics/t/groups",
            json!({"name": "workers", "ack_timeout": "1s"}),
        )
        .await;
    assert_eq!(again.status, 200, "the same group");
    assert_eq!(again.json()["ack_timeout"], "30s");
    for bad in [
        json!({"name": "no/slash"}),
        json!({"name": ""}),
        json!({"name": "g", "ack_timeout": "soon"}),
        json!({"name": "g", "ack_timeout": "0s"}),
        json!({"name": "g", "max_deliveries": 0}),
        json!({"name": "g", "start": "middle"}),
        json!({"name": "g", "start": null}),
        json!({"name": "g", "other": 1}),
    ] {
        assert_eq!(
            s.post_json("/v1/topics/t/groups", bad.clone()).await.status,
            400,
            "{bad}"
        );
    }
    // A body that is not an object is refused, also where every field is
    // optional (a redrive).
    assert_eq!(
        s.post_json("/v1/topics/t/groups", json!([]))
            .await
            .error_code(400),
        "invalid_json"
    );
    assert_eq!(
        s.post_json("/v1/topics/t/groups/workers/redrive", json!([]))
            .await
            .error_code(400),
        "invalid_json"
    );
    // Too many receipts, however long (past the 64 KiB of other bodies):
    // told so, not cut at a byte limit.
    let l = listener(&s, "t").await;
    let auth = format!("Bearer {l}");
    let many = vec!["x".repeat(90); 1_001];
    let r = s
        .call(
            "POST",
            "/v1/topics/t/groups/workers/ack",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({ "receipts": many }).to_string(),
        )
        .await;
    assert_eq!(r.error_code(400), "invalid_request", "{:?}", r.body);
    assert_eq!(s.delete("/v1/topics/t/groups/workers").await.status, 204);
    assert_eq!(
        s.delete("/v1/topics/t/groups/workers")
            .await
            .error_code(404),
        "group_not_found"
    );
    assert_eq!(
        pull(&s, "t", "workers", &l, json!({}))
            .await
            .error_code(404),
        "group_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pullers_get_disjoint_messages_and_acked_ones_never_come_back() {
    let s = Arc::new(TestServer::start().await);
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    s.post_json(
        "/v1/topics/t/groups",
        json!({"name": "g", "start": "earliest", "ack_timeout": "1s"}),
    )
    .await;
    for n in 0..200 {
        publish(&s, "t", &p, "text/plain", n.to_string().into_bytes()).await;
    }
    let pullers: Vec<_> = (0..2)
        .map(|_| {
            let (s, l) = (s.clone(), l.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let r = pull(&s, "t", "g", &l, json!({"max": 7})).await.json();
                    if r["messages"].as_array().unwrap().is_empty() {
                        return mine;
                    }
                    mine.extend(offsets(&r));
                    let a = ack(&s, "t", "g", &l, &receipts(&r)).await;
                    assert_eq!(a["stale"], 0, "{a}");
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for p in pullers {
        all.extend(p.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..200).collect::<Vec<_>>(), "each exactly once");
    // Acked: nothing comes back, even after the ack timeout.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = pull(&s, "t", "g", &l, json!({"max": 100})).await.json();
    assert_eq!(r["messages"], json!([]));
}

#[tokio::test]
async fn an_unacked_message_comes_back_and_dies_after_max_deliveries() {
    let s = TestServer::start().await;
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    s.post_json(
        "/v1/topics/t/groups",
        json!({"name": "g", "ack_timeout": "100ms", "max_deliveries": 2}),
    )
    .await;
    let id = publish(&s, "t", &p, "application/json", br#"{"n":1}"#.to_vec()).await["id"].clone();
    let first = pull(&s, "t", "g", &l, json!({"max": 10})).await.json();
    assert_eq!(first["messages"][0]["deliveries"], 1);
    assert_eq!(first["messages"][0]["payload"], json!({"n": 1}));
    assert_eq!(first["messages"][0]["id"], id);
    // Not acked: after the timeout the long poll gets it again.
    let second = pull(&s, "t", "g", &l, json!({"max": 10, "wait": "5s"}))
        .await
        .json();
    assert_eq!(second["messages"][0]["deliveries"], 2, "{second}");
    // An expired receipt is stale, not an error.
    let stale = ack(&s, "t", "g", &l, &receipts(&first)).await;
    assert_eq!(
        (stale["acked"].as_u64(), stale["stale"].as_u64()),
        (Some(0), Some(1))
    );
    // Its deliveries spent: dead-lettered when the second lease expires.
    let empty = pull(&s, "t", "g", &l, json!({"wait": "300ms"}))
        .await
        .json();
    assert_eq!(empty["messages"], json!([]));
    let dead = s.get("/v1/topics/t/groups/g/dead-letters").await.json();
    assert_eq!(dead["dead_letters"][0]["message_id"], id, "{dead}");
    assert_eq!(dead["dead_letters"][0]["attempts"], 2);
    // Redrive: pulled again with fresh deliveries, acked, gone from the list.
    let r = s
        .post_json("/v1/topics/t/groups/g/redrive", json!({}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["redriven"].as_u64()),
        (202, Some(1))
    );
    let again = pull(&s, "t", "g", &l, json!({"wait": "1s"})).await.json();
    assert_eq!(again["messages"][0]["id"], id);
    assert_eq!(again["messages"][0]["deliveries"], 1);
    let a = ack(&s, "t", "g", &l, &receipts(&again)).await;
    assert_eq!(a["acked"], 1);
    let dead = s.get("/v1/topics/t/groups/g/dead-letters").await.json();
    assert_eq!(dead["dead_letters"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_pull_is_answered_by_a_publish() {
    let s = Arc::new(TestServer::start().await);
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    s.post_json("/v1/topics/t/groups", json!({"name": "g"}))
        .await;
    let waiting = tokio::spawn({
        let (s, l) = (s.clone(), l.clone());
        async move { pull(&s, "t", "g", &l, json!({"wait": "20s"})).await.json() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    publish(&s, "t", &p, "text/plain", b"now".to_vec()).await;
    let got = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(got["messages"][0]["payload"], "now");
}

#[tokio::test]
async fn group_progress_survives_a_restart_with_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let open =
        || broker_store::DiskStore::open(dir.path(), broker_store::Options::default()).unwrap();
    let (p, l) = {
        let s = TestServer::with_store(DeliveryConfig::default(), open()).await;
        let p = s.publisher("t", "p").await;
        let l = listener(&s, "t").await;
        s.post_json(
            "/v1/topics/t/groups",
            json!({"name": "g", "start": "earliest"}),
        )
        .await;
        for n in 0..10 {
            publish(&s, "t", &p, "text/plain", n.to_string().into_bytes()).await;
        }
        // 0-4 pulled; 0, 1, 3 acked; 2 and 4 leased, never acked.
        let r = pull(&s, "t", "g", &l, json!({"max": 5})).await.json();
        let rs = receipts(&r);
        let a = ack(
            &s,
            "t",
            "g",
            &l,
            &[rs[0].clone(), rs[1].clone(), rs[3].clone()],
        )
        .await;
        assert_eq!(a["acked"], 3);
        s.stop().await;
        (p, l)
    };
    let s = TestServer::with_store(DeliveryConfig::default(), open()).await;
    let r = pull(&s, "t", "g", &l, json!({"max": 100})).await.json();
    assert_eq!(
        offsets(&r),
        [2, 4, 5, 6, 7, 8, 9],
        "unacked again, acked never"
    );
    let _ = p;
}

#[tokio::test]
async fn a_spent_message_is_listed_as_dead_without_another_pull() {
    let s = TestServer::start().await;
    let p = s.publisher("t", "p").await;
    let l = listener(&s, "t").await;
    s.post_json(
        "/v1/topics/t/groups",
        json!({"name": "g", "ack_timeout": "100ms", "max_deliveries": 1}),
    )
    .await;
    let id = publish(&s, "t", &p, "text/plain", b"m".to_vec()).await["id"].clone();
    let first = pull(&s, "t", "g", &l, json!({"max": 10})).await.json();
    assert_eq!(first["messages"][0]["id"], id);
    // Not acked, its one delivery spent: listed once the lease expires,
    // with no pull in between.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let dead = s.get("/v1/topics/t/groups/g/dead-letters").await.json();
        if dead["dead_letters"][0]["message_id"] == id {
            assert_eq!(dead["dead_letters"][0]["attempts"], 1, "{dead}");
            break;
        }
        assert_eq!(dead["dead_letters"], json!([]), "{dead}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listed: {dead}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A group with a filter gets only what it matches, as a subscriber does:
/// the others are done with for the group at once (never leased, never
/// dead), and the filter is shown and kept.
#[tokio::test]
async fn a_group_pulls_only_what_its_filter_matches() {
    let s = TestServer::start().await;
    let publisher = s.publisher("t", "p").await;
    let token = listener(&s, "t").await;
    let r = s
        .post_json(
            "/v1/topics/t/groups",
            json!({"name": "big", "start": "earliest", "ack_timeout": "1s", "max_deliveries": 1,
                   "filter": {"event_types": ["order.*"], "expression": "payload.total >= 100"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["filter"]["event_types"], json!(["order.*"]));
    let auth = format!("Bearer {publisher}");
    for (t, total) in [
        ("order.created", 150),
        ("order.created", 20),
        ("invoice.paid", 500),
        ("order.paid", 100),
    ] {
        let r = s
            .call(
                "POST",
                "/v1/topics/t/messages",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("event-type", t),
                ],
                json!({ "total": total }).to_string(),
            )
            .await;
        assert_eq!(r.status, 202);
    }
    let pulled = pull(&s, "t", "big", &token, json!({"max": 10}))
        .await
        .json();
    assert_eq!(offsets(&pulled), [0, 3], "{pulled}");
    let types: Vec<&str> = pulled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["order.created", "order.paid"]);
    ack(&s, "t", "big", &token, &receipts(&pulled)).await;
    // Nothing left: the skipped ones are done, not owed or dead.
    let again = pull(&s, "t", "big", &token, json!({"max": 10}))
        .await
        .json();
    assert_eq!(offsets(&again), Vec::<u64>::new());
    let dead = s.get("/v1/topics/t/groups/big/dead-letters").await.json();
    assert_eq!(dead["dead_letters"], json!([]), "{dead}");
    // A bad filter is refused.
    let r = s
        .post_json(
            "/v1/topics/t/groups",
            json!({"name": "bad", "filter": {"expression": "total >"}}),
        )
        .await;
    assert_eq!(r.error_code(400), "invalid_filter");
}
