//! Live listeners over real sockets: Server-Sent Events read by a hyper
//! client (and a raw TCP reader that stops reading), WebSockets driven by
//! tokio-tungstenite.
#![allow(clippy::needless_range_loop)] // message n is ids[n]: the index is the point

mod common;

use std::time::Duration;

use base64::Engine as _;
use broker_core::Limits;
use broker_delivery::DeliveryConfig;
use broker_http::{ApiConfig, LiveConfig, LiveHub, Overflow, ServerConfig};
use bytes::Bytes;
use common::{TestServer, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, protocol::frame::coding::CloseCode, Message},
    MaybeTlsStream, WebSocketStream,
};

async fn live_server(config: LiveConfig) -> TestServer {
    live_server_with(config, ApiConfig::default(), Limits::default()).await
}

async fn live_server_with(config: LiveConfig, api: ApiConfig, limits: Limits) -> TestServer {
    let api = ApiConfig {
        live: Some(LiveHub::new(config)),
        ..api
    };
    TestServer::with_all(
        api,
        DeliveryConfig::default(),
        ServerConfig::default(),
        limits,
    )
    .await
}

/// Registers a listener and returns its token.
async fn listener(server: &TestServer, topic: &str, name: &str) -> String {
    let r = server
        .post_json(
            &format!("/v1/topics/{topic}/listeners"),
            json!({ "name": name }),
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

/// Publishes `body` and returns the message id.
async fn publish(server: &TestServer, topic: &str, token: &str, ct: &str, body: Vec<u8>) -> String {
    let auth = format!("Bearer {token}");
    let r = server
        .call(
            "POST",
            &format!("/v1/topics/{topic}/messages"),
            &[("authorization", &auth), ("content-type", ct)],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Publishes each body as text; returns the message ids.
async fn publish_texts(
    server: &TestServer,
    topic: &str,
    token: &str,
    bodies: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for body in bodies {
        ids.push(publish(server, topic, token, "text/plain", body.into_bytes()).await);
    }
    ids
}

// ---- a Server-Sent Events reader -------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    id: Option<String>,
    kind: Option<String>,
    /// The `event_type:` field (which `EventSource` ignores).
    event_type: Option<String>,
    data: String,
}

struct SseReader {
    body: Incoming,
    buffer: String,
}

impl SseReader {
    async fn open(
        server: &TestServer,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, (StatusCode, Value)> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut req = Request::get(format!("http://{}{path}", server.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = timeout(PATIENCE, client.request(req.body(Empty::new()).unwrap()))
            .await
            .expect("the server answered in time")
            .unwrap();
        if res.status() != StatusCode::OK {
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            return Err((status, serde_json::from_slice(&body).unwrap()));
        }
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        assert_eq!(res.headers()["access-control-allow-origin"], "*");
        Ok(SseReader {
            body: res.into_body(),
            buffer: String::new(),
        })
    }

    /// The next event (comments skipped); `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    id: None,
                    kind: None,
                    event_type: None,
                    data: String::new(),
                };
                let mut lines = 0;
                for line in block.lines() {
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.kind = Some(value.to_owned()),
                        "event_type" => event.event_type = Some(value.to_owned()),
                        "data" => {
                            if lines > 0 {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            lines += 1;
                        }
                        _ => {}
                    }
                }
                if event.id.is_some() || event.kind.is_some() || lines > 0 {
                    return Some(event);
                }
                continue;
            }
            let frame = timeout(PATIENCE, self.body.frame())
                .await
                .expect("an event in time")?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

// ---- a WebSocket client ----------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn ws_connect(server: &TestServer, token: Option<&str>) -> Ws {
    let mut req = format!("ws://{}/v1/ws", server.addr)
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (ws, response) = timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame (pings skipped).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn payload_of(event: &Value) -> &Value {
    &event["message"]["payload"]
}

// ---- Server-Sent Events ------------------------------------------------------

#[tokio::test]
async fn sse_streams_in_order_replays_last_n_and_resumes_with_last_event_id() {
    let server = live_server(LiveConfig::default()).await;
    let publisher = server.publisher("orders", "p").await;
    let token = listener(&server, "orders", "dashboard").await;
    let mut ids = publish_texts(
        &server,
        "orders",
        &publisher,
        (0..3).map(|n| format!("before {n}")),
    )
    .await;

    let auth = format!("Bearer {token}");
    let mut sse = SseReader::open(
        &server,
        "/v1/topics/orders/events?last_n=2",
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    // The last two retained, oldest first.
    for n in 1..3 {
        let e = sse.next().await.unwrap();
        assert_eq!(e.id.as_deref(), Some(ids[n].as_str()));
        assert_eq!(e.data, format!("before {n}"));
        assert_eq!(e.kind, None);
    }
    // Live, in publish order; multi-line text as data lines; binary as base64.
    let detail = server.get("/v1/topics/orders").await.json();
    assert_eq!(detail["live"]["connections"], 1);
    assert_eq!(detail["listeners"][0]["name"], "dashboard");
    let live = (0..20).map(|n| format!("live {n}\nline 2"));
    ids.extend(publish_texts(&server, "orders", &publisher, live).await);
    let binary = vec![0xff, 0x00, b'\r', b'\n'];
    ids.push(
        publish(
            &server,
            "orders",
            &publisher,
            "application/octet-stream",
            binary.clone(),
        )
        .await,
    );
    for n in 0..20 {
        let e = sse.next().await.unwrap();
        assert_eq!(e.id.as_deref(), Some(ids[3 + n].as_str()));
        assert_eq!(e.data, format!("live {n}\nline 2"));
    }
    let e = sse.next().await.unwrap();
    assert_eq!(e.kind.as_deref(), Some("binary"));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&e.data)
            .unwrap(),
        binary
    );
    let last_seen = e.id.unwrap();
    drop(sse);

    // Missed while away, then resumed from the last id seen.
    let missed = publish_texts(
        &server,
        "orders",
        &publisher,
        (0..3).map(|n| format!("missed {n}")),
    )
    .await;
    let url = format!("/v1/topics/orders/events?access_token={token}");
    let mut sse = SseReader::open(&server, &url, &[("last-event-id", &last_seen)])
        .await
        .unwrap();
    for id in &missed {
        assert_eq!(sse.next().await.unwrap().id.as_ref(), Some(id));
    }
    let next = publish(
        &server,
        "orders",
        &publisher,
        "text/plain",
        b"after".to_vec(),
    )
    .await;
    let e = sse.next().await.unwrap();
    assert_eq!(
        (e.id.as_deref(), e.data.as_str()),
        (Some(next.as_str()), "after")
    );
}

#[tokio::test]
async fn sse_needs_a_listener_token_of_the_topic() {
    let admin = "admin-secret";
    let server = live_server_with(
        LiveConfig::default(),
        ApiConfig {
            admin_token: Some(admin.into()),
            ..ApiConfig::default()
        },
        Limits::default(),
    )
    .await;
    let admin_auth = format!("Bearer {admin}");
    let call = |path: &str, body: Value| {
        let (path, body) = (path.to_owned(), body.to_string());
        let server = &server;
        let auth = admin_auth.clone();
        async move {
            server
                .call(
                    "POST",
                    &path,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    body,
                )
                .await
                .json()
        }
    };
    let publisher = call("/v1/topics/a/publishers", json!({"name": "p"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let token_a = call("/v1/topics/a/listeners", json!({"name": "l"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let token_b = call("/v1/topics/b/listeners", json!({"name": "l"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let refused = |headers: Vec<(&'static str, String)>, path: &'static str| {
        let server = &server;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match SseReader::open(server, path, &h).await {
                Ok(_) => panic!("{path} {headers:?} was let in"),
                Err((status, body)) => (
                    status.as_u16(),
                    body["error"]["code"].as_str().unwrap().to_owned(),
                ),
            }
        }
    };
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    assert_eq!(
        refused(vec![], "/v1/topics/a/events").await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(bearer(&publisher), "/v1/topics/a/events").await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(bearer("lis_x.y"), "/v1/topics/a/events").await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(bearer(&token_b), "/v1/topics/a/events").await,
        (403, "forbidden".into())
    );
    assert_eq!(
        refused(bearer(admin), "/v1/topics/nope/events").await,
        (404, "topic_not_found".into())
    );
    assert_eq!(
        refused(bearer(admin), "/v1/topics/a/events?last_n=x").await,
        (400, "invalid_query".into())
    );
    assert_eq!(
        refused(bearer(admin), "/v1/topics/a%2F/events").await,
        (400, "invalid_topic".into())
    );
    // The admin token and the topic's own listener token get in.
    SseReader::open(
        &server,
        "/v1/topics/a/events",
        &[("authorization", &admin_auth)],
    )
    .await
    .unwrap();
    SseReader::open(
        &server,
        "/v1/topics/a/events",
        &[("authorization", &format!("Bearer {token_a}"))],
    )
    .await
    .unwrap();
    // A deregistered listener's token stops working.
    let id = token_a.split('.').next().unwrap();
    let r = server
        .call(
            "DELETE",
            &format!("/v1/topics/a/listeners/{id}"),
            &[("authorization", &admin_auth)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        refused(bearer(&token_a), "/v1/topics/a/events").await,
        (401, "unauthorized".into())
    );
}

#[tokio::test]
async fn anonymous_listening_only_when_enabled_and_not_without_a_hub() {
    let open = live_server(LiveConfig {
        allow_anonymous: true,
        ..LiveConfig::default()
    })
    .await;
    open.publisher("t", "p").await;
    SseReader::open(&open, "/v1/topics/t/events", &[])
        .await
        .unwrap();
    let mut ws = ws_connect(&open, None).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "t", "request_id": 1}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "ack");

    let without = TestServer::start().await;
    without.publisher("t", "p").await;
    assert_eq!(
        without.get("/v1/topics/t/events").await.error_code(404),
        "live_disabled"
    );
    assert_eq!(without.get("/v1/ws").await.error_code(404), "live_disabled");
}

/// A reader that stops reading: the broker cannot write to it, its queue
/// overflows, and when it reads again it finds the SLOW_CONSUMER event and
/// the end of the stream, while another reader got every message.
#[tokio::test]
async fn a_stalled_sse_reader_gets_slow_consumer_and_others_do_not_wait() {
    let server = live_server(LiveConfig {
        queue_capacity: 4,
        ..LiveConfig::default()
    })
    .await;
    let publisher = server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;

    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let request =
        format!("GET /v1/topics/t/events?access_token={token} HTTP/1.1\r\nhost: x\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut healthy = SseReader::open(
        &server,
        &format!("/v1/topics/t/events?access_token={token}"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        server.get("/v1/topics/t").await.json()["live"]["connections"],
        2
    );

    // 64 KiB payloads: a few hundred overflow the kernel's socket buffers.
    let payload = "x".repeat(64 * 1024);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < 400 {
            let e = healthy.next().await.expect("the healthy stream stays open");
            assert_eq!(e.data.len(), 64 * 1024);
            got += 1;
        }
        (got, healthy)
    });
    for _ in 0..400 {
        publish(
            &server,
            "t",
            &publisher,
            "text/plain",
            payload.clone().into_bytes(),
        )
        .await;
    }
    // Kept open: a dropped client is noticed at the next write.
    let (got, _healthy) = reader.await.unwrap();
    assert_eq!(got, 400);
    wait_for_metric(&server, "broker_live_slow_consumer_disconnects_total 1").await;

    // Reading again: whatever fit in the buffers, then the error, then the end.
    let mut seen = Vec::new();
    let mut buf = vec![0; 1 << 16];
    // Until the last chunk of the body (the connection itself stays open).
    while !seen.ends_with(b"\r\n0\r\n\r\n") {
        let n = timeout(PATIENCE, stalled.read(&mut buf))
            .await
            .expect("more of the stream in time")
            .unwrap();
        assert!(n > 0, "the connection closed before the stream ended");
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("event: broker.error\ndata: {\"code\":\"SLOW_CONSUMER\""),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    assert!(text.matches("id: msg_").count() < 400);
    // It is gone from the topic.
    wait_until(|| async { server.get("/v1/topics/t").await.json()["live"]["connections"] == 1 })
        .await;
}

async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    timeout(PATIENCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the condition came true in time");
}

async fn wait_for_metric(server: &TestServer, line: &str) {
    let line = line.to_owned();
    wait_until(|| {
        let line = line.clone();
        async move {
            let body = server.get("/metrics").await.body;
            String::from_utf8_lossy(&body).lines().any(|l| l == line)
        }
    })
    .await;
}

// ---- WebSocket -----------------------------------------------------------------

#[tokio::test]
async fn websocket_subscribe_replay_publish_unsubscribe_and_ping() {
    let server = live_server(LiveConfig::default()).await;
    let publisher = server.publisher("orders", "p").await;
    let token = listener(&server, "orders", "l").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            publish(
                &server,
                "orders",
                &publisher,
                "application/json",
                json!({"n": n}).to_string().into(),
            )
            .await,
        );
    }

    let mut ws = ws_connect(&server, Some(&token)).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "orders", "last_n": 3, "request_id": "s1"}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        ack,
        json!({"type": "ack", "status": "ok", "request_id": "s1", "topic": "orders", "replayed": 3})
    );
    for n in 2..5 {
        let e = recv(&mut ws).await;
        assert_eq!(e["type"], "event");
        assert_eq!(e["topic"], "orders");
        assert_eq!(e["message"]["id"], ids[n]);
        assert_eq!(payload_of(&e), &json!({"n": n}));
        assert_eq!(e["message"]["encoding"], "json");
        assert!(e["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    }

    // Live, in order, with text and binary payloads.
    for n in 5..25 {
        ids.push(
            publish(
                &server,
                "orders",
                &publisher,
                "application/json",
                json!({"n": n}).to_string().into(),
            )
            .await,
        );
    }
    publish(
        &server,
        "orders",
        &publisher,
        "text/plain",
        b"plain".to_vec(),
    )
    .await;
    publish(
        &server,
        "orders",
        &publisher,
        "application/octet-stream",
        vec![0xff],
    )
    .await;
    for n in 5..25 {
        let e = recv(&mut ws).await;
        assert_eq!(e["message"]["id"], ids[n]);
        assert_eq!(payload_of(&e), &json!({"n": n}));
    }
    let e = recv(&mut ws).await;
    assert_eq!(
        (payload_of(&e), &e["message"]["encoding"]),
        (&json!("plain"), &json!("text"))
    );
    let e = recv(&mut ws).await;
    assert_eq!(
        (payload_of(&e), &e["message"]["encoding"]),
        (&json!("/w=="), &json!("base64"))
    );

    // Publishing over the socket, with the publisher's token in the frame:
    // the subscriber (this very connection) receives it too.
    send(&mut ws, json!({"type": "publish", "topic": "orders", "payload": {"via": "ws"}, "token": publisher, "request_id": 7})).await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (&ack["type"], &ack["request_id"]),
        (&json!("ack"), &json!(7))
    );
    let id = ack["id"].as_str().unwrap().to_owned();
    let e = recv(&mut ws).await;
    assert_eq!(
        (&e["message"]["id"], payload_of(&e)),
        (&json!(id), &json!({"via": "ws"}))
    );

    // Unsubscribed: a publish is not seen; the pong comes back alone.
    send(
        &mut ws,
        json!({"type": "unsubscribe", "topic": "orders", "request_id": "u"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "ack");
    assert_eq!(
        server.get("/v1/topics/orders").await.json()["live"]["connections"],
        0
    );
    publish(
        &server,
        "orders",
        &publisher,
        "text/plain",
        b"unseen".to_vec(),
    )
    .await;
    send(&mut ws, json!({"type": "ping", "request_id": "p"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "pong", "request_id": "p"})
    );

    // Resuming with last_event_id.
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "orders", "last_event_id": id}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["replayed"], 1);
    assert_eq!(payload_of(&recv(&mut ws).await), &json!("unseen"));
}

#[tokio::test]
async fn websocket_errors_name_their_code_and_keep_the_connection() {
    let server = live_server(LiveConfig::default()).await;
    let publisher = server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let other = listener(&server, "u", "l").await;
    let mut ws = ws_connect(&server, Some(&token)).await;
    let cases = [
        (json!("not an object"), "BAD_REQUEST"),
        (json!({"type": "dance", "request_id": 1}), "BAD_REQUEST"),
        (json!({"type": "subscribe", "request_id": 1}), "BAD_REQUEST"),
        (
            json!({"type": "subscribe", "topic": "t", "extra": 1}),
            "BAD_REQUEST",
        ),
        (
            json!({"type": "subscribe", "topic": "a/b", "request_id": 1}),
            "BAD_REQUEST",
        ),
        (
            json!({"type": "subscribe", "topic": "u", "request_id": 1}),
            "UNAUTHORIZED",
        ),
        (
            json!({"type": "subscribe", "topic": "t", "token": "lis_x.y", "request_id": 1}),
            "UNAUTHORIZED",
        ),
        (
            json!({"type": "subscribe", "topic": "t", "token": publisher, "request_id": 1}),
            "UNAUTHORIZED",
        ),
        (
            json!({"type": "unsubscribe", "topic": "t", "request_id": 1}),
            "BAD_REQUEST",
        ),
        (
            json!({"type": "publish", "topic": "t", "payload": 1, "request_id": 1}),
            "UNAUTHORIZED",
        ),
        (
            json!({"type": "publish", "topic": "t", "token": publisher, "request_id": 1}),
            "BAD_REQUEST",
        ),
    ];
    for (frame, code) in cases {
        send(&mut ws, frame.clone()).await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!(code)),
            "{frame}: {e}"
        );
        assert!(!e["message"].as_str().unwrap().is_empty());
        if frame.get("request_id").is_some() {
            assert_eq!(e["request_id"], 1, "{frame}");
        }
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(recv(&mut ws).await["code"], "BAD_REQUEST");
    // Admin-less server: the other topic's own listener token, in the frame,
    // subscribes; an unknown topic is TOPIC_NOT_FOUND for a token holder of
    // nothing there.
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "u", "token": other}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "ack");
    let open = live_server(LiveConfig {
        allow_anonymous: true,
        ..LiveConfig::default()
    })
    .await;
    let mut anon = ws_connect(&open, None).await;
    send(
        &mut anon,
        json!({"type": "subscribe", "topic": "nope", "request_id": 1}),
    )
    .await;
    assert_eq!(recv(&mut anon).await["code"], "TOPIC_NOT_FOUND");
    // Still serving after all that.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn a_websocket_handshake_is_required_and_authenticated() {
    let server = live_server(LiveConfig::default()).await;
    let r = server.get("/v1/ws").await;
    assert_eq!(r.error_code(426), "upgrade_required");
    assert_eq!(r.headers["upgrade"], "websocket");
    // A handshake with a key that is not the base64 of 16 bytes.
    let r = server
        .call(
            "GET",
            "/v1/ws",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "not-a-key"),
                ("authorization", "Bearer x"),
            ],
            "",
        )
        .await;
    assert_eq!(r.error_code(426), "upgrade_required");
    // No token and anonymous listening off: refused before the upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", server.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("{other:?}"),
    }
}

/// A client that stops reading is told SLOW_CONSUMER and closed; publishing
/// and a client that keeps up are unaffected.
#[tokio::test]
async fn a_websocket_that_stops_reading_gets_slow_consumer() {
    let server = live_server(LiveConfig {
        queue_capacity: 8,
        ..LiveConfig::default()
    })
    .await;
    let publisher = server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let mut slow = ws_connect(&server, Some(&token)).await;
    let mut fast = ws_connect(&server, Some(&token)).await;
    for ws in [&mut slow, &mut fast] {
        send(ws, json!({"type": "subscribe", "topic": "t"})).await;
        assert_eq!(recv(ws).await["type"], "ack");
    }
    let n = 400;
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let e = recv(&mut fast).await;
            assert_eq!(e["type"], "event", "{i}");
            assert_eq!(payload_of(&e).as_str().unwrap().len(), 64 * 1024);
        }
        fast
    });
    let payload = "y".repeat(64 * 1024);
    for _ in 0..n {
        publish(
            &server,
            "t",
            &publisher,
            "text/plain",
            payload.clone().into_bytes(),
        )
        .await;
    }
    let mut fast = reader.await.unwrap();
    wait_for_metric(&server, "broker_live_slow_consumer_disconnects_total 1").await;

    // The slow one reads again: buffered events, then the error, then close.
    let mut events = 0;
    let code = loop {
        let msg = timeout(PATIENCE, slow.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "event" {
                    events += 1;
                    continue;
                }
                assert_eq!(v["code"], "SLOW_CONSUMER", "{v}");
            }
            Message::Ping(_) => continue,
            other => panic!("{other:?}"),
        }
        match timeout(PATIENCE, slow.next()).await.expect("in time") {
            Some(Ok(Message::Close(Some(frame)))) => break frame.code,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, CloseCode::Policy);
    assert!(events < n, "{events}");
    // The fast one is still subscribed and served.
    send(&mut fast, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut fast).await["type"], "pong");
    wait_until(|| async { server.get("/v1/topics/t").await.json()["live"]["connections"] == 1 })
        .await;
}

