//! The TCP protocol against the HTTP API, in one process and against one
//! broker: (a) publishes/s over TCP (one command in flight per connection,
//! then `--depth` pipelined) as a ratio to publishes/s over HTTP (a hyper
//! client on keep-alive connections, measured before and after in the same
//! run); (b) FETCH throughput over TCP, pipelined, in messages/s; (c)
//! multi-message FETCH (`FETCH <topic> <offset> <max>`, one command in
//! flight per connection), in messages/s.
//!
//! ```text
//! cargo run --release -p broker-tcp --example tcp_load -- [--connections 16]
//!     [--depth 64] [--payload 100] [--seconds 3] [--max 100]
//!     [--data-dir PATH (the broker keeps its log there, --fsync always;
//!      default: in memory)]
//! ```
//!
//! Everything runs on 127.0.0.1, six phases of `--seconds` each.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use broker_core::Broker;
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{Api, ApiConfig, ServerConfig};
use broker_tcp::TcpConfig;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

// The same allocator as the server binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "bench";

struct Options {
    connections: usize,
    depth: usize,
    payload: usize,
    seconds: u64,
    max: usize,
    data_dir: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        connections: 16,
        depth: 64,
        payload: 100,
        seconds: 3,
        max: 100,
        data_dir: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1).map(String::as_str));
        if flag == "--data-dir" {
            o.data_dir = value.map(str::to_owned);
            continue;
        }
        let n: usize = value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad value {value:?} for {flag}"));
        match flag {
            "--connections" => o.connections = n,
            "--depth" => o.depth = n.max(1),
            "--payload" => o.payload = n,
            "--seconds" => o.seconds = n as u64,
            "--max" => o.max = n.clamp(1, broker_tcp::MAX_FETCH as usize),
            other => panic!("unknown flag {other}"),
        }
    }
    o
}

/// One HTTP/1.1 keep-alive connection publishing back to back until
/// `deadline`; returns how many were accepted.
async fn http_publisher(addr: SocketAddr, token: String, payload: Bytes, deadline: Instant) -> u64 {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let auth = format!("Bearer {token}");
    let mut accepted = 0;
    while Instant::now() < deadline {
        let req = Request::post(format!("http://{addr}/v1/topics/{TOPIC}/messages"))
            .header("host", addr.to_string())
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .body(Full::new(payload.clone()))
            .unwrap();
        if sender.ready().await.is_err() {
            break;
        }
        let Ok(res) = sender.send_request(req).await else {
            break;
        };
        if res.status() == 202 {
            accepted += 1;
        }
        let _ = res.into_body().collect().await;
    }
    accepted
}

/// A TCP connection that has sent `AUTH <token>` (its `OK` still to read).
async fn connect(addr: SocketAddr, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(format!("AUTH {token}\r\n").as_bytes())
        .await
        .unwrap();
    stream
}

