//! Three real broker processes on one real `redis-server` (started by the
//! test on a free port; the test fails, never skips, when the
//! `redis-server` package is missing) behave as one broker: registrations,
//! deregistrations, publishes and live listeners cross replicas, each
//! subscriber is delivered by one replica at a time, and a replica killed
//! or stopped loses nothing.

mod support;

#[path = "../../broker-redis/tests/support/mod.rs"]
mod redis_support;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use redis_support::RedisServer;
use support::*;

/// Three replicas on `url`, with short leases so a takeover is quick.
fn replicas(url: &str) -> Vec<(Running, String, mpsc::Receiver<String>)> {
    (0..3)
        .map(|_| {
            let (child, addr, _, logs) = start(&["--redis-url", url, "--lease-ttl", "3s"]);
            (child, addr, logs)
        })
        .collect()
}

fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, "", "");
    assert!(status.contains("200"), "{path}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `condition` every 20 ms until it holds; fails after `PATIENCE`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// How many subscribers replica `addr` knows on topic `t`.
fn subscribers_on(addr: &str) -> usize {
    let (status, body) = http(addr, "GET", "/v1/topics/t", "", "");
    if !status.contains("200") {
        return 0;
    }
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["subscribers"].as_array().map_or(0, Vec::len)
}

/// The webhook ids received until `n` distinct ones came; panics on a
/// duplicate when `once`.
fn collect_ids(
    deliveries: &mpsc::Receiver<(http::HeaderMap, Vec<u8>)>,
    n: usize,
    once: bool,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < n {
        let (headers, _) = deliveries
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("only {} of {n} delivered", seen.len()));
        let id = headers["webhook-id"].to_str().unwrap().to_owned();
        let count = seen.entry(id.clone()).or_default();
        *count += 1;
        assert!(!once || *count == 1, "{id} delivered twice");
    }
    seen
}

#[test]
fn one_broker_across_three_replicas_delivers_once_and_deregisters_everywhere() {
    let redis = RedisServer::start();
    let url = redis.url();
    let nodes = replicas(&url);
    let (a, b, c) = (&nodes[0].1, &nodes[1].1, &nodes[2].1);
    let (hook, deliveries) = receiver();

    // Registered on A ...
    let (status, p) = register(a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    assert!(status.contains("201"), "{status} {p}");
    let token = json_field(&p, "token");
    let body = format!(r#"{{"url":"http://{hook}/hook"}}"#);
    let (status, s) = register(a, "/v1/topics/t/subscribers", &body);
    assert!(status.contains("201"), "{status} {s}");
    let subscriber = json_field(&s, "id");
    // ... known on B and C within the documented time.
    let started = Instant::now();
    wait_until("B and C know the subscriber", || {
        subscribers_on(b) == 1 && subscribers_on(c) == 1
    });
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // A replayed registration on another replica finds the same one.
    let (status, again) = register(c, "/v1/topics/t/subscribers", &body);
    assert!(status.contains("200"), "{status} {again}");
    assert_eq!(json_field(&again, "id"), subscriber);

    // Published on B and C: one dense sequence, each delivered once.
    let mut ids = HashSet::new();
    for n in 0..20 {
        let addr = if n % 2 == 0 { b } else { c };
        let (status, body) = publish(addr, &token, &format!("m{n}"));
        assert!(status.contains("202"), "{status} {body}");
        assert_eq!(number(&body, "offset"), n);
        ids.insert(json_field(&body, "id"));
    }
    let got = collect_ids(&deliveries, 20, true);
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), ids);
    // Exactly once: nothing more comes (a bounded look for duplicates).
    assert!(
        deliveries.recv_timeout(Duration::from_secs(1)).is_err(),
        "a message was delivered twice"
    );
    // One replica delivers the subscriber.
    let delivering: Vec<u64> = nodes
        .iter()
        .map(|(_, addr, _)| get_json(addr, "/healthz")["delivering"].as_u64().unwrap())
        .collect();
    assert_eq!(delivering.iter().sum::<u64>(), 1, "{delivering:?}");
    // The same in the metrics.
    let leases: Vec<String> = nodes
        .iter()
        .map(|(_, addr, _)| {
            let (_, text) = http(addr, "GET", "/metrics", "", "");
            text.lines()
                .find(|l| l.starts_with("broker_delivery_leases "))
                .unwrap_or_else(|| panic!("no broker_delivery_leases in {text}"))
                .to_owned()
        })
        .collect();
    let total: f64 = leases
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 1.0, "{leases:?}");

    // Deregistered on C: gone everywhere, and nothing is delivered from
    // any replica.
    let (status, body) = http(
        c,
        "DELETE",
        &format!("/v1/topics/t/subscribers/{subscriber}"),
        "",
        "",
    );
    assert!(status.contains("204"), "{status} {body}");
    wait_until("A and B forget the subscriber", || {
        subscribers_on(a) == 0 && subscribers_on(b) == 0
    });
    for addr in [a, b, c] {
        let (status, body) = publish(addr, &token, "after");
        assert!(status.contains("202"), "{status} {body}");
        assert_eq!(number(&body, "subscribers"), 0, "{body}");
    }
    assert!(
        deliveries.recv_timeout(Duration::from_secs(1)).is_err(),
        "delivered after the deregistration"
    );

    // The topic deleted on B: gone on A and C, its publisher with it.
    let (status, body) = http(b, "DELETE", "/v1/topics/t", "", "");
    assert!(status.contains("204"), "{status} {body}");
    wait_until("A and C forget the topic", || {
        [a, c]
            .iter()
            .all(|addr| http(addr, "GET", "/v1/topics/t", "", "").0.contains("404"))
    });
    let (status, body) = publish(c, &token, "gone");
    assert!(status.contains("401"), "{status} {body}");
}