/// Live connections never end on their own: if the hub did not end them,
/// shutdown would wait out the grace (an hour here), not finish at once.
#[tokio::test]
async fn live_connections_end_when_the_server_shuts_down() {
    let server = TestServer::with_all(
        ApiConfig {
            live: Some(LiveHub::new(LiveConfig::default())),
            ..ApiConfig::default()
        },
        DeliveryConfig::default(),
        ServerConfig {
            shutdown_grace: Duration::from_secs(3600),
            ..ServerConfig::default()
        },
        Limits::default(),
    )
    .await;
    server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let mut ws = ws_connect(&server, Some(&token)).await;
    send(&mut ws, json!({"type": "subscribe", "topic": "t"})).await;
    recv(&mut ws).await;
    let mut sse = SseReader::open(
        &server,
        &format!("/v1/topics/t/events?access_token={token}"),
        &[],
    )
    .await
    .unwrap();
    timeout(PATIENCE, server.stop())
        .await
        .expect("shutdown did not wait for the live connections");
    assert!(sse.next().await.is_none());
    match timeout(PATIENCE, ws.next()).await.expect("in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn live_metrics_count_connections_and_messages() {
    let server = live_server(LiveConfig::default()).await;
    let publisher = server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let mut ws = ws_connect(&server, Some(&token)).await;
    send(&mut ws, json!({"type": "subscribe", "topic": "t"})).await;
    recv(&mut ws).await;
    let _sse = SseReader::open(
        &server,
        &format!("/v1/topics/t/events?access_token={token}"),
        &[],
    )
    .await
    .unwrap();
    publish(&server, "t", &publisher, "text/plain", b"x".to_vec()).await;
    recv(&mut ws).await;
    let metrics = String::from_utf8_lossy(&server.get("/metrics").await.body).into_owned();
    for line in [
        "broker_live_connections{transport=\"sse\"} 1",
        "broker_live_connections{transport=\"websocket\"} 1",
        "broker_live_listeners{topic=\"t\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert_eq!(
        server.get("/v1/topics").await.json()["topics"][0]["listeners"],
        1
    );
    // One event to each connection; the WebSocket's ack is not a message.
    wait_for_metric(&server, "broker_live_messages_sent_total 2").await;
}

#[tokio::test]
async fn live_limits_refuse_clearly_and_spare_everyone_else() {
    let server = live_server(LiveConfig {
        max_connections: 2,
        max_subscriptions: 2,
        max_frame_bytes: 1024,
        ..LiveConfig::default()
    })
    .await;
    let publisher = server.publisher("a", "p").await;
    let token_a = listener(&server, "a", "l").await;
    let token_b = listener(&server, "b", "l").await;
    let token_c = listener(&server, "c", "l").await;

    // Subscriptions per connection.
    let mut ws = ws_connect(&server, Some(&token_a)).await;
    for (topic, token) in [("a", &token_a), ("b", &token_b)] {
        send(
            &mut ws,
            json!({"type": "subscribe", "topic": topic, "token": token}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["type"], "ack");
    }
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "c", "token": token_c}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["code"], "BAD_REQUEST", "{e}");

    // Connections: the third is refused with 503 until one goes.
    let url = format!("/v1/topics/a/events?access_token={token_a}");
    let sse = SseReader::open(&server, &url, &[]).await.unwrap();
    match SseReader::open(&server, &url, &[]).await {
        Err((status, body)) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body["error"]["code"], "too_many_live_connections");
        }
        Ok(_) => panic!("a third live connection was let in"),
    }
    drop(sse);
    // Dropped client side; the server notices at its next write.
    publish(&server, "a", &publisher, "text/plain", b"wake".to_vec()).await;
    assert_eq!(recv(&mut ws).await["message"]["payload"], "wake");
    wait_until(|| async { server.get("/v1/topics/a").await.json()["live"]["connections"] == 1 })
        .await;
    let mut sse = SseReader::open(&server, &url, &[]).await.unwrap();

    // A frame over the limit ends that connection only.
    ws.send(Message::text("x".repeat(2048))).await.unwrap();
    let ended = timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the oversized frame's connection stayed open"
    );
    publish(&server, "a", &publisher, "text/plain", b"still".to_vec()).await;
    assert_eq!(sse.next().await.unwrap().data, "still");
    server.assert_alive().await;
}