/// One TCP connection reading the log with `FETCH <topic> <offset> <max>`,
/// one command at a time, from `start` on (back to `first` at the end)
/// until `deadline`; returns the messages read.
async fn multi_fetcher(
    addr: SocketAddr,
    token: &str,
    max: usize,
    (first, start): (u64, u64),
    deadline: Instant,
) -> u64 {
    let mut stream = connect(addr, token).await;
    let mut input = BytesMut::with_capacity(256 * 1024);
    let mut read = 0u64;
    let mut offset = start;
    let mut authed = false;
    while Instant::now() < deadline {
        stream
            .write_all(format!("FETCH {TOPIC} {offset} {max}\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = 0;
        // Until `max` records or a NONE: the end of this answer.
        loop {
            let Some(newline) = input.iter().position(|&b| b == b'\n') else {
                if stream.read_buf(&mut input).await.unwrap() == 0 {
                    panic!("the server closed the connection");
                }
                continue;
            };
            let line = &input[..newline - 1];
            if let Some(header) = line.strip_prefix(b"MSG ") {
                let mut words = std::str::from_utf8(header).unwrap().split(' ');
                let at: u64 = words.next().unwrap().parse().unwrap();
                let size: usize = words.next().unwrap().parse().unwrap();
                while input.len() < newline + 1 + size + 2 {
                    if stream.read_buf(&mut input).await.unwrap() == 0 {
                        panic!("the server closed the connection");
                    }
                }
                input.advance(newline + 1 + size + 2);
                offset = at + 1;
                got += 1;
                read += 1;
                if got == max {
                    break;
                }
            } else if line.starts_with(b"NONE") {
                input.advance(newline + 1);
                offset = first;
                break;
            } else if line.starts_with(b"OK") && !authed {
                input.advance(newline + 1);
                authed = true;
            } else {
                panic!("{}", String::from_utf8_lossy(line));
            }
        }
    }
    read
}

/// One TCP connection keeping `depth` commands in flight until `deadline`
/// (each answer read lets one more go), then reading the answers still
/// due. `command(i)` is the i-th command. Returns how many answers were
/// `OK`/`MSG`.
async fn tcp_client(
    addr: SocketAddr,
    token: &str,
    depth: usize,
    deadline: Instant,
    mut command: impl FnMut(u64, &mut Vec<u8>),
) -> u64 {
    let mut stream = connect(addr, token).await;
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut output = Vec::with_capacity(64 * 1024);
    let (mut sent, mut answered, mut good) = (0u64, 0u64, 0u64);
    let mut authed = false;
    for _ in 0..depth {
        command(sent, &mut output);
        sent += 1;
    }
    stream.write_all(&output).await.unwrap();
    while answered < sent {
        if stream.read_buf(&mut input).await.unwrap() == 0 {
            panic!("the server closed the connection");
        }
        let mut done = 0;
        while let Some(newline) = input.iter().position(|&b| b == b'\n') {
            let line = &input[..newline - 1];
            let skip = if let Some(header) = line.strip_prefix(b"MSG ") {
                let size: usize = std::str::from_utf8(header)
                    .unwrap()
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                if input.len() < newline + 1 + size + 2 {
                    break;
                }
                good += 1;
                newline + 1 + size + 2
            } else {
                if line.starts_with(b"OK") {
                    good += authed as u64;
                } else {
                    panic!("{}", String::from_utf8_lossy(line));
                }
                newline + 1
            };
            input.advance(skip);
            if authed {
                done += 1;
            } else {
                authed = true;
            }
        }
        answered += done;
        if Instant::now() < deadline && done > 0 {
            output.clear();
            for _ in 0..done {
                command(sent, &mut output);
                sent += 1;
            }
            stream.write_all(&output).await.unwrap();
        }
    }
    good
}

/// Runs `each(i)` on `n` tasks at once and returns the sum of their counts
/// per second.
async fn rate<F>(n: usize, each: impl Fn(usize) -> F) -> f64
where
    F: std::future::Future<Output = u64> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(each(i))).collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let o = options();
    let run_for = Duration::from_secs(o.seconds);
    // No subscribers: what is measured is the publish path and the
    // protocol, not deliveries.
    let notifier = WebhookNotifier::new(DeliveryConfig::default());
    let broker = match &o.data_dir {
        None => Broker::new(notifier),
        Some(dir) => {
            let store = broker_store::DiskStore::open(dir, broker_store::Options::default())
                .expect("the data dir opens");
            Broker::open(notifier, broker_core::Limits::default(), store)
                .await
                .unwrap()
        }
    };
    let publisher = broker
        .register_publisher(TOPIC, "load")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let listener = broker
        .register_listener(TOPIC, "load")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();

    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let api = Api::new(broker.clone(), ApiConfig::default());
    tokio::spawn(broker_http::serve(
        http,
        api,
        ServerConfig::default(),
        std::future::pending(),
    ));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    tokio::spawn(broker_tcp::serve(
        tcp,
        broker.clone(),
        TcpConfig::default(),
        std::future::pending(),
    ));

    let payload = Bytes::from(vec![b'x'; o.payload]);
    let mut pub_command = format!("PUB {TOPIC} {}\r\n", o.payload).into_bytes();
    pub_command.extend_from_slice(&payload);
    pub_command.extend_from_slice(b"\r\n");

    let http_rate = || {
        let (token, payload) = (publisher.clone(), payload.clone());
        let deadline = Instant::now() + run_for;
        rate(o.connections, move |_| {
            http_publisher(http_addr, token.clone(), payload.clone(), deadline)
        })
    };
    let tcp_pub_rate = |depth: usize| {
        let (token, command) = (publisher.clone(), pub_command.clone());
        let deadline = Instant::now() + run_for;
        rate(o.connections, move |_| {
            let (token, command) = (token.clone(), command.clone());
            async move {
                tcp_client(tcp_addr, &token, depth, deadline, |_, out| {
                    out.extend_from_slice(&command)
                })
                .await
            }
        })
    };

    println!(
        "{} connections, {} B payloads, {} s per phase, {} in flight per TCP connection, {}",
        o.connections,
        o.payload,
        o.seconds,
        o.depth,
        match &o.data_dir {
            Some(dir) => format!("log in {dir} (--fsync always)"),
            None => "log in memory".to_owned(),
        }
    );
    let http_before = http_rate().await;
    let tcp_one = tcp_pub_rate(1).await;
    let tcp_pipelined = tcp_pub_rate(o.depth).await;

    // Fetch what the phases above published, each connection its own
    // stretch of the log, wrapping around.
    let (first, next) = broker.log_bounds(TOPIC).await.unwrap();
    let span = (next - first).max(1);
    let fetch_rate = {
        let token = listener.clone();
        let deadline = Instant::now() + run_for;
        let connections = o.connections as u64;
        rate(o.connections, move |i| {
            let token = token.clone();
            let start = span / connections * i as u64;
            async move {
                tcp_client(tcp_addr, &token, o.depth, deadline, |k, out| {
                    let offset = first + (start + k) % span;
                    out.extend_from_slice(format!("FETCH {TOPIC} {offset}\r\n").as_bytes());
                })
                .await
            }
        })
        .await
    };
    let multi_rate = {
        let token = listener.clone();
        let deadline = Instant::now() + run_for;
        let connections = o.connections as u64;
        let max = o.max;
        rate(o.connections, move |i| {
            let token = token.clone();
            let start = first + span / connections * i as u64;
            async move { multi_fetcher(tcp_addr, &token, max, (first, start), deadline).await }
        })
        .await
    };
    let http_after = http_rate().await;
    let http = (http_before + http_after) / 2.0;

    println!(
        "HTTP publish, 1 in flight per connection: {http:.0}/s (before {http_before:.0}, after {http_after:.0})"
    );
    println!(
        "TCP PUB, 1 in flight per connection:      {tcp_one:.0}/s = {:.2} x HTTP",
        tcp_one / http
    );
    println!(
        "TCP PUB, {} in flight per connection:     {tcp_pipelined:.0}/s = {:.2} x HTTP",
        o.depth,
        tcp_pipelined / http
    );
    println!(
        "TCP FETCH, {} in flight per connection:   {fetch_rate:.0} messages/s = {:.2} x HTTP publishes/s ({} messages in the log)",
        o.depth,
        fetch_rate / http,
        span
    );
    println!(
        "TCP FETCH <max {}>, 1 in flight per connection: {multi_rate:.0} messages/s = {:.2} x one-message FETCH",
        o.max,
        multi_rate / fetch_rate
    );
}