/// Opens an event stream on `addr` and hands over each `data:` line.
fn sse(addr: &str, path: &str) -> mpsc::Receiver<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                if tx.send(data.trim().to_owned()).is_err() {
                    break;
                }
            } else if line.starts_with("HTTP/1.1") && tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn a_live_listener_on_one_replica_gets_what_another_publishes() {
    let redis = RedisServer::start();
    let url = redis.url();
    let nodes = replicas(&url);
    let (a, b) = (&nodes[0].1, &nodes[1].1);
    let (_, p) = register(a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (_, l) = register(a, "/v1/topics/t/listeners", r#"{"name":"l"}"#);
    let listener = json_field(&l, "token");
    // Published before the listener connects: its replay.
    let (status, body) = publish(a, &token, "before");
    assert!(status.contains("202"), "{status} {body}");
    wait_until("B knows the listener", || {
        let (status, _) = http(
            b,
            "GET",
            "/v1/topics/t/messages?offset=0",
            &format!("Authorization: Bearer {listener}\r\n"),
            "",
        );
        status.contains("200")
    });
    let events = sse(
        b,
        &format!("/v1/topics/t/events?access_token={listener}&last_n=1"),
    );
    let status = events.recv_timeout(PATIENCE).expect("a status line");
    assert!(status.contains("200"), "{status}");
    let next = |what: &str| {
        events
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no event for {what}"))
    };
    assert!(next("the replay").contains("before"));
    for n in 0..5 {
        let (status, body) = publish(a, &token, &format!("live{n}"));
        assert!(status.contains("202"), "{status} {body}");
        let event = next("a publish on A");
        assert!(event.contains(&format!("live{n}")), "{event}");
    }
    // A long poll on B is answered by a publish on A.
    let poll = {
        let (b, listener) = (b.clone(), listener.clone());
        thread::spawn(move || {
            http(
                &b,
                "GET",
                "/v1/topics/t/messages?offset=6&wait=20s",
                &format!("Authorization: Bearer {listener}\r\n"),
                "",
            )
        })
    };
    // Give the poll time to wait (it answers at once if it is late).
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (status, body) = publish(a, &token, "polled");
    assert!(status.contains("202"), "{status} {body}");
    let (status, body) = poll.join().unwrap();
    assert!(
        status.contains("200") && body.contains("polled"),
        "{status} {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the long poll was not woken by the publish on A"
    );
}

#[test]
fn killing_the_replica_that_delivers_a_slow_subscriber_loses_nothing() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut nodes = replicas(&url);
    let a = nodes[0].1.clone();
    let (hook, deliveries) = slow_receiver(Duration::from_millis(20));
    let (_, p) = register(&a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (status, s) = register(
        &a,
        "/v1/topics/t/subscribers",
        &format!(r#"{{"url":"http://{hook}/hook","ordered":true}}"#),
    );
    assert!(status.contains("201"), "{status} {s}");
    wait_until("every replica knows the subscriber", || {
        nodes.iter().all(|(_, addr, _)| subscribers_on(addr) == 1)
    });
    let mut ids = HashSet::new();
    for n in 0..150 {
        let (status, body) = publish(&a, &token, &format!("m{n}"));
        assert!(status.contains("202"), "{status} {body}");
        ids.insert(json_field(&body, "id"));
    }
    // Mid-stream, the owner dies.
    let mut seen: HashMap<String, usize> = collect_ids(&deliveries, 30, false);
    let owner = nodes
        .iter()
        .position(|(_, addr, _)| get_json(addr, "/healthz")["delivering"].as_u64() == Some(1))
        .expect("one replica delivers the subscriber");
    let killed = Instant::now();
    nodes[owner].0 .0.kill().unwrap();
    nodes[owner].0 .0.wait().unwrap();
    let rest: Vec<_> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, (_, addr, _))| addr.clone())
        .collect();
    // Every message arrives; a few may come twice (in flight at the kill).
    while seen.len() < ids.len() {
        let (headers, _) = deliveries.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "only {} of {} delivered {:?} after the kill",
                seen.len(),
                ids.len(),
                killed.elapsed()
            )
        });
        *seen
            .entry(headers["webhook-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), ids);
    let twice = seen.values().filter(|&&n| n > 1).count();
    // Ordered: one in flight at a time, plus what the last cursor commit
    // (every 50 ms, flushed every 100 ms) had not recorded yet.
    assert!(twice <= 20, "{twice} delivered twice");
    let now_delivering: u64 = rest
        .iter()
        .map(|addr| get_json(addr, "/healthz")["delivering"].as_u64().unwrap())
        .sum();
    assert_eq!(now_delivering, 1, "taken over by one replica");
}

#[test]
fn a_graceful_scale_down_hands_deliveries_over_and_loses_nothing() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut nodes = replicas(&url);
    let a = nodes[0].1.clone();
    let (_, p) = register(&a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    // Six subscribers, one receiver each: spread over the replicas.
    let mut receivers = Vec::new();
    for _ in 0..6 {
        let (hook, deliveries) = slow_receiver(Duration::from_millis(5));
        let (status, s) = register(
            &a,
            "/v1/topics/t/subscribers",
            &format!(r#"{{"url":"http://{hook}/hook"}}"#),
        );
        assert!(status.contains("201"), "{status} {s}");
        receivers.push(deliveries);
    }
    wait_until("the subscribers are spread and delivered", || {
        let counts: Vec<u64> = nodes
            .iter()
            .map(|(_, addr, _)| get_json(addr, "/healthz")["delivering"].as_u64().unwrap())
            .collect();
        // Evenly: two each.
        counts == [2, 2, 2]
    });
    let mut ids = HashSet::new();
    let publish_some = |ids: &mut HashSet<String>, from: usize, addr: &str| {
        for n in from..from + 50 {
            let (status, body) = publish(addr, &token, &format!("m{n}"));
            assert!(status.contains("202"), "{status} {body}");
            ids.insert(json_field(&body, "id"));
        }
    };
    publish_some(&mut ids, 0, &a);
    // The replica delivering the most stops gracefully while messages
    // are still on their way.
    let busiest = (1..3)
        .max_by_key(|&i| get_json(&nodes[i].1, "/healthz")["delivering"].as_u64())
        .unwrap();
    sigterm(&nodes[busiest].0);
    assert!(wait_for_exit(&mut nodes[busiest].0).success());
    publish_some(&mut ids, 50, &a);
    // The two left deliver all six.
    wait_until("the other two deliver all six, three each", || {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != busiest)
            .all(|(_, (_, addr, _))| get_json(addr, "/healthz")["delivering"].as_u64() == Some(3))
    });
    // Handed over with the outcomes of what was in flight: none twice.
    for deliveries in &receivers {
        let got = collect_ids(deliveries, ids.len(), true);
        assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), ids);
    }
}