/// With `Overflow::DropOldest` a client that falls behind stays connected,
/// loses the oldest queued messages (counted), and ends up with the newest.
#[tokio::test]
async fn drop_oldest_keeps_a_slow_websocket_connected_with_the_newest() {
    let server = live_server(LiveConfig {
        queue_capacity: 8,
        overflow: Overflow::DropOldest,
        ..LiveConfig::default()
    })
    .await;
    let publisher = server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let mut slow = ws_connect(&server, Some(&token)).await;
    send(&mut slow, json!({"type": "subscribe", "topic": "t"})).await;
    assert_eq!(recv(&mut slow).await["type"], "ack");
    let n = 400;
    let payload = "z".repeat(64 * 1024);
    let mut last = String::new();
    for _ in 0..n {
        last = publish(
            &server,
            "t",
            &publisher,
            "text/plain",
            payload.clone().into_bytes(),
        )
        .await;
    }
    wait_until(|| async {
        let body = server.get("/metrics").await.body;
        String::from_utf8_lossy(&body)
            .lines()
            .any(|l| l.starts_with("broker_live_messages_dropped_total ") && !l.ends_with(" 0"))
    })
    .await;
    // Reading again: events only, no error, ending with the last one.
    let mut events = 0;
    loop {
        let e = recv(&mut slow).await;
        assert_eq!(e["type"], "event", "{e}");
        events += 1;
        if e["message"]["id"] == last.as_str() {
            break;
        }
    }
    assert!(events < n, "{events}");
    send(&mut slow, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut slow).await["type"], "pong");
    assert_eq!(
        server.get("/v1/topics/t").await.json()["live"]["connections"],
        1
    );
}

