//! Broker memory per live connection: the growth of the process's resident
//! memory (RSS) while WebSocket and SSE listeners connect and subscribe.
//!
//! `cargo run --release --example live_memory -- [connections=4000]`
//!
//! The clients are raw TCP sockets that speak just enough of each protocol
//! (a handshake and one masked subscribe frame; one GET) and keep nothing
//! else, so the growth is the broker's: its tasks, queues, buffers and
//! registry entries. Kernel socket buffers are not in RSS. Needs about two
//! file descriptors per connection (`ulimit -n`).

use std::time::Duration;

use broker_core::Broker;
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{serve, Api, ApiConfig, LiveConfig, LiveHub, ServerConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's resident memory in bytes (Linux `/proc/self/statm`).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Reads until `needle` has come.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// A WebSocket client frame: text, masked (with a zero mask, which the
/// protocol allows), under 126 bytes.
fn text_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(text.as_bytes());
    frame
}

async fn websocket(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    read_until(&mut s, b"\r\n\r\n").await;
    s.write_all(&text_frame(r#"{"type":"subscribe","topic":"mem"}"#))
        .await
        .unwrap();
    read_until(&mut s, br#""type":"ack""#).await;
    s
}

async fn sse(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v1/topics/mem/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, b": connected").await;
    s
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of connections"))
        .unwrap_or(4_000);
    let live = LiveHub::new(LiveConfig {
        allow_anonymous: true,
        max_connections: 2 * n + 10,
        // No heartbeats during the measurement.
        heartbeat: Duration::from_secs(3600),
        ..LiveConfig::default()
    });
    let broker = Broker::new((
        WebhookNotifier::new(DeliveryConfig::default()),
        live.clone(),
    ));
    broker.register_publisher("mem", "p").await.unwrap();
    let api = Api::new(
        broker,
        ApiConfig {
            live: Some(live),
            ..ApiConfig::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ServerConfig {
        max_connections: 2 * n + 10,
        ..ServerConfig::default()
    };
    tokio::spawn(serve(listener, api, server, std::future::pending()));
    // Warm up the runtime and allocator with a few of each.
    let warm = (websocket(addr).await, sse(addr).await);

    let before = resident();
    let mut keep = Vec::with_capacity(n);
    for _ in 0..n {
        keep.push(websocket(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_ws = resident();
    for _ in 0..n {
        keep.push(sse(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_sse = resident();
    let per = |from: usize, to: usize| to.saturating_sub(from) as f64 / n as f64;
    println!(
        "{n} WebSocket connections, each subscribed: {:.0} B per connection",
        per(before, after_ws)
    );
    println!(
        "{n} SSE connections: {:.0} B per connection",
        per(after_ws, after_sse)
    );
    drop((keep, warm));
}
