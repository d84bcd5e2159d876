//! Idempotent publishing with the real binary: keys survive `kill -9`
//! with a data dir, and replicas on one Redis share them.

mod support;

#[path = "../../broker-redis/tests/support/mod.rs"]
mod redis_support;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use redis_support::RedisServer;
use support::*;

/// Publishes `body` on topic `t` with an idempotency key.
fn publish_keyed(addr: &str, token: &str, key: &str, body: &str) -> (String, String) {
    let headers = format!("Authorization: Bearer {token}\r\nIdempotency-Key: {key}\r\n");
    http(addr, "POST", "/v1/topics/t/messages", &headers, body)
}

/// Every payload in topic `t`'s log, read page by page.
fn log_payloads(addr: &str, listener: &str) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut offset = 0;
    loop {
        let (status, body) = http(
            addr,
            "GET",
            &format!("/v1/topics/t/messages?offset={offset}&limit=1000"),
            &format!("Authorization: Bearer {listener}\r\n"),
            "",
        );
        assert!(status.contains("200"), "{status} {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let page = json["messages"].as_array().unwrap();
        if page.is_empty() {
            return payloads;
        }
        for m in page {
            payloads.push(m["payload"].as_str().unwrap_or_default().to_owned());
        }
        offset = json["next_offset"].as_u64().unwrap();
    }
}

/// Eight publishers send keyed messages until the broker is killed under
/// them. After the restart every key is sent again: each one that was
/// acknowledged is answered `200` with its first id, and in the end the
/// log holds every key's message exactly once. Small segments, so that
/// the keys are read back from sealed segments as well as the newest.
#[test]
fn keys_survive_sigkill_with_a_data_dir_and_nothing_is_published_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let args = ["--data-dir", &data_dir, "--segment-bytes", "16KiB"];
    let (mut child, addr, _, _logs) = start(&args);
    let (status, body) = register(&addr, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    assert!(status.contains("201"), "{status} {body}");
    let token = json_field(&body, "token");
    let (_, body) = register(&addr, "/v1/topics/t/listeners", r#"{"name":"l"}"#);
    let listener = json_field(&body, "token");

    // key → (payload, the id it was acknowledged with, if it was).
    type Sent = HashMap<String, (String, Option<String>)>;
    let sent = Arc::new(Mutex::new(Sent::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..8)
        .map(|i| {
            let (addr, token, sent, stop) =
                (addr.clone(), token.clone(), sent.clone(), stop.clone());
            thread::spawn(move || {
                // Bounded: at most 2,000 publishes each.
                for n in 0..2_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("p{i}-{n}");
                    let payload = format!("publisher {i} message {n}");
                    sent.lock()
                        .unwrap()
                        .insert(key.clone(), (payload.clone(), None));
                    let attempt =
                        std::panic::catch_unwind(|| publish_keyed(&addr, &token, &key, &payload));
                    if let Ok((status, body)) = attempt {
                        if status.contains("202") {
                            let id = json_field(&body, "id");
                            sent.lock().unwrap().get_mut(&key).unwrap().1 = Some(id);
                        }
                    }
                }
            })
        })
        .collect();
    let acked = |sent: &Mutex<Sent>| {
        sent.lock()
            .unwrap()
            .values()
            .filter(|v| v.1.is_some())
            .count()
    };
    let deadline = Instant::now() + PATIENCE;
    while acked(&sent) < 1_000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reaped");
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let acknowledged = sent.values().filter(|v| v.1.is_some()).count();
    assert!(acknowledged >= 1_000, "only {acknowledged} acknowledged");
    let segments = std::fs::read_dir(dir.path().join("topics/t"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(segments > 2, "only {segments} segments");

    let (_child, addr, _, _logs) = start(&args);
    let mut replayed = 0;
    for (key, (payload, id)) in &sent {
        let (status, body) = publish_keyed(&addr, &token, key, payload);
        match id {
            Some(id) => {
                assert!(
                    status.contains("200"),
                    "acknowledged {key}: {status} {body}"
                );
                assert_eq!(&json_field(&body, "id"), id, "{key}");
                replayed += 1;
            }
            // Sent when the broker died: it made it to the log or not.
            None => assert!(
                status.contains("200") || status.contains("202"),
                "{key}: {status} {body}"
            ),
        }
    }
    assert_eq!(replayed, acknowledged);
    let payloads = log_payloads(&addr, &listener);
    let distinct: HashSet<&String> = payloads.iter().collect();
    assert_eq!(distinct.len(), payloads.len(), "a message published twice");
    assert_eq!(payloads.len(), sent.len(), "every key's message, once");
}

/// Two replicas on one Redis, each sent the same key at the same moment,
/// twenty times: one message each time, one `202` and one `200` with its
/// id.
#[test]
fn two_replicas_publishing_one_key_at_once_make_one_message() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_a, a, _, _) = start(&["--redis-url", &url]);
    let (_, p) = register(&a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (_, l) = register(&a, "/v1/topics/t/listeners", r#"{"name":"l"}"#);
    let listener = json_field(&l, "token");
    let (_b, b, _, _) = start(&["--redis-url", &url]);
    for round in 0..20 {
        let key = format!("k{round}");
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<(String, String)> = [a.clone(), b.clone()]
            .into_iter()
            .map(|addr| {
                let (token, key, barrier) = (token.clone(), key.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    publish_keyed(&addr, &token, &key, &format!("round {round}"))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let mut statuses: Vec<&str> = answers
            .iter()
            .map(|(s, _)| s.split(' ').nth(1).unwrap_or(""))
            .collect();
        statuses.sort_unstable();
        assert_eq!(statuses, ["200", "202"], "round {round}: {answers:?}");
        assert_eq!(
            json_field(&answers[0].1, "id"),
            json_field(&answers[1].1, "id"),
            "round {round}"
        );
    }
    for addr in [&a, &b] {
        let payloads = log_payloads(addr, &listener);
        let expected: Vec<String> = (0..20).map(|r| format!("round {r}")).collect();
        assert_eq!(payloads, expected);
    }
    // A reused key is refused by either replica.
    for addr in [&a, &b] {
        let (status, body) = publish_keyed(addr, &token, "k0", "another payload");
        assert!(status.contains("422"), "{status} {body}");
        assert!(body.contains("idempotency_key_reused"), "{body}");
    }
}