/// A client that answers no ping for two heartbeats is disconnected; one
/// that reads (and so answers pings) stays.
#[tokio::test]
async fn a_websocket_that_answers_no_pings_is_closed() {
    let server = live_server(LiveConfig {
        heartbeat: Duration::from_millis(100),
        ..LiveConfig::default()
    })
    .await;
    server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let mut silent = ws_connect(&server, Some(&token)).await;
    let mut alive = ws_connect(&server, Some(&token)).await;
    for ws in [&mut silent, &mut alive] {
        send(ws, json!({"type": "subscribe", "topic": "t"})).await;
        assert_eq!(recv(ws).await["type"], "ack");
    }
    // `alive` keeps reading (tungstenite answers pings as it reads);
    // `silent` reads nothing until the server has given up on it.
    let reader = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_millis(800);
        while let Ok(frame) = tokio::time::timeout_at(until, alive.next()).await {
            assert!(matches!(frame, Some(Ok(Message::Ping(_)))), "{frame:?}");
        }
        alive
    });
    wait_until(|| async { server.get("/v1/topics/t").await.json()["live"]["connections"] == 1 })
        .await;
    let mut alive = reader.await.unwrap();
    send(&mut alive, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut alive).await["type"], "pong");
    // What the silent one finds when it reads at last: pings, then the
    // close frame — or, when its belated pong hits the closed socket
    // first, the end of the connection.
    loop {
        match timeout(PATIENCE, silent.next()).await.expect("in time") {
            Some(Ok(Message::Ping(_))) => continue,
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Away);
                break;
            }
            Some(Err(_)) | None => break,
            other => panic!("expected pings then a close, got {other:?}"),
        }
    }
}

