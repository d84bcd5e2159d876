//! The attempt log (issue 22): every delivery attempt, listed newest
//! first by `GET /v1/topics/{topic}/subscribers/{id}/attempts`, with its
//! status, error, duration and the start of the endpoint's response.

mod common;

use std::time::Duration;

use broker_core::Limits;
use broker_delivery::DeliveryConfig;
use broker_http::{ApiConfig, ServerConfig};
use common::{Behaviour, Sink, TestServer};
use serde_json::{json, Value};

/// A server keeping `keep` attempts per subscriber, whose retries are
/// quick and whose circuit never opens.
async fn server(keep: usize) -> TestServer {
    TestServer::with_all(
        ApiConfig::default(),
        DeliveryConfig {
            retry_base_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(20),
            circuit_after: 0,
            max_in_flight: 1,
            ..DeliveryConfig::default()
        },
        ServerConfig::default(),
        Limits {
            attempt_log: keep,
            ..Limits::default()
        },
    )
    .await
}

async fn list(s: &TestServer, topic: &str, id: &str, query: &str) -> Value {
    let r = s
        .get(&format!(
            "/v1/topics/{topic}/subscribers/{id}/attempts?{query}"
        ))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

fn seqs(page: &Value) -> Vec<(String, u64)> {
    page["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["message_id"].as_str().unwrap().to_owned(),
                a["attempt"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn attempts_are_listed_newest_first_filtered_and_paged() {
    let s = server(1_000).await;
    let flaky = Sink::start(Behaviour::script(&[(500, None), (503, None)])).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": flaky.url("/"), "retry": {"max_attempts": 3}}),
        )
        .await;
    let id = sub["id"].as_str().unwrap();
    let mut ids = Vec::new();
    for body in ["a", "b", "c"] {
        let r = s.publish("t", &token, "text/plain", body).await;
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
        s.settle().await;
    }

    let all = list(&s, "t", id, "").await;
    assert_eq!(
        seqs(&all),
        [
            (ids[2].clone(), 1),
            (ids[1].clone(), 1),
            (ids[0].clone(), 3),
            (ids[0].clone(), 2),
            (ids[0].clone(), 1),
        ],
        "{all}"
    );
    assert_eq!(all["next"], Value::Null);
    let newest = &all["attempts"][0];
    assert!(newest["id"].as_str().unwrap().starts_with("att_"));
    assert_eq!(newest["offset"], 2);
    assert_eq!(newest["status"], 200);
    assert_eq!(newest["error"], Value::Null);
    assert!(newest["duration_ms"].is_u64());
    let at = broker_core::time::parse_rfc3339(newest["at"].as_str().unwrap()).unwrap();
    assert!(at.elapsed().unwrap_or_default() < Duration::from_secs(60));
    let statuses: Vec<_> = all["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 503, 500]);

    let failed = list(&s, "t", id, "status=failed").await;
    assert_eq!(seqs(&failed), [(ids[0].clone(), 2), (ids[0].clone(), 1)]);
    let succeeded = list(&s, "t", id, "status=succeeded").await;
    assert_eq!(succeeded["attempts"].as_array().unwrap().len(), 3);
    let first = list(&s, "t", id, &format!("message_id={}", ids[0])).await;
    assert_eq!(
        seqs(&first),
        [
            (ids[0].clone(), 3),
            (ids[0].clone(), 2),
            (ids[0].clone(), 1)
        ]
    );

    // Pages of two: the next of one is the before of the next.
    let mut pages = Vec::new();
    let mut before = String::new();
    loop {
        let page = list(&s, "t", id, &format!("limit=2{before}")).await;
        pages.extend(seqs(&page));
        match page["next"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => break,
        }
    }
    assert_eq!(pages, seqs(&all));
}

#[tokio::test]
async fn what_the_endpoint_answered_is_kept_and_why_no_answer_came() {
    let s = server(1_000).await;
    let token = s.publisher("t", "p").await;
    let explains = Sink::start(Behaviour::Reply(422, b"{\"error\":\"amount is missing\"}")).await;
    let binary = Sink::start(Behaviour::Reply(400, b"\xff\xfe\x00bad")).await;
    let huge = Sink::start(Behaviour::Huge(10_000)).await;
    let dead = common::dead_port().await;
    let mut subs = Vec::new();
    for url in [
        explains.url("/"),
        binary.url("/"),
        huge.url("/"),
        format!("http://{dead}/"),
    ] {
        let sub = s.subscriber("t", json!({ "url": url })).await;
        subs.push(sub["id"].as_str().unwrap().to_owned());
    }
    s.publish("t", &token, "application/json", "{\"n\":1}")
        .await;
    s.settle().await;

    let one = |page: Value| page["attempts"][0].clone();
    let a = one(list(&s, "t", &subs[0], "").await);
    assert_eq!(a["status"], 422);
    assert_eq!(
        a["response"],
        json!({"body": "{\"error\":\"amount is missing\"}", "encoding": "text"})
    );
    let a = one(list(&s, "t", &subs[1], "").await);
    assert_eq!(a["status"], 400);
    assert_eq!(a["response"]["encoding"], "base64");
    assert_eq!(a["response"]["body"], "//4AYmFk");
    let a = one(list(&s, "t", &subs[2], "").await);
    assert_eq!(a["status"], 200);
    let body = a["response"]["body"].as_str().unwrap();
    assert_eq!(body.len(), 4096, "the first 4 KiB");
    assert!(body.bytes().all(|b| b == b'z'));
    let a = one(list(&s, "t", &subs[3], "").await);
    assert_eq!(a["status"], Value::Null);
    assert_eq!(a["response"], Value::Null);
    let error = a["error"].as_str().unwrap();
    assert!(error.starts_with("connection refused"), "{error}");
}

#[tokio::test]
async fn the_log_keeps_its_newest_attempts_and_none_when_off() {
    for keep in [3, 0] {
        let s = server(keep).await;
        let sink = Sink::ok().await;
        let token = s.publisher("t", "p").await;
        let sub = s.subscriber("t", json!({"url": sink.url("/")})).await;
        let id = sub["id"].as_str().unwrap();
        for _ in 0..5 {
            s.publish("t", &token, "text/plain", "m").await;
        }
        s.settle().await;
        let page = list(&s, "t", id, "").await;
        let offsets: Vec<_> = page["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["offset"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = if keep == 3 { vec![4, 3, 2] } else { vec![] };
        assert_eq!(offsets, want, "keep {keep}: {page}");
    }
}

#[tokio::test]
async fn bad_listings_are_refused_and_unknown_subscribers_are_404() {
    let s = server(1_000).await;
    let sub = s
        .subscriber("t", json!({"url": "http://127.0.0.1:9/"}))
        .await;
    let id = sub["id"].as_str().unwrap();
    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "status=ok",
        "before=msg_1",
    ] {
        let r = s
            .get(&format!("/v1/topics/t/subscribers/{id}/attempts?{query}"))
            .await;
        assert_eq!(r.error_code(400), "invalid_query", "{query}");
    }
    for path in [
        "/v1/topics/t/subscribers/sub_nope/attempts",
        "/v1/topics/nope/subscribers/sub_nope/attempts",
    ] {
        assert_eq!(s.get(path).await.error_code(404), "subscriber_not_found");
    }
    let r = s
        .call(
            "POST",
            &format!("/v1/topics/t/subscribers/{id}/attempts"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
}

/// `GET …/subscribers/{id}` counts the attempts of the last 5 minutes,
/// hour and day, with their latency.
#[tokio::test]
async fn the_subscriber_detail_has_its_endpoint_stats() {
    let s = server(1_000).await;
    let token = s.publisher("t", "p").await;
    let flaky = Sink::start(Behaviour::script(&[(500, None), (500, None)])).await;
    let slow = Sink::start(Behaviour::Slow(Duration::from_millis(150))).await;
    let a = s
        .subscriber(
            "t",
            json!({"url": flaky.url("/"), "retry": {"max_attempts": 3}}),
        )
        .await;
    let b = s.subscriber("t", json!({"url": slow.url("/")})).await;
    let idle = s.subscriber("u", json!({"url": slow.url("/u")})).await;
    for _ in 0..3 {
        s.publish("t", &token, "text/plain", "m").await;
    }
    s.settle().await;
    let got = stats(&s, "t", &a).await;
    for window in ["last_5m", "last_1h", "last_24h"] {
        assert_eq!(got[window]["succeeded"], 3, "{got}");
        assert_eq!(got[window]["failed"], 2, "{got}");
        assert!(got[window]["p50_ms"].is_u64() && got[window]["p99_ms"].is_u64());
    }
    let got = stats(&s, "t", &b).await;
    let p50 = got["last_1h"]["p50_ms"].as_u64().unwrap();
    assert!((110..=400).contains(&p50), "{got}");
    let got = stats(&s, "u", &idle).await;
    assert_eq!(
        got["last_24h"],
        json!({"succeeded": 0, "failed": 0, "p50_ms": null, "p99_ms": null})
    );
}

async fn stats(s: &TestServer, topic: &str, sub: &Value) -> Value {
    let id = sub["id"].as_str().unwrap();
    let r = s.get(&format!("/v1/topics/{topic}/subscribers/{id}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["stats"].clone()
}
