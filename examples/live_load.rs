//! Live fan-out load tool: messages/s to many concurrent WebSocket clients,
//! compared in the same run with a ceiling — a plain tokio-tungstenite
//! server writing the same frames to as many connections.
//!
//! ```text
//! cargo run --release --example live_load -- [--clients 1000]
//!     [--messages 2000 (per client)] [--payload 100] [--window 64]
//!     [--publishers 4]
//! ```
//!
//! Both phases run on loopback: `--clients` WebSocket clients read and
//! count text frames. In the broker phase they subscribe to one topic
//! through `GET /v1/ws` and the load publishes `--messages` messages over
//! HTTP, at most `--window` ahead of the slowest client so no queue
//! overflows (the run reports any SLOW_CONSUMER). Needs about two file
//! descriptors per client (`ulimit -n`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use broker_core::Broker;
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{serve, Api, ApiConfig, LiveConfig, LiveHub, ServerConfig};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Barrier,
};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Options {
    clients: usize,
    messages: u64,
    payload: usize,
    window: u64,
    publishers: usize,
}

fn options() -> Options {
    let mut o = Options {
        clients: 1000,
        messages: 2000,
        payload: 100,
        window: 64,
        publishers: 4,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .unwrap_or_else(|| panic!("{} needs a value", args[i]));
        match args[i].as_str() {
            "--clients" => o.clients = value.parse().expect("--clients"),
            "--messages" => o.messages = value.parse().expect("--messages"),
            "--payload" => o.payload = value.parse().expect("--payload"),
            "--window" => o.window = value.parse().expect("--window"),
            "--publishers" => o.publishers = value.parse().expect("--publishers"),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    o
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Counts text frames until `n` have come (after `skip` leading ones).
async fn count(mut ws: Ws, skip: u64, n: u64, received: Arc<AtomicU64>, slow: Arc<AtomicU64>) {
    let mut seen = 0;
    let mut skipped = 0;
    while seen < n {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if skipped < skip {
                    skipped += 1;
                    continue;
                }
                if t.as_str().starts_with(r#"{"type":"error""#) {
                    slow.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                seen += 1;
                received.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}

/// The ceiling: a plain tokio-tungstenite server writes `messages` copies
/// of a frame like the broker's to each client, `batch` per flush.
async fn ceiling(o: &Options, frame: &str, batch: u64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let go = Arc::new(Barrier::new(o.clients + 1));
    let frame = tokio_tungstenite::tungstenite::Utf8Bytes::from(frame.to_owned());
    let messages = o.messages;
    let server_go = go.clone();
    let clients = o.clients;
    tokio::spawn(async move {
        for _ in 0..clients {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let (go, frame) = (server_go.clone(), frame.clone());
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                go.wait().await;
                let mut sent = 0;
                while sent < messages {
                    let batch = batch.min(messages - sent);
                    for _ in 0..batch {
                        ws.feed(Message::Text(frame.clone())).await.unwrap();
                    }
                    ws.flush().await.unwrap();
                    sent += batch;
                }
            });
        }
    });
    let received = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..o.clients {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        readers.push(tokio::spawn(count(
            ws,
            0,
            o.messages,
            received.clone(),
            slow.clone(),
        )));
    }
    go.wait().await;
    let started = Instant::now();
    for r in readers {
        r.await.unwrap();
    }
    let total = received.load(Ordering::Relaxed);
    assert_eq!(
        total,
        o.messages * o.clients as u64,
        "the ceiling lost frames"
    );
    total as f64 / started.elapsed().as_secs_f64()
}

/// The broker: clients subscribe over `/v1/ws`; messages are published
/// over HTTP, at most `window` ahead of what every client has received.
async fn broker(o: &Options) -> (f64, f64, u64) {
    let live = LiveHub::new(LiveConfig {
        allow_anonymous: true,
        max_connections: o.clients + 10,
        ..LiveConfig::default()
    });
    let webhooks = WebhookNotifier::new(DeliveryConfig::default());
    let broker = Broker::new((webhooks, live.clone()));
    let token = broker
        .register_publisher("bench", "load")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let api = Api::new(
        broker,
        ApiConfig {
            live: Some(live),
            ..ApiConfig::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        api,
        ServerConfig::default(),
        std::future::pending(),
    ));

    let received = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..o.clients {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
            .await
            .unwrap();
        ws.send(Message::text(r#"{"type":"subscribe","topic":"bench"}"#))
            .await
            .unwrap();
        // Subscribed once the ack is in: only then may publishing start.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"type":"ack""#) => break,
                Some(Ok(_)) => continue,
                other => panic!("no ack: {other:?}"),
            }
        }
        readers.push(tokio::spawn(count(
            ws,
            0,
            o.messages,
            received.clone(),
            slow.clone(),
        )));
    }

    let payload = Bytes::from(format!("\"{}\"", "x".repeat(o.payload.saturating_sub(2))));
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..o.publishers {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let (published, received, slow) = (published.clone(), received.clone(), slow.clone());
        let (token, payload, clients) = (token.clone(), payload.clone(), o.clients as u64);
        let (messages, window) = (o.messages, o.window);
        publishers.push(tokio::spawn(async move {
            loop {
                // Stay within `window` of the slowest client on average.
                while published.load(Ordering::Relaxed) * clients
                    > received.load(Ordering::Relaxed) + window * clients
                {
                    if slow.load(Ordering::Relaxed) > 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                if published.fetch_add(1, Ordering::Relaxed) >= messages {
                    return;
                }
                let req = hyper::Request::post(format!("http://{addr}/v1/topics/bench/messages"))
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(Full::new(payload.clone()))
                    .unwrap();
                let res = client.request(req).await.unwrap();
                assert_eq!(res.status(), 202);
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let publish_time = started.elapsed();
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = received.load(Ordering::Relaxed);
    let expected = o.messages * o.clients as u64;
    if total != expected {
        println!("broker: only {total} of {expected} messages received");
    }
    (
        total as f64 / elapsed,
        o.messages as f64 / publish_time.as_secs_f64(),
        slow.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() {
    let o = options();
    // A frame of the size the broker sends for this payload.
    let frame = format!(
        r#"{{"type":"event","topic":"bench","message":{{"id":"msg_000000000000000000000000","payload":"{}","encoding":"json","content_type":"application/json"}},"timestamp":1795430227123}}"#,
        "x".repeat(o.payload.saturating_sub(2))
    );
    println!(
        "{} clients, {} messages each, {} B payloads ({} B frames)",
        o.clients,
        o.messages,
        o.payload,
        frame.len()
    );
    // Two ceilings: a server that flushes each frame on its own (as a live
    // server must when messages come one at a time), and one that flushes
    // 64 at once (what batching could at best reach).
    let single = ceiling(&o, &frame, 1).await;
    println!("ceiling, a flush per frame (plain tokio-tungstenite server): {single:.0} frames/s");
    let batched = ceiling(&o, &frame, 64).await;
    println!("ceiling, a flush per 64 frames: {batched:.0} frames/s");
    let (deliveries, publishes, slow) = broker(&o).await;
    println!(
        "broker: {deliveries:.0} messages/s delivered to clients ({publishes:.0} publishes/s), \
         {slow} slow consumers"
    );
    println!(
        "RATIO broker to ceiling: {:.3} (flush per frame), {:.3} (flush per 64)",
        deliveries / single,
        deliveries / batched
    );
}
