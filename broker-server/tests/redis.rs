//! The real binary with `--redis-url`, against a real `redis-server`
//! (started by the test on a free port; the test fails, never skips, when
//! the `redis-server` package is not installed).

mod support;

#[path = "../../broker-redis/tests/support/mod.rs"]
mod redis_support;

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use redis_support::RedisServer;
use support::*;

#[test]
fn registrations_and_the_log_survive_a_restart_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (mut child, addr, early, _logs) = start(&["--redis-url", &url]);
    assert!(
        early.iter().any(|l| l.contains("redis store opened")),
        "{early:#?}"
    );
    let (hook, deliveries) = receiver();
    let publisher = r#"{"name":"checkout"}"#;
    let subscriber = format!(r#"{{"url":"http://{hook}/hook","headers":{{"x-k":"v"}}}}"#);
    let (status, p1) = register(&addr, "/v1/topics/t/publishers", publisher);
    assert!(status.contains("201"), "{status} {p1}");
    let (status, s1) = register(&addr, "/v1/topics/t/subscribers", &subscriber);
    assert!(status.contains("201"), "{status} {s1}");
    // The default retry policy on Redis is the standard schedule, as with a
    // data dir.
    let s1_json: serde_json::Value = serde_json::from_str(&s1).unwrap();
    assert!(
        s1_json["retry"]["schedule"]
            .as_array()
            .is_some_and(|s| s.len() == 7),
        "{s1}"
    );
    let token = json_field(&p1, "token");
    let (status, body) = publish(&addr, &token, r#"{"before":"restart"}"#);
    assert!(status.contains("202"), "{status} {body}");
    assert_eq!(number(&body, "offset"), 0);
    let (_, payload) = deliveries.recv_timeout(PATIENCE).expect("a delivery");
    assert_eq!(payload, br#"{"before":"restart"}"#);
    sigterm(&child);
    assert!(wait_for_exit(&mut child).success());

    let (_child, addr, _, _logs) = start(&["--redis-url", &url]);
    // The same registrations: a replay answers 200 with the same token
    // and secret.
    for (path, body, before) in [
        ("/v1/topics/t/publishers", publisher, &p1),
        ("/v1/topics/t/subscribers", subscriber.as_str(), &s1),
    ] {
        let (status, again) = register(&addr, path, body);
        assert!(
            status.contains("200"),
            "after the restart: {status} {again}"
        );
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(before).unwrap(),
            serde_json::from_str(&again).unwrap(),
        );
        assert_eq!(a, b, "the same registration, token and secret");
    }
    let (status, body) = publish(&addr, &token, r#"{"after":"restart"}"#);
    assert!(status.contains("202"), "{status} {body}");
    assert_eq!(number(&body, "offset"), 1, "offsets go on");
    // Delivered once: the cursor was written at the graceful stop, so the
    // first message is not delivered again.
    let (headers, payload) = deliveries.recv_timeout(PATIENCE).expect("a delivery");
    assert_eq!(payload, br#"{"after":"restart"}"#);
    assert_eq!(headers["x-k"], "v");
    assert_eq!(headers["webhook-id"], json_field(&body, "id").as_str());
    let verifier = standardwebhooks::Webhook::new(&json_field(&s1, "secret")).unwrap();
    verifier
        .verify(&payload, &headers)
        .expect("signed with the same secret");
}

#[test]
fn two_processes_on_one_redis_share_the_log_and_its_offsets() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_a, a, _, _) = start(&["--redis-url", &url]);
    let (_, p) = register(&a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (_, l) = register(&a, "/v1/topics/t/listeners", r#"{"name":"l"}"#);
    let listener = json_field(&l, "token");
    // Started after the registrations: it loads them.
    let (_b, b, _, _) = start(&["--redis-url", &url]);
    let mut ids = Vec::new();
    for n in 0..20 {
        let addr = if n % 2 == 0 { &a } else { &b };
        let (status, body) = publish(addr, &token, &format!("m{n}"));
        assert!(status.contains("202"), "{status} {body}");
        assert_eq!(number(&body, "offset"), n, "one dense sequence");
        ids.push(json_field(&body, "id"));
    }
    // Either process reads every message, with the same ids.
    for addr in [&a, &b] {
        let (status, body) = http(
            addr,
            "GET",
            "/v1/topics/t/messages?offset=0&limit=100",
            &format!("Authorization: Bearer {listener}\r\n"),
            "",
        );
        assert!(status.contains("200"), "{status} {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let got: Vec<&str> = json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, ids);
    }
}

/// Runs the binary expecting it to exit at once; returns its status, what
/// it logged and how long it took.
fn refused(args: &[&str]) -> (std::process::ExitStatus, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("BROKER_DATA_DIR")
        .env_remove("BROKER_REDIS_URL")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut running = Running(child);
    let status = wait_for_exit(&mut running);
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    (status, log, started.elapsed())
}

#[test]
fn an_unreachable_redis_exits_at_once_naming_it_without_the_password() {
    let port = redis_support::closed_port();
    let url = format!("redis://app:hunter2@127.0.0.1:{port}/0");
    let (status, log, took) = refused(&["--redis-url", &url]);
    assert!(!status.success(), "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        log.contains(&format!(
            "cannot reach Redis at redis://app:***@127.0.0.1:{port}/0"
        )),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
    // And never together with a data dir.
    let dir = tempfile::tempdir().unwrap();
    let (status, log, _) = refused(&[
        "--redis-url",
        "redis://127.0.0.1:6379/",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(log.contains("cannot be used with"), "{log}");
}

/// Redis gone while the broker runs: `/readyz` and publishes say `503`;
/// Redis back (same data): ready again, publishing goes on, and every
/// acknowledged message is delivered.
#[test]
fn readiness_follows_redis() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (_child, addr, _, _logs) = start(&["--redis-url", &url]);
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/topics/t/publishers",
        "Content-Type: application/json\r\n",
        r#"{"name":"p"}"#,
    );
    assert!(status.contains("201"), "{status} {body}");
    let token = json_field(&body, "token");
    let auth = format!("Authorization: Bearer {token}\r\n");
    assert!(http(&addr, "GET", "/readyz", "", "").0.contains("200"));
    let (hook, deliveries) = receiver();
    let (status, body) = register(
        &addr,
        "/v1/topics/t/subscribers",
        &format!(r#"{{"url":"http://{hook}/hook"}}"#),
    );
    assert!(status.contains("201"), "{status} {body}");
    let mut acknowledged = std::collections::HashSet::new();
    for n in 0..5 {
        let (status, body) = publish(&addr, &token, &format!("before{n}"));
        assert!(status.contains("202"), "{status} {body}");
        acknowledged.insert(json_field(&body, "id"));
    }
    let mut delivered = std::collections::HashSet::new();
    while delivered.len() < 5 {
        let (headers, _) = deliveries.recv_timeout(PATIENCE).expect("a delivery");
        delivered.insert(headers["webhook-id"].to_str().unwrap().to_owned());
    }

    redis.kill();
    let (status, body) = http(&addr, "GET", "/readyz", "", "");
    assert!(status.contains("503"), "{status}");
    assert!(body.contains("store_unavailable"), "{body}");
    let (status, _) = http(&addr, "POST", "/v1/topics/t/messages", &auth, "m");
    assert!(status.contains("503"), "{status}");

    redis.restart();
    let deadline = Instant::now() + PATIENCE;
    while !http(&addr, "GET", "/readyz", "", "").0.contains("200") {
        assert!(
            Instant::now() < deadline,
            "not ready again after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in 0..5 {
        let (status, body) = publish(&addr, &token, &format!("after{n}"));
        assert!(status.contains("202"), "{status} {body}");
        acknowledged.insert(json_field(&body, "id"));
    }
    // Deliveries resume: every acknowledged message arrives.
    while delivered.len() < acknowledged.len() {
        let (headers, _) = deliveries
            .recv_timeout(PATIENCE)
            .expect("deliveries resume after Redis is back");
        delivered.insert(headers["webhook-id"].to_str().unwrap().to_owned());
    }
    assert_eq!(delivered, acknowledged);
}

/// `kill -9` of a replica while 16 connections publish through it and
/// through a second replica: every acknowledged message is in the shared
/// log with its id and offset, the offsets are dense, and a restarted
/// replica goes on after them.
#[test]
fn sigkill_of_a_replica_under_load_loses_no_acknowledged_publish() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    };
    let redis = RedisServer::start();
    let url = redis.url();
    let (mut victim, a, _, _) = start(&["--redis-url", &url]);
    let (_b_child, b, _, _) = start(&["--redis-url", &url]);
    let (_, body) = register(&a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&body, "token");
    let (_, body) = register(&a, "/v1/topics/t/listeners", r#"{"name":"l"}"#);
    let listener = json_field(&body, "token");
    // B knows the publisher (a publish there answers 202).
    let deadline = Instant::now() + PATIENCE;
    while !publish(&b, &token, "warm-up").0.contains("202") {
        assert!(Instant::now() < deadline, "B never knew the publisher");
        std::thread::sleep(Duration::from_millis(20));
    }
    let acked = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..16)
        .map(|i| {
            let addr = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (token, acked, stop) = (token.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                // Bounded: at most 2,000 publishes each.
                while !stop.load(Ordering::Relaxed) && n < 2_000 {
                    n += 1;
                    let attempt = std::panic::catch_unwind(|| {
                        publish(&addr, &token, &format!("publisher {i} message {n}"))
                    });
                    if let Ok((status, body)) = attempt {
                        if status.contains("202") {
                            acked
                                .lock()
                                .unwrap()
                                .push((json_field(&body, "id"), number(&body, "offset")));
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    // B goes on a little after the kill, then everything stops.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "only {} acknowledged", acked.len());

    // Restarted, the replica publishes after everything acknowledged.
    let (_a_child, a, _, _) = start(&["--redis-url", &url]);
    let (status, body) = publish(&a, &token, "after the restart");
    assert!(status.contains("202"), "{status} {body}");
    let next = number(&body, "offset");
    let max_acked = acked.iter().map(|(_, o)| *o).max().unwrap();
    assert!(
        next > max_acked,
        "offset {next} reused (acked up to {max_acked})"
    );
    // The whole log, read through B: dense, every acknowledged id there.
    let mut logged: Vec<(String, u64)> = Vec::new();
    while (logged.len() as u64) <= next {
        let (status, body) = http(
            &b,
            "GET",
            &format!("/v1/topics/t/messages?offset={}&limit=1000", logged.len()),
            &format!("Authorization: Bearer {listener}\r\n"),
            "",
        );
        assert!(status.contains("200"), "{status} {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let page = json["messages"].as_array().unwrap();
        assert!(!page.is_empty(), "the log ends at {}", logged.len());
        logged.extend(page.iter().map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["offset"].as_u64().unwrap(),
            )
        }));
    }
    let offsets: Vec<u64> = logged.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, (0..=next).collect::<Vec<_>>(), "offsets are dense");
    let ids: std::collections::HashMap<&String, u64> =
        logged.iter().map(|(id, o)| (id, *o)).collect();
    for (id, offset) in &acked {
        assert_eq!(ids.get(id), Some(offset), "acknowledged {id} is lost");
    }
}

/// Polls `addr`'s view of subscriber `path` until `ok` holds (bounded).
fn await_subscriber(addr: &str, path: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = http(addr, "GET", path, "", "");
        if status.contains("200") && ok(&serde_json::from_str(&body).unwrap()) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}: {status} {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A subscriber changed with `PATCH` on one replica is changed on the
/// other: it shows the new URL and, whichever replica delivers, the
/// messages published on either go there, signed with the same secret.
#[test]
fn a_subscriber_patched_on_one_replica_is_changed_on_the_other() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_a, a, _, _) = start(&["--redis-url", &url]);
    let (_b, b, _, _) = start(&["--redis-url", &url]);
    let (old_hook, old) = receiver();
    let (new_hook, new) = receiver();
    let (_, p) = register(&a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (status, s) = register(
        &a,
        "/v1/topics/t/subscribers",
        &format!(r#"{{"url":"http://{old_hook}/old"}}"#),
    );
    assert!(status.contains("201"), "{status} {s}");
    let path = format!("/v1/topics/t/subscribers/{}", json_field(&s, "id"));
    await_subscriber(&b, &path, |_| true);

    let (status, body) = http(
        &a,
        "PATCH",
        &path,
        "Content-Type: application/json\r\n",
        &format!(r#"{{"url":"http://{new_hook}/new","headers":{{"x-moved":"yes"}}}}"#),
    );
    assert!(status.contains("200"), "{status} {body}");
    let moved = format!("http://{new_hook}/new");
    await_subscriber(&b, &path, |d| d["url"] == moved.as_str());

    for n in 0..6 {
        let addr = if n % 2 == 0 { &a } else { &b };
        let (status, body) = publish(addr, &token, &format!("m{n}"));
        assert!(status.contains("202"), "{status} {body}");
    }
    let verifier = standardwebhooks::Webhook::new(&json_field(&s, "secret")).unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        let (headers, payload) = new.recv_timeout(PATIENCE).expect("a delivery");
        assert_eq!(headers["x-moved"], "yes");
        verifier
            .verify(&payload, &headers)
            .expect("the same secret");
        got.push(String::from_utf8(payload).unwrap());
    }
    got.sort();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert!(old.try_recv().is_err(), "the old URL got nothing");
}

/// The attempt log is shared: whichever replica delivers, both list the
/// same attempts, newest first.
#[test]
fn both_replicas_list_the_same_attempt_log() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_a, a, _, _) = start(&["--redis-url", &url]);
    let (_b, b, _, _) = start(&["--redis-url", &url]);
    let (hook, hooked) = receiver();
    let (_, p) = register(&a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (status, s) = register(
        &a,
        "/v1/topics/t/subscribers",
        &format!(r#"{{"url":"http://{hook}/"}}"#),
    );
    assert!(status.contains("201"), "{status} {s}");
    let path = format!("/v1/topics/t/subscribers/{}", json_field(&s, "id"));
    await_subscriber(&b, &path, |_| true);
    for n in 0..6 {
        let addr = if n % 2 == 0 { &a } else { &b };
        let (status, body) = publish(addr, &token, &format!("m{n}"));
        assert!(status.contains("202"), "{status} {body}");
    }
    for _ in 0..6 {
        hooked.recv_timeout(PATIENCE).expect("a delivery");
    }
    // Awaited (bounded): the delivering replica writes its attempts
    // behind, within its flush period.
    let listed = |addr: &str| {
        let (status, body) = http(addr, "GET", &format!("{path}/attempts"), "", "");
        assert!(status.contains("200"), "{status} {body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        page["attempts"].as_array().unwrap().clone()
    };
    let deadline = Instant::now() + PATIENCE;
    let (on_a, on_b) = loop {
        let (on_a, on_b) = (listed(&a), listed(&b));
        if on_a.len() == 6 && on_b.len() == 6 {
            break (on_a, on_b);
        }
        assert!(
            Instant::now() < deadline,
            "a lists {}, b lists {}",
            on_a.len(),
            on_b.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(on_a, on_b);
    let offsets: Vec<u64> = on_a.iter().map(|x| x["offset"].as_u64().unwrap()).collect();
    let mut sorted = offsets.clone();
    sorted.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(sorted, [5, 4, 3, 2, 1, 0]);
    assert!(on_a.iter().all(|x| x["status"] == 200));
}