/// A consumer group pulled through three replicas: leases are disjoint
/// across replicas, an ack on one replica counts for a lease taken on
/// another, a lease that expires is delivered again through any replica,
/// and no acked message comes again.
#[test]
fn a_consumer_group_is_one_group_across_replicas() {
    let redis = RedisServer::start();
    let url = redis.url();
    let nodes = replicas(&url);
    let (a, b, c) = (&nodes[0].1, &nodes[1].1, &nodes[2].1);
    let (_, p) = register(a, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (_, l) = register(a, "/v1/topics/t/listeners", r#"{"name":"l"}"#);
    let listener = json_field(&l, "token");
    let (status, body) = register(
        a,
        "/v1/topics/t/groups",
        r#"{"name":"g","start":"earliest","ack_timeout":"2s","max_deliveries":5}"#,
    );
    assert!(status.contains("201"), "{status} {body}");
    for n in 0..30 {
        let (status, body) = publish(a, &token, &n.to_string());
        assert!(status.contains("202"), "{status} {body}");
    }
    let auth = format!("Authorization: Bearer {listener}\r\nContent-Type: application/json\r\n");
    let pull = |addr: &str, max: usize| -> Option<Vec<(u64, String)>> {
        let (status, body) = http(
            addr,
            "POST",
            "/v1/topics/t/groups/g/pull",
            &auth,
            &format!(r#"{{"max":{max}}}"#),
        );
        if status.contains("404") {
            return None; // this replica does not know the group yet
        }
        assert!(status.contains("200"), "{status} {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        Some(
            body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["offset"].as_u64().unwrap(),
                        m["receipt"].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
        )
    };
    let ack = |addr: &str, receipts: &[&String]| -> u64 {
        let list: Vec<String> = receipts.iter().map(|r| format!("\"{r}\"")).collect();
        let (status, body) = http(
            addr,
            "POST",
            "/v1/topics/t/groups/g/ack",
            &auth,
            &format!(r#"{{"receipts":[{}]}}"#, list.join(",")),
        );
        assert!(status.contains("200"), "{status} {body}");
        number(&body, "acked")
    };
    wait_until("B and C know the group", || {
        [b, c].iter().all(|addr| {
            let (status, _) = http(addr, "GET", "/v1/topics/t/groups/g/dead-letters", &auth, "");
            status.contains("200")
        })
    });
    // Pulled through each replica in turn: disjoint.
    let mut leased: Vec<(u64, String)> = Vec::new();
    for addr in [a, b, c] {
        leased.extend(pull(addr, 10).expect("the group"));
    }
    let mut offsets: Vec<u64> = leased.iter().map(|l| l.0).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..30).collect::<Vec<_>>(), "disjoint, none twice");
    // Acked through a replica other than the one that leased each: the
    // even offsets.
    let evens: Vec<&String> = leased
        .iter()
        .filter(|l| l.0 % 2 == 0)
        .map(|l| &l.1)
        .collect();
    assert_eq!(ack(c, &evens[..8]), 8);
    assert_eq!(ack(b, &evens[8..]), 7);
    // Acked twice: stale.
    assert_eq!(ack(a, &evens[..3]), 0);
    // The odd ones' leases expire: delivered again, through any replica,
    // and never an acked one.
    let mut again: Vec<u64> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while again.len() < 15 {
        assert!(Instant::now() < deadline, "only {again:?} came back");
        for addr in [a, b, c] {
            let got = pull(addr, 5).expect("the group");
            let receipts: Vec<&String> = got.iter().map(|l| &l.1).collect();
            if !receipts.is_empty() {
                assert_eq!(ack(addr, &receipts), receipts.len() as u64);
            }
            again.extend(got.iter().map(|l| l.0));
        }
        thread::sleep(Duration::from_millis(100));
    }
    again.sort_unstable();
    assert_eq!(again, (0..30).filter(|o| o % 2 == 1).collect::<Vec<_>>());
}

/// A token issued by one replica works on another at once, even before
/// the announcement of it arrived there: the replica that does not know
/// it reads it from Redis.
#[test]
fn a_token_issued_by_one_replica_works_on_another_at_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_a_child, a, _, _) = start(&["--redis-url", &url]);
    let (_b_child, b, _, _) = start(&["--redis-url", &url]);
    for n in 0..20 {
        let (status, p) = register(
            &a,
            "/v1/topics/t/publishers",
            &format!(r#"{{"name":"p{n}"}}"#),
        );
        assert!(status.contains("201"), "{status} {p}");
        let (status, body) = publish(&b, &json_field(&p, "token"), "x");
        assert!(
            status.contains("202"),
            "publisher {n} on B: {status} {body}"
        );
        let (status, l) = register(
            &a,
            "/v1/topics/t/listeners",
            &format!(r#"{{"name":"l{n}"}}"#),
        );
        assert!(status.contains("201"), "{status} {l}");
        let (status, body) = http(
            &b,
            "GET",
            "/v1/topics/t/messages?offset=0&limit=1",
            &format!("Authorization: Bearer {}\r\n", json_field(&l, "token")),
            "",
        );
        assert!(status.contains("200"), "listener {n} on B: {status} {body}");
    }
    // A token of no registration stays refused.
    let (status, _) = publish(&b, "pub_000000000000000000000000.nope", "x");
    assert!(status.contains("401"), "{status}");
}

/// The same subscriber (or publisher) registered at the same moment on two
/// replicas is one registration: both answer with the same id.
#[test]
fn a_registration_replayed_on_two_replicas_at_once_makes_one() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_a_child, a, _, _) = start(&["--redis-url", &url]);
    let (_b_child, b, _, _) = start(&["--redis-url", &url]);
    for n in 0..20 {
        let subscriber = format!(r#"{{"url":"http://127.0.0.1:9/hook{n}"}}"#);
        let publisher = format!(r#"{{"name":"p{n}"}}"#);
        let both = |path: &'static str, body: &str| -> Vec<String> {
            let calls: Vec<_> = [a.clone(), b.clone()]
                .into_iter()
                .map(|addr| {
                    let body = body.to_owned();
                    thread::spawn(move || register(&addr, path, &body))
                })
                .collect();
            calls
                .into_iter()
                .map(|c| {
                    let (status, body) = c.join().unwrap();
                    assert!(
                        status.contains("201") || status.contains("200"),
                        "{status} {body}"
                    );
                    json_field(&body, "id")
                })
                .collect()
        };
        let ids = both("/v1/topics/t/subscribers", &subscriber);
        assert_eq!(ids[0], ids[1], "subscriber {n}");
        let ids = both("/v1/topics/t/publishers", &publisher);
        assert_eq!(ids[0], ids[1], "publisher {n}");
    }
    wait_until("both know the 20 subscribers", || {
        subscribers_on(&a) == 20 && subscribers_on(&b) == 20
    });
}