/// `Last-Event-ID` (SSE) and `last_event_id` (WebSocket) resume with
/// everything the log retains after that id, past `replay_messages` and
/// in pages, then go live without a gap or a repeat.
#[tokio::test]
async fn a_resume_far_back_replays_everything_retained_in_order() {
    let limits = Limits {
        replay_messages: 5,
        replay_bytes: 1024,
        ..Limits::default()
    };
    let config = LiveConfig {
        queue_capacity: 64,
        ..LiveConfig::default()
    };
    let server = live_server_with(config, ApiConfig::default(), limits).await;
    let publisher = server.publisher("orders", "p").await;
    let token = listener(&server, "orders", "l").await;
    // 600 messages: more than a page (256), than the queue (64) and than
    // `replay_messages` (5).
    let ids = publish_texts(
        &server,
        "orders",
        &publisher,
        (0..600).map(|n| format!("message {n:03} {}", "x".repeat(40))),
    )
    .await;

    let auth = format!("Bearer {token}");
    let mut sse = SseReader::open(
        &server,
        "/v1/topics/orders/events",
        &[("authorization", &auth), ("last-event-id", &ids[3])],
    )
    .await
    .unwrap();
    let mut ws = ws_connect(&server, Some(&token)).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "orders", "last_event_id": ids[3]}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["replayed"], 596, "{ack}");
    // Published while the replays are under way: comes after them, once.
    let later = publish(
        &server,
        "orders",
        &publisher,
        "text/plain",
        b"later".to_vec(),
    )
    .await;
    for id in &ids[4..] {
        assert_eq!(sse.next().await.unwrap().id.as_ref(), Some(id));
        let e = recv(&mut ws).await;
        assert_eq!(e["message"]["id"], json!(id), "{e}");
    }
    let e = sse.next().await.unwrap();
    assert_eq!(
        (e.id.as_deref(), e.data.as_str()),
        (Some(later.as_str()), "later")
    );
    let e = recv(&mut ws).await;
    assert_eq!(e["message"]["id"], json!(later));
    // `last_n` stays bounded by `replay_messages`.
    send(&mut ws, json!({"type": "unsubscribe", "topic": "orders"})).await;
    assert_eq!(recv(&mut ws).await["type"], "ack");
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "orders", "last_n": 1000}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["replayed"], 5);
}

