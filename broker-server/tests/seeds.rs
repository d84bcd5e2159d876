//! The seeds' own clients, against the real binary: seed 003's WebSocket
//! frames and REST calls and seed 002's TCP framing, verbatim from their
//! documents (`../shared/seeds`), work beside this broker's own API.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "a secret of at least thirty-two bytes for the seeds";

/// An HS256 JWT with `scope`.
fn jwt(scope: &str) -> String {
    let claims = json!({ "exp": jsonwebtoken::get_current_timestamp() + 600, "scope": scope });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn tcp_addr(logs: &std::sync::mpsc::Receiver<String>) -> String {
    loop {
        let log = logs
            .recv_timeout(PATIENCE)
            .expect("the TCP address is logged");
        if log.contains("tcp listening") {
            break listening_addr(&log).expect("an address");
        }
    }
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn frame(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a frame") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_seeds_clients_work_unchanged() {
    let admin = jwt("admin");
    let (_server, addr, _, logs) = start(&["--jwt-secret", SECRET, "--tcp-listen", "127.0.0.1:0"]);
    let tcp = tcp_addr(&logs);
    let auth = format!("Authorization: Bearer {admin}\r\nContent-Type: application/json\r\n");
    // Seed 003: `POST /v1/topics {"name": "orders"}`.
    let (status, body) = http(&addr, "POST", "/v1/topics", &auth, r#"{"name": "orders"}"#);
    assert!(status.contains("201"), "{status} {body}");

    // Seed 003's WebSocket, with one token for both (a JWT with both
    // scopes, on the query string as a browser sends it).
    let token = jwt("publish:orders listen:orders");
    let (mut ws, _) =
        tungstenite::connect(format!("ws://{addr}/v1/ws?access_token={token}")).unwrap();
    let subscribe = r#"{
  "type": "subscribe",
  "topic": "orders",
  "client_id": "subscriber-1",
  "last_n": 5,
  "request_id": "req-123"
}"#;
    ws.send(tungstenite::Message::text(subscribe)).unwrap();
    let ack = frame(&mut ws);
    assert_eq!(
        (
            ack["type"].as_str(),
            ack["request_id"].as_str(),
            ack["topic"].as_str(),
            ack["status"].as_str()
        ),
        (Some("ack"), Some("req-123"), Some("orders"), Some("ok")),
        "{ack}"
    );
    let publish = r#"{
  "type": "publish",
  "topic": "orders",
  "message": {
    "id": "550e8400-e29b-41d4-a716-446655440000",
    "payload": {
      "order_id": "ORD-123",
      "amount": "99.5",
      "currency": "USD"
    }
  },
  "request_id": "req-124"
}"#;
    ws.send(tungstenite::Message::text(publish)).unwrap();
    // The ack and the event, in either order.
    let (mut acked, mut event) = (None, None);
    while acked.is_none() || event.is_none() {
        let f = frame(&mut ws);
        match f["type"].as_str() {
            Some("ack") => acked = Some(f),
            Some("event") => event = Some(f),
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!(acked.unwrap()["request_id"], "req-124");
    let event = event.unwrap();
    assert_eq!(event["topic"], "orders");
    assert_eq!(
        event["message"]["payload"]["order_id"], "ORD-123",
        "{event}"
    );
    // An error frame echoes its request id, in both shapes.
    ws.send(tungstenite::Message::text(
        r#"{"type":"subscribe","topic":"orders","client_id":"c","request_id":"req-9","nonsense":1}"#,
    ))
    .unwrap();
    let error = frame(&mut ws);
    assert_eq!(error["type"], "error");
    assert_eq!(error["request_id"], "req-9", "{error}");
    assert_eq!(error["error"]["code"], "BAD_REQUEST", "{error}");
    ws.send(tungstenite::Message::text(
        r#"{"type": "unsubscribe", "topic": "orders", "client_id": "subscriber-1", "request_id": "req-125"}"#,
    ))
    .unwrap();
    assert_eq!(frame(&mut ws)["request_id"], "req-125");
    ws.send(tungstenite::Message::text(
        r#"{"type": "ping", "request_id": "req-126"}"#,
    ))
    .unwrap();
    let pong = frame(&mut ws);
    assert_eq!(
        (pong["type"].as_str(), pong["request_id"].as_str()),
        (Some("pong"), Some("req-126"))
    );

    // Seed 002's TCP framing: no CRLF after the payload.
    let publisher = jwt("publish:orders listen:orders");
    let stream = TcpStream::connect(&tcp).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    write!(writer, "AUTH {publisher}\r\n").unwrap();
    write!(writer, "PUB orders 15\r\n{{\"order\":\"o-1\"}}").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "OK\r\n");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "OK 1\r\n", "answered without a trailing CRLF");
    write!(writer, "FETCH orders 1\r\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "MSG 1 15\r\n");
    let mut payload = [0u8; 17];
    reader.read_exact(&mut payload).unwrap();
    assert_eq!(&payload, b"{\"order\":\"o-1\"}\r\n");

    // Seed 003's REST: health, and stats behind management auth.
    let (status, body) = http(&addr, "GET", "/v1/health", "", "");
    assert!(status.contains("200"), "{status} {body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert!(health["uptime_seconds"].is_u64(), "{health}");
    assert_eq!(
        (health["topics"].as_u64(), health["subscribers"].as_u64()),
        (Some(1), Some(0))
    );
    let (status, _) = http(&addr, "GET", "/v1/stats", "", "");
    assert!(status.contains("401"), "{status}");
    let (status, body) = http(&addr, "GET", "/v1/stats", &auth, "");
    assert!(status.contains("200"), "{status} {body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        stats,
        json!({"topics": {"orders": {"messages": 2, "subscribers": 0}}})
    );
}
