//! Hostile input and faults against the real server on 127.0.0.1:0. After
//! each, the broker still serves, still delivers to a healthy subscriber,
//! and has lost no registration.

mod common;

use std::{
    collections::HashSet,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use broker_core::Limits;
use broker_delivery::DeliveryConfig;
use broker_http::{ApiConfig, ServerConfig};
use common::{Sink, TestServer, PATIENCE};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A server with a healthy subscriber on topic "t", to check afterwards
/// that nothing was lost and deliveries still flow.
struct Fixture {
    s: TestServer,
    healthy: Sink,
    token: String,
    registrations: Value,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(ApiConfig::default(), ServerConfig::default()).await
    }

    async fn with(api: ApiConfig, server: ServerConfig) -> Self {
        let s =
            TestServer::with_all(api, DeliveryConfig::default(), server, Limits::default()).await;
        let healthy = Sink::ok().await;
        let token = s.publisher("t", "p").await;
        s.subscriber("t", json!({"url": healthy.url("/healthy")}))
            .await;
        let registrations = s.get("/v1/topics/t").await.json();
        Fixture {
            s,
            healthy,
            token,
            registrations,
        }
    }

    /// The broker serves, delivers, and lost no registration.
    async fn assert_intact(&mut self) {
        self.s.assert_alive().await;
        let now = self.s.get("/v1/topics/t").await.json();
        assert_eq!(now["publishers"], self.registrations["publishers"]);
        let ids = |v: &Value| {
            v["subscribers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&now), ids(&self.registrations));
        let r = self
            .s
            .publish("t", &self.token, "text/plain", "still delivering")
            .await;
        assert_eq!(r.status, 202);
        loop {
            if self.healthy.next().await.body == "still delivering" {
                break;
            }
        }
    }

    async fn raw(&self) -> TcpStream {
        TcpStream::connect(self.s.addr).await.unwrap()
    }
}

/// Reads until the peer closes or `PATIENCE` passes; returns what came.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server did not close the connection"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn hostile_json_bodies() {
    let mut f = Fixture::new().await;
    let sub = "/v1/topics/t/subscribers";
    let publ = "/v1/topics/t/publishers";
    let ct = "application/json";
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        (sub, Some(ct), b"{\"url\": \"http://".to_vec(), 400),
        (sub, Some(ct), b"{\"url\": \"http://h/\"".to_vec(), 400),
        (sub, Some(ct), b"nul\x00l".to_vec(), 400),
        (sub, Some(ct), deep.into_bytes(), 400),
        (sub, Some(ct), deep_obj.into_bytes(), 400),
        (sub, Some(ct), b"{\"url\": \"\xc3\x28\"}".to_vec(), 400),
        (sub, Some(ct), b"\xff\xfe{}".to_vec(), 400),
        (sub, Some(ct), Vec::new(), 400),
        (sub, Some(ct), b"null".to_vec(), 400),
        (sub, Some(ct), b"{\"url\": [\"http://h/\"]}".to_vec(), 400),
        (
            sub,
            Some(ct),
            b"{\"url\": \"http://h/\", \"method\": 7}".to_vec(),
            400,
        ),
        (
            sub,
            Some(ct),
            b"{\"url\": \"http://h/\", \"headers\": {\"a\": null}}".to_vec(),
            400,
        ),
        (
            sub,
            Some(ct),
            b"{\"url\": \"http://h/\", \"url\": \"http://i/\"}".to_vec(),
            400,
        ),
        (
            sub,
            Some(ct),
            b"{\"url\": \"http://h/\", \"secret\": \"mine\"}".to_vec(),
            400,
        ),
        (
            sub,
            Some("text/json"),
            b"{\"url\": \"http://h/\"}".to_vec(),
            415,
        ),
        (
            sub,
            Some("application/jsonx"),
            b"{\"url\": \"http://h/\"}".to_vec(),
            415,
        ),
        (sub, None, b"{\"url\": \"http://h/\"}".to_vec(), 415),
        (publ, Some(ct), b"{\"name\": 5}".to_vec(), 400),
        (
            publ,
            Some(ct),
            b"{\"name\": \"x\", \"token\": \"chosen\"}".to_vec(),
            400,
        ),
        (publ, Some(ct), b"\"name\"".to_vec(), 400),
    ];
    for (path, content_type, body, status) in cases {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        let r = f.s.call("POST", path, &headers, body.clone()).await;
        let code = r.error_code(status);
        assert!(!code.is_empty(), "{:?}", String::from_utf8_lossy(&body));
    }
    // application/*+json and parameters are JSON too.
    let r =
        f.s.call(
            "POST",
            publ,
            &[("content-type", "application/vnd.broker+json; charset=utf-8")],
            r#"{"name":"vendor-json"}"#,
        )
        .await;
    assert_eq!(r.status, 201);
    f.registrations = f.s.get("/v1/topics/t").await.json();
    f.assert_intact().await;
}