/// Deleting a topic ends what listens to it: its event streams end with a
/// `TOPIC_DELETED` error; a WebSocket gets an error frame and stops
/// listening to it while its other topics go on.
#[tokio::test]
async fn deleting_a_topic_ends_its_live_connections() {
    let server = live_server(LiveConfig::default()).await;
    let p_gone = server.publisher("gone", "p").await;
    let p_kept = server.publisher("kept", "p").await;
    let l_gone = listener(&server, "gone", "l").await;
    let auth = format!("Bearer {l_gone}");
    let mut sse = SseReader::open(
        &server,
        "/v1/topics/gone/events",
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    // One WebSocket on both topics, with each topic's listener token.
    let l_kept = listener(&server, "kept", "l").await;
    let mut ws = ws_connect(&server, Some(&l_gone)).await;
    for (topic, token) in [("gone", &l_gone), ("kept", &l_kept)] {
        send(
            &mut ws,
            json!({"type": "subscribe", "topic": topic, "token": token, "request_id": topic}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["type"], "ack");
    }
    publish(&server, "gone", &p_gone, "text/plain", b"before".to_vec()).await;
    assert_eq!(sse.next().await.unwrap().data, "before");
    assert_eq!(payload_of(&recv(&mut ws).await), "before");

    assert_eq!(server.delete("/v1/topics/gone").await.status, 204);
    let last = sse.next().await.expect("a last event");
    assert_eq!(last.kind.as_deref(), Some("broker.error"));
    assert!(last.data.contains("TOPIC_DELETED"), "{}", last.data);
    assert_eq!(sse.next().await, None, "the stream ended");
    let frame = recv(&mut ws).await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("TOPIC_DELETED"))
    );
    // The other topic still flows on the same connection.
    publish(&server, "kept", &p_kept, "text/plain", b"still".to_vec()).await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["topic"].as_str(), payload_of(&e)),
        (Some("kept"), &json!("still"))
    );
    // The deleted topic's tokens are gone with it.
    let r = server
        .call(
            "POST",
            "/v1/topics/gone/messages",
            &[("authorization", &format!("Bearer {p_gone}"))],
            "x",
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(server.get("/v1/topics/gone").await.status, 404);
}

/// What a WebSocket client has sent of a message is counted in the memory
/// budget (`--max-memory-bytes`) until the message is answered, so half-sent
/// messages cannot hold memory outside it: at the limit the sender's
/// connection is closed with `1013 Try Again Later`, and everyone else goes
/// on. Frames other than publish are small; publish frames may be large.
#[tokio::test]
async fn websocket_reads_count_in_the_memory_budget_and_control_frames_are_small() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    };
    let server = live_server(LiveConfig::default()).await;
    let token = listener(&server, "a", "l").await;
    let publisher = server.publisher("a", "p").await;
    let memory = server.broker.memory().clone();
    let mut ws = ws_connect(&server, Some(&token)).await;

    // A subscribe frame of 100 KiB is refused, echoing its request id; the
    // connection stays.
    let big_id = "x".repeat(100 * 1024);
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "a", "last_event_id": big_id, "request_id": 7}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["code"], "BAD_REQUEST", "{e}");
    assert_eq!(e["request_id"], 7);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("at most 65536 bytes"),
        "{e}"
    );
    // A publish frame of 100 KiB is taken.
    let payload = "p".repeat(100 * 1024);
    send(
        &mut ws,
        json!({"type": "publish", "topic": "a", "payload": payload, "token": publisher, "request_id": 8}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["request_id"].as_i64()),
        (Some("ack"), Some(8)),
        "{ack}"
    );

    // Half of a 1 MiB message (its first fragment, not final) is counted
    // while the server holds it, and released when the client goes.
    let base = memory.used();
    let half = Frame::message(vec![b' '; 1 << 20], OpCode::Data(Data::Text), false);
    ws.send(Message::Frame(half)).await.unwrap();
    wait_until(|| {
        let memory = memory.clone();
        async move { memory.used() >= base + (1 << 20) }
    })
    .await;
    drop(ws);
    wait_until(|| {
        let memory = memory.clone();
        async move { memory.used() <= base }
    })
    .await;

    // With the budget all but full (something else holds it), the same
    // half message closes its connection with 1013; once the budget has
    // room again a new connection works.
    let hog = memory.charge(memory.limit() - memory.used() - (256 << 10));
    let mut ws = ws_connect(&server, Some(&token)).await;
    let half = Frame::message(vec![b' '; 1 << 20], OpCode::Data(Data::Text), false);
    // The server may close before the whole fragment is written.
    let _ = ws.send(Message::Frame(half)).await;
    let code = timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => break Some(frame.code),
                Some(Ok(Message::Close(None))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the connection is closed in time");
    assert_eq!(code, Some(CloseCode::Again));
    drop(hog);
    wait_until(|| {
        let memory = memory.clone();
        async move { memory.used() <= base }
    })
    .await;
    let mut ws = ws_connect(&server, Some(&token)).await;
    send(&mut ws, json!({"type": "subscribe", "topic": "a"})).await;
    assert_eq!(recv(&mut ws).await["type"], "ack");
    publish(&server, "a", &publisher, "text/plain", b"after".to_vec()).await;
    assert_eq!(payload_of(&recv(&mut ws).await), "after");
    server.assert_alive().await;
}

/// A message's event type is on its live events: `event_type` in the
/// WebSocket event frame (null when none, also on a replay), and an
/// `event_type:` field on Server-Sent Events (none when none; the event
/// itself stays a `message` event for `EventSource`). A WebSocket publish
/// frame names one with `event_type`.
#[tokio::test]
async fn event_types_are_shown_on_live_events() {
    let server = live_server(LiveConfig::default()).await;
    let publisher = server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let auth = format!("Bearer {publisher}");
    let r = server
        .call(
            "POST",
            "/v1/topics/t/messages",
            &[
                ("authorization", &auth),
                ("content-type", "text/plain"),
                ("event-type", "invoice.paid"),
            ],
            "typed",
        )
        .await;
    assert_eq!(r.status, 202);

    let url = format!("/v1/topics/t/events?access_token={token}&last_n=5");
    let mut sse = SseReader::open(&server, &url, &[]).await.unwrap();
    let e = sse.next().await.unwrap();
    assert_eq!(
        (e.kind, e.event_type.as_deref(), e.data.as_str()),
        (None, Some("invoice.paid"), "typed")
    );

    let mut ws = ws_connect(&server, Some(&token)).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "t", "last_n": 5}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "ack");
    let replayed = recv(&mut ws).await;
    assert_eq!(
        replayed["message"]["event_type"], "invoice.paid",
        "{replayed}"
    );

    // Published over the WebSocket: with a type, then without; a bad one
    // is refused with the frame's request id.
    send(
        &mut ws,
        json!({"type": "publish", "topic": "t", "payload": {"n": 1}, "event_type": "order.created", "token": publisher}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "publish", "topic": "t", "payload": {"n": 2}, "token": publisher}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "publish", "topic": "t", "payload": 3, "event_type": "no way", "token": publisher, "request_id": "r3"}),
    )
    .await;
    let mut events = Vec::new();
    let mut refused = None;
    while events.len() < 2 || refused.is_none() {
        let frame = recv(&mut ws).await;
        match frame["type"].as_str() {
            Some("event") => events.push(frame["message"]["event_type"].clone()),
            Some("error") => refused = Some(frame),
            _ => {}
        }
    }
    assert_eq!(events, [json!("order.created"), Value::Null]);
    let refused = refused.unwrap();
    assert_eq!(
        (refused["code"].as_str(), refused["request_id"].as_str()),
        (Some("BAD_REQUEST"), Some("r3")),
        "{refused}"
    );
    for expected in [Some("order.created"), None] {
        let e = sse.next().await.unwrap();
        assert_eq!(e.event_type.as_deref(), expected);
    }
}