#[tokio::test]
async fn bodies_over_the_limit_and_lying_lengths() {
    let api = ApiConfig {
        max_body_bytes: 1024,
        body_timeout: Duration::from_millis(500),
        ..ApiConfig::default()
    };
    let mut f = Fixture::with(api, ServerConfig::default()).await;
    let head = |len: &str| {
        format!(
            "POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{len}Connection: close\r\n\r\n",
            f.token
        )
    };

    // Declared too large: refused before the body is read.
    let mut c = f.raw().await;
    c.write_all(head("Content-Length: 1000000\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_to_close(&mut c).await;
    assert_eq!(status_of(&r), 413, "{r}");
    assert!(r.contains("payload_too_large"));

    // Chunked, no length: cut off at the limit.
    let mut c = f.raw().await;
    c.write_all(head("Transfer-Encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..4 {
        c.write_all(b"200\r\n").await.unwrap();
        c.write_all(&[b'a'; 0x200]).await.unwrap();
        c.write_all(b"\r\n").await.unwrap();
    }
    c.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_to_close(&mut c).await;
    assert_eq!(status_of(&r), 413, "{r}");

    // Lying short: claims 100 bytes, sends 10 and stalls.
    let mut c = f.raw().await;
    c.write_all(head("Content-Length: 100\r\n").as_bytes())
        .await
        .unwrap();
    c.write_all(b"0123456789").await.unwrap();
    let r = read_to_close(&mut c).await;
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(r.contains("request_timeout"));

    // Lying long: claims 5, sends more; the rest is not a request.
    let mut c = f.raw().await;
    c.write_all(head("Content-Length: 5\r\n").as_bytes())
        .await
        .unwrap();
    c.write_all(b"hello, and then some garbage that is not HTTP\r\n\r\n")
        .await
        .unwrap();
    let r = read_to_close(&mut c).await;
    assert_eq!(status_of(&r), 202, "{r}");
    loop {
        if f.healthy.next().await.body == "hello" {
            break;
        }
    }
    f.assert_intact().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_hurt_no_one() {
    let api = ApiConfig {
        body_timeout: Duration::from_millis(500),
        ..ApiConfig::default()
    };
    let server = ServerConfig {
        header_read_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let mut f = Fixture::with(api, server).await;

    // Slowloris: the head dribbles in a byte at a time and never ends.
    let mut slow = f.raw().await;
    let dribble = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')).take(10_000) {
            if slow.write_all(&[*byte]).await.is_err() {
                return true; // the server hung up
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    // Others are served meanwhile.
    f.assert_intact().await;
    assert!(
        tokio::time::timeout(PATIENCE * 3, dribble)
            .await
            .unwrap()
            .unwrap(),
        "the slow client was cut off"
    );

    // A body that stalls half-way on a JSON endpoint.
    let mut stall = f.raw().await;
    stall
        .write_all(
            b"POST /v1/topics/t/publishers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"name\":",
        )
        .await
        .unwrap();
    let r = read_to_close(&mut stall).await;
    assert_eq!(status_of(&r), 408, "{r}");

    // An idle keep-alive connection is closed too.
    let mut idle = f.raw().await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_to_close(&mut idle).await;
    assert_eq!(status_of(&r), 200, "{r}");
    f.assert_intact().await;
}

#[tokio::test]
async fn a_thousand_idle_connections() {
    let server = ServerConfig {
        header_read_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let mut f = Fixture::with(ApiConfig::default(), server).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(f.raw().await);
    }
    f.assert_intact().await;
    // They are all closed by the server in the end.
    for mut c in idle.drain(..).step_by(100) {
        read_to_close(&mut c).await;
    }
    f.assert_intact().await;
}

#[tokio::test]
async fn connections_over_the_cap_wait_their_turn() {
    let server = ServerConfig {
        max_connections: 4,
        ..ServerConfig::default()
    };
    let f = Fixture::with(ApiConfig::default(), server).await;
    // The fixture's client keeps up to a few pooled connections; fill the
    // rest of the cap with idle raw ones.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(f.raw().await);
    }
    let mut waiting = f.raw().await;
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served although the cap was reached");
    drop(held);
    let r = read_to_close(&mut waiting).await;
    assert_eq!(status_of(&r), 200, "{r}");
}

#[tokio::test]
async fn a_burst_of_ten_thousand_registrations() {
    let mut f = Fixture::new().await;
    let s = Arc::new(std::mem::replace(&mut f.s, TestServer::start().await));
    let mut tasks = Vec::new();
    for task in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..100 {
                let n = task * 100 + i;
                let r = s
                    .post_json(
                        &format!("/v1/topics/burst-{}/publishers", n % 7),
                        json!({"name": format!("p{n}")}),
                    )
                    .await;
                assert_eq!(r.status, 201);
                ids.push(r.json()["id"].as_str().unwrap().to_owned());
                let r = s
                    .post_json(
                        &format!("/v1/topics/burst-{}/subscribers", n % 7),
                        json!({"url": format!("http://127.0.0.1:9/{n}")}),
                    )
                    .await;
                assert_eq!(r.status, 201);
                ids.push(r.json()["id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(all.insert(id), "an id was handed out twice");
        }
    }
    assert_eq!(all.len(), 10_000);
    let topics = s.get("/v1/topics").await.json();
    let (publishers, subscribers) = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with("burst-"))
        .fold((0, 0), |(p, s), t| {
            (
                p + t["publishers"].as_u64().unwrap(),
                s + t["subscribers"].as_u64().unwrap(),
            )
        });
    assert_eq!((publishers, subscribers), (5_000, 5_000));
    f.s = Arc::into_inner(s).unwrap();
    f.assert_intact().await;
}

#[tokio::test]
async fn ten_thousand_subscribers_on_one_topic() {
    let mut f = Fixture::new().await;
    let mut sink = Sink::ok().await;
    let token = f.s.publisher("wide", "p").await;
    for i in 0..10_000 {
        let url = sink.url(&format!("/s/{i}"));
        f.s.post_json("/v1/topics/wide/subscribers", json!({"url": url}))
            .await;
    }
    let r =
        f.s.publish("wide", &token, "text/plain", "to everyone")
            .await;
    assert_eq!(r.json()["subscribers"], 10_000);
    let mut paths = HashSet::new();
    for _ in 0..10_000 {
        paths.insert(sink.next().await.path);
    }
    assert_eq!(paths.len(), 10_000, "each subscriber got it exactly once");
    f.s.settle().await;
    let detail = f.s.get("/v1/topics/wide").await.json();
    assert_eq!(detail["counters"]["delivered"], 10_000);
    // At most 256 attempts run at once to one host, and their connections
    // are reused; a few more may open while others return to the pool.
    let connections = sink.connections.load(Ordering::SeqCst);
    assert!(connections <= 512, "{connections} connections to one host");
    f.assert_intact().await;
}

#[tokio::test]
async fn hostile_topic_names() {
    let mut f = Fixture::new().await;
    let long = "x".repeat(129);
    for topic in [
        "",
        "..",
        ".",
        "%2F",
        "a%2Fb",
        "%2E%2E",
        "caf%C3%A9",
        "%00",
        "a%0Ab",
        "%20",
        long.as_str(),
    ] {
        let r =
            f.s.post_json(
                &format!("/v1/topics/{topic}/publishers"),
                json!({"name": "n"}),
            )
            .await;
        assert_eq!(r.error_code(400), "invalid_topic", "{topic:?}");
        let r = f.s.get(&format!("/v1/topics/{topic}")).await;
        assert!(
            r.status == 400 || r.status == 404,
            "{topic:?}: {}",
            r.status
        );
    }
    // Raw bytes the URI grammar forbids are refused by the HTTP parser.
    for raw in [&b"caf\xc3\xa9"[..], b"a\x01b", b"a b"] {
        let mut c = f.raw().await;
        let mut req = b"POST /v1/topics/".to_vec();
        req.extend_from_slice(raw);
        req.extend_from_slice(b"/publishers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.write_all(&req).await.unwrap();
        let r = read_to_close(&mut c).await;
        assert_eq!(status_of(&r), 400, "{r}");
    }
    f.assert_intact().await;
}

#[tokio::test]
async fn hostile_subscriber_urls_and_headers() {
    let mut f = Fixture::new().await;
    let sub = "/v1/topics/t/subscribers";
    let long = format!("http://h/{}", "a".repeat(3000));
    for url in [
        "http://user:pass@h/",
        "http://user@h/",
        "http://h/#x",
        "http://h:65536/",
        "http://h:-1/",
        "http://[::1:80/",
        "file:///etc/passwd",
        "gopher://h/",
        "ws://h/",
        "//h/",
        "http:h",
        long.as_str(),
    ] {
        let r = f.s.post_json(sub, json!({"url": url})).await;
        assert_eq!(r.error_code(400), "invalid_endpoint", "{url:?}");
    }
    // IPv6 literals are fine.
    let r =
        f.s.post_json(sub, json!({"url": "http://[::1]:8080/v6"}))
            .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["url"], "http://[::1]:8080/v6");

    for headers in [
        json!({"X-A": "a\r\nX-Injected: 1"}),
        json!({"X-A\r\nX-Injected": "1"}),
        json!({"Keep-Alive": "timeout=5"}),
        json!({"Proxy-Authorization": "x"}),
        json!({"TE": "trailers"}),
        json!({"Trailer": "x"}),
        json!({"HOST": "evil"}),
        json!({"webhook-timestamp": "1"}),
    ] {
        let r =
            f.s.post_json(sub, json!({"url": "http://h/", "headers": headers}))
                .await;
        assert_eq!(r.error_code(400), "invalid_endpoint", "{headers}");
    }
    let dup = br#"{"url": "http://h/", "headers": {"X-Dup": "1", "X-DUP": "2"}}"#;
    let r =
        f.s.call(
            "POST",
            sub,
            &[("content-type", "application/json")],
            &dup[..],
        )
        .await;
    assert_eq!(r.error_code(400), "invalid_endpoint");
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    let r =
        f.s.post_json(sub, json!({"url": "http://h/", "headers": many}))
            .await;
    assert_eq!(r.error_code(400), "invalid_endpoint");

    f.registrations = f.s.get("/v1/topics/t").await.json();
    f.assert_intact().await;
}

#[tokio::test]
async fn hostile_tokens() {
    let admin = ApiConfig {
        admin_token: Some("the-admin-token".into()),
        ..ApiConfig::default()
    };
    let s = TestServer::with_config(admin, DeliveryConfig::default()).await;
    let a = [
        ("authorization", "Bearer the-admin-token"),
        ("content-type", "application/json"),
    ];
    let reg = |topic: &str, name: &str| {
        let body = json!({"name": name}).to_string();
        let path = format!("/v1/topics/{topic}/publishers");
        let s = &s;
        async move { s.call("POST", &path, &a, body).await.json() }
    };
    let p = reg("t", "p").await;
    let other = reg("u", "q").await;
    let gone = reg("t", "gone").await;
    let gone_path = format!("/v1/topics/t/publishers/{}", gone["id"].as_str().unwrap());
    assert_eq!(s.call("DELETE", &gone_path, &a, "").await.status, 204);
    let token = p["token"].as_str().unwrap();

    let publish = |auth: Option<String>| {
        let s = &s;
        async move {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|v| ("authorization", v.as_str())).collect();
            s.call("POST", "/v1/topics/t/messages", &headers, "x").await
        }
    };
    let (id_part, secret_part) = token.split_once('.').unwrap();
    for (auth, status) in [
        (None, 401),
        (Some(String::new()), 401),
        (Some("Bearer".into()), 401),
        (Some("Bearer ".into()), 401),
        (Some(format!("Basic {token}")), 401),
        (Some(format!("Bearer {id_part}")), 401),
        (Some(format!("Bearer {id_part}.")), 401),
        (Some(format!("Bearer .{secret_part}")), 401),
        (
            Some(format!("Bearer {id_part}.{}", secret_part.to_uppercase())),
            401,
        ),
        (Some(format!("Bearer {token} extra")), 401),
        (
            Some(format!("Bearer {}", gone["token"].as_str().unwrap())),
            401,
        ),
        (Some("Bearer the-admin-token".into()), 401),
        (
            Some(format!("Bearer {}", other["token"].as_str().unwrap())),
            403,
        ),
        (Some(format!("bearer {token}")), 202),
        (Some(format!("Bearer {token}")), 202),
    ] {
        let r = publish(auth.clone()).await;
        assert_eq!(r.status, status, "{auth:?}");
    }
    // A non-ASCII Authorization header is a clear 401, not a crash.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
        .await
        .unwrap();
    let r = read_to_close(&mut c).await;
    assert_eq!(status_of(&r), 401, "{r}");
    s.assert_alive().await;
}

/// A subscriber endpoint that resets the connection: right away, or after
/// part of a response.
async fn resetting_endpoint(partial: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(partial).await;
                let _ = stream.set_zero_linger();
                drop(stream);
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn endpoints_that_reset_the_connection() {
    let mut f = Fixture::new().await;
    let at_once = resetting_endpoint(b"").await;
    let mid_head = resetting_endpoint(b"HTTP/1.1 200 OK\r\nContent-Len").await;
    f.s.subscriber("t", json!({"url": at_once})).await;
    f.s.subscriber("t", json!({"url": mid_head})).await;
    f.registrations = f.s.get("/v1/topics/t").await.json();
    for _ in 0..5 {
        f.s.publish("t", &f.token, "text/plain", "m").await;
    }
    f.s.settle().await;
    let detail = f.s.get("/v1/topics/t").await.json();
    for sub in detail["subscribers"].as_array().unwrap() {
        if sub["url"] == at_once || sub["url"] == mid_head {
            assert_eq!(sub["counters"]["failed"], 5, "{sub}");
        }
    }
    f.assert_intact().await;
}

#[tokio::test]
async fn concurrent_churn_of_the_same_names() {
    let mut f = Fixture::new().await;
    let s = Arc::new(std::mem::replace(&mut f.s, TestServer::start().await));
    let mut tasks = Vec::new();
    for task in 0..16u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..40u32 {
                match (task + round) % 4 {
                    0 => {
                        let r = s
                            .post_json("/v1/topics/churn/publishers", json!({"name": "same"}))
                            .await;
                        assert!(r.status == 201 || r.status == 200);
                        let token = r.json()["token"].as_str().unwrap().to_owned();
                        let p = s.publish("churn", &token, "text/plain", "x").await;
                        // Another task may have deregistered it in between.
                        assert!(p.status == 202 || p.status == 401, "{}", p.status);
                    }
                    1 => {
                        let r = s
                            .post_json(
                                "/v1/topics/churn/subscribers",
                                json!({"url": "http://127.0.0.1:9/same"}),
                            )
                            .await;
                        assert!(r.status == 201 || r.status == 200);
                    }
                    2 => {
                        let detail = s.get("/v1/topics/churn").await;
                        if detail.status == 200 {
                            let d = detail.json();
                            for p in d["publishers"].as_array().unwrap() {
                                let path = format!(
                                    "/v1/topics/churn/publishers/{}",
                                    p["id"].as_str().unwrap()
                                );
                                let r = s.delete(&path).await;
                                assert!(r.status == 204 || r.status == 404);
                            }
                        }
                    }
                    _ => {
                        let detail = s.get("/v1/topics/churn").await;
                        if detail.status == 200 {
                            let d = detail.json();
                            for sub in d["subscribers"].as_array().unwrap() {
                                let path = format!(
                                    "/v1/topics/churn/subscribers/{}",
                                    sub["id"].as_str().unwrap()
                                );
                                let r = s.delete(&path).await;
                                assert!(r.status == 204 || r.status == 404);
                            }
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Never two of the same name or the same endpoint.
    if let Ok(detail) = Ok::<_, ()>(s.get("/v1/topics/churn").await) {
        if detail.status == 200 {
            let d = detail.json();
            assert!(d["publishers"].as_array().unwrap().len() <= 1);
            assert!(d["subscribers"].as_array().unwrap().len() <= 1);
        }
    }
    // A final registration of each is exactly one.
    s.post_json("/v1/topics/churn/publishers", json!({"name": "same"}))
        .await;
    s.post_json(
        "/v1/topics/churn/subscribers",
        json!({"url": "http://127.0.0.1:9/same"}),
    )
    .await;
    let d = s.get("/v1/topics/churn").await.json();
    assert_eq!(d["publishers"].as_array().unwrap().len(), 1);
    assert_eq!(d["subscribers"].as_array().unwrap().len(), 1);
    f.s = Arc::into_inner(s).unwrap();
    f.assert_intact().await;
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let mut f = Fixture::new().await;
    let big = format!("X-Big: {}\r\n", "b".repeat(70 * 1024));
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    for extra in [big, many] {
        let mut c = f.raw().await;
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        let _ = c.write_all(req.as_bytes()).await;
        let r = read_to_close(&mut c).await;
        assert_eq!(status_of(&r), 431, "{}", &r[..r.len().min(200)]);
    }
    f.assert_intact().await;
}

#[tokio::test]
async fn registry_limits_refuse_clearly_and_keep_the_rest() {
    let limits = Limits {
        max_topics: 2,
        max_publishers_per_topic: 2,
        max_subscribers_per_topic: 2,
        max_url_len: 64,
        max_headers: 2,
        max_header_bytes: 32,
        ..Limits::default()
    };
    let s = TestServer::with_all(
        ApiConfig::default(),
        DeliveryConfig::default(),
        ServerConfig::default(),
        limits,
    )
    .await;
    s.publisher("a", "p1").await;
    s.publisher("a", "p2").await;
    let r = s
        .post_json("/v1/topics/a/publishers", json!({"name": "p3"}))
        .await;
    assert_eq!(r.error_code(409), "limit_exceeded");
    s.publisher("b", "p1").await;
    let r = s
        .post_json("/v1/topics/c/publishers", json!({"name": "p1"}))
        .await;
    assert_eq!(r.error_code(409), "limit_exceeded");
    for i in 0..2 {
        s.subscriber("a", json!({"url": format!("http://127.0.0.1:9/{i}")}))
            .await;
    }
    let r = s
        .post_json(
            "/v1/topics/a/subscribers",
            json!({"url": "http://127.0.0.1:9/x"}),
        )
        .await;
    assert_eq!(r.error_code(409), "limit_exceeded");
    let r = s
        .post_json(
            "/v1/topics/b/subscribers",
            json!({"url": format!("http://127.0.0.1:9/{}", "u".repeat(64))}),
        )
        .await;
    assert_eq!(r.error_code(400), "invalid_endpoint");
    let r = s
        .post_json(
            "/v1/topics/b/subscribers",
            json!({"url": "http://h/", "headers": {"a": "1", "b": "2", "c": "3"}}),
        )
        .await;
    assert_eq!(r.error_code(400), "invalid_endpoint");
    let r = s
        .post_json(
            "/v1/topics/b/subscribers",
            json!({"url": "http://h/", "headers": {"a": "x".repeat(40)}}),
        )
        .await;
    assert_eq!(r.error_code(400), "invalid_endpoint");
    // Replays still answer at the limit; nothing registered was lost.
    let r = s
        .post_json("/v1/topics/a/publishers", json!({"name": "p1"}))
        .await;
    assert_eq!(r.status, 200);
    let topics = s.get("/v1/topics").await.json();
    assert_eq!(
        topics,
        json!({"topics": [
            {"name": "a", "publishers": 2, "listeners": 0, "subscribers": 2, "groups": 0,
             "published": 0, "lag": 0, "failing": 0, "disabled": 0},
            {"name": "b", "publishers": 1, "listeners": 0, "subscribers": 0, "groups": 0,
             "published": 0, "lag": 0, "failing": 0, "disabled": 0},
        ]})
    );
}

#[tokio::test]
async fn idle_connections_do_not_hold_up_shutdown() {
    let server = ServerConfig {
        header_read_timeout: Duration::from_secs(600),
        shutdown_grace: Duration::from_secs(600),
        ..ServerConfig::default()
    };
    let f = Fixture::with(ApiConfig::default(), server).await;
    let _idle: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(f.raw().await);
        }
        v
    };
    tokio::time::timeout(PATIENCE, f.s.stop())
        .await
        .expect("shutdown did not wait for connections that never spoke");
}