/// Live subscriptions filter as subscribers do: a WebSocket subscribe
/// frame's `filter` and the SSE `filter` query parameter (a filter's
/// JSON, percent-encoded); replays are filtered too; a bad filter is
/// refused (`BAD_REQUEST` echoing the request id, `400` on SSE).
#[tokio::test]
async fn live_subscriptions_take_a_filter() {
    let server = live_server(LiveConfig::default()).await;
    let publisher = server.publisher("t", "p").await;
    let token = listener(&server, "t", "l").await;
    let auth = format!("Bearer {publisher}");
    let publish_typed = |t: &'static str, body: &'static str| {
        let server = &server;
        let auth = auth.clone();
        async move {
            let r = server
                .call(
                    "POST",
                    "/v1/topics/t/messages",
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                        ("event-type", t),
                    ],
                    body,
                )
                .await;
            assert_eq!(r.status, 202);
        }
    };
    publish_typed("invoice.paid", r#"{"n":1}"#).await;
    publish_typed("order.created", r#"{"n":2}"#).await;

    let filter = r#"{"event_types":["invoice.*"],"expression":"payload.n+1>1"}"#;
    let encoded: String = filter
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'+' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("/v1/topics/t/events?access_token={token}&last_n=10&filter={encoded}");
    let mut sse = SseReader::open(&server, &url, &[]).await.unwrap();
    let mut ws = ws_connect(&server, Some(&token)).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "t", "last_n": 10, "filter": {"event_types": ["order.*"]}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "ack");
    // Replayed: each sees only its type.
    assert_eq!(payload_of(&recv(&mut ws).await)["n"], 2);
    assert_eq!(sse.next().await.unwrap().data, r#"{"n":1}"#);
    // Live.
    publish_typed("order.shipped", r#"{"n":3}"#).await;
    publish_typed("invoice.void", r#"{"n":4}"#).await;
    assert_eq!(payload_of(&recv(&mut ws).await)["n"], 3);
    assert_eq!(sse.next().await.unwrap().data, r#"{"n":4}"#);

    // Bad filters.
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "t", "filter": {"expression": "n >"}, "request_id": 9}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_i64()),
        (Some("BAD_REQUEST"), Some(9)),
        "{e}"
    );
    let bad = format!("/v1/topics/t/events?access_token={token}&filter=%7Bnope");
    match SseReader::open(&server, &bad, &[]).await {
        Err((status, body)) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(body["error"]["code"], "invalid_filter", "{body}");
        }
        Ok(_) => panic!("a bad filter was taken"),
    }
}

/// Seed 003's publish frame carries `message.id`: the idempotency key.
/// Sent twice, it makes one message and the second ack says it was a
/// replay; another payload under the id is refused, echoing the
/// `request_id`; our own `idempotency_key` works the same way.
#[tokio::test]
async fn a_websocket_publish_with_a_message_id_is_published_once() {
    let server = live_server(LiveConfig::default()).await;
    let publisher = server.publisher("orders", "p").await;
    let reader = listener(&server, "orders", "l").await;
    let mut ws = ws_connect(&server, Some(&publisher)).await;
    let frame = |request_id: &str, payload: Value| {
        json!({"type": "publish", "topic": "orders", "request_id": request_id,
               "message": {"id": "550e8400-e29b-41d4-a716-446655440000", "payload": payload}})
    };
    send(&mut ws, frame("r1", json!({"n": 1}))).await;
    let first = recv(&mut ws).await;
    assert_eq!(first["type"], "ack", "{first}");
    assert!(first.get("idempotent_replayed").is_none(), "{first}");
    send(&mut ws, frame("r2", json!({"n": 1}))).await;
    let second = recv(&mut ws).await;
    assert_eq!(second["request_id"], "r2");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["idempotent_replayed"], true, "{second}");
    send(&mut ws, frame("r3", json!({"n": 2}))).await;
    let refused = recv(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["request_id"], "r3");
    assert_eq!(refused["code"], "IDEMPOTENCY_KEY_REUSED", "{refused}");
    let ours = json!({"type": "publish", "topic": "orders", "payload": 7, "idempotency_key": "k"});
    send(&mut ws, ours.clone()).await;
    let a = recv(&mut ws).await;
    send(&mut ws, ours).await;
    let b = recv(&mut ws).await;
    assert_eq!(
        (a["id"].clone(), b["idempotent_replayed"].clone()),
        (b["id"].clone(), json!(true))
    );
    let r = server
        .call(
            "GET",
            "/v1/topics/orders/messages?offset=0",
            &[("authorization", &format!("Bearer {reader}"))],
            "",
        )
        .await;
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 2);
}
