//! End-to-end load tool: real HTTP sinks on 127.0.0.1, the real broker
//! server, real publishers; compared in the same run with the ceiling, the
//! same sinks driven directly by a plain hyper client.
//!
//! ```text
//! cargo run --release --example load -- [--subscribers 10] [--connections 32]
//!     [--seconds 5] [--payload 100] [--rate 0 (publishes/s, 0 = as fast as possible)]
//!     [--rate-of-ceiling 0.5 (instead of --rate: this fraction of the ceiling)]
//!     [--max-in-flight 8 (per subscriber, as the server's flag)]
//!     [--data-dir PATH (the broker keeps its log there, --fsync always;
//!      default: in memory)]
//!     [--keyed true (every publish carries a new `Idempotency-Key`)]
//!     [--attempt-log N (attempts kept per subscriber; 0 records none;
//!      default 1000, as the server)]
//!     [--otlp true (spans exported to an in-process OTLP/HTTP collector
//!      that answers 200 to every export)]
//!     [--filter CEL (every subscriber takes this filter expression, and
//!      publishes alternate `Event-Type: even` and `odd`: with
//!      `"event_type == 'even'"` half the messages are delivered, and the
//!      report gives the deliveries considered too)]
//! ```
//!
//! Everything runs on loopback, bounded by `--seconds` per phase plus a
//! drain of at most 10 s.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use broker_core::{Broker, Endpoint};
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{serve, Api, ApiConfig, ServerConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

// The same allocator as the server binary, for both phases.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_nanos() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct Options {
    subscribers: usize,
    connections: usize,
    seconds: u64,
    payload: usize,
    rate: f64,
    rate_of_ceiling: f64,
    max_in_flight: usize,
    data_dir: Option<String>,
    filter: Option<String>,
    keyed: bool,
    attempt_log: usize,
    otlp: bool,
}

fn options() -> Options {
    let mut o = Options {
        subscribers: 10,
        connections: 32,
        seconds: 5,
        payload: 100,
        rate: 0.0,
        rate_of_ceiling: 0.0,
        max_in_flight: DeliveryConfig::default().max_in_flight,
        data_dir: None,
        filter: None,
        keyed: false,
        attempt_log: broker_core::Limits::default().attempt_log,
        otlp: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    fn parse<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> T {
        let value = value.map(String::as_str).unwrap_or("");
        value
            .parse()
            .unwrap_or_else(|_| panic!("bad value {value:?} for {flag}"))
    }
    for pair in args.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1));
        match flag {
            "--subscribers" => o.subscribers = parse(flag, value),
            "--connections" => o.connections = parse(flag, value),
            "--seconds" => o.seconds = parse(flag, value),
            "--payload" => o.payload = parse(flag, value),
            "--rate" => o.rate = parse(flag, value),
            "--rate-of-ceiling" => o.rate_of_ceiling = parse(flag, value),
            "--max-in-flight" => o.max_in_flight = parse(flag, value),
            "--data-dir" => o.data_dir = Some(parse(flag, value)),
            "--filter" => o.filter = Some(parse(flag, value)),
            "--keyed" => o.keyed = parse(flag, value),
            "--attempt-log" => o.attempt_log = parse(flag, value),
            "--otlp" => o.otlp = parse(flag, value),
            other => panic!("unknown option {other}"),
        }
    }
    o.payload = o.payload.max(8);
    o
}

/// What the sinks saw.
#[derive(Default)]
struct Received {
    count: AtomicU64,
    /// Publish→receive latencies in microseconds, when measuring.
    latencies: Mutex<Vec<u32>>,
    measuring: AtomicBool,
}

/// An OTLP/HTTP collector on 127.0.0.1 that reads each export and
/// answers 200.
async fn start_collector() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|req: Request<Incoming>| async move {
                // Read and dropped a frame at a time: a collector
                // elsewhere costs this process nothing more.
                let mut body = req.into_body();
                while let Some(Ok(_)) = body.frame().await {}
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn start_sink(received: Arc<Received>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let received = received.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let received = received.clone();
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    if let Ok(body) = body {
                        received.count.fetch_add(1, Ordering::Relaxed);
                        if received.measuring.load(Ordering::Relaxed) && body.len() >= 8 {
                            let sent = u64::from_le_bytes(body[..8].try_into().unwrap());
                            let micros = now_nanos().saturating_sub(sent) / 1000;
                            received
                                .latencies
                                .lock()
                                .push(micros.min(u32::MAX as u64) as u32);
                        }
                    }
                    Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

fn payload(len: usize) -> Bytes {
    let mut body = vec![b'x'; len];
    body[..8].copy_from_slice(&now_nanos().to_le_bytes());
    Bytes::from(body)
}

/// One HTTP/1.1 connection sending requests back to back until `deadline`
/// (or paced to `interval`); returns how many were answered with a 2xx.
#[allow(clippy::too_many_arguments)] // A load tool's knobs, each plain.
async fn drive(
    addr: SocketAddr,
    path: String,
    auth: Option<String>,
    payload_len: usize,
    deadline: Instant,
    interval: Option<Duration>,
    typed: bool,
    keyed: Option<usize>,
) -> u64 {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ok = 0;
    let mut sent = 0u64;
    // Paced connections start spread over one interval, not in step.
    let mut next = tokio::time::Instant::now()
        + interval.map_or(Duration::ZERO, |i| i.mul_f64(fastrand::f64()));
    while Instant::now() < deadline {
        if let Some(interval) = interval {
            next += interval;
            tokio::time::sleep_until(next).await;
        }
        let mut req = Request::post(format!("http://{addr}{path}"))
            .header("host", addr.to_string())
            .header("content-type", "application/octet-stream");
        if typed {
            req = req.header("event-type", if ok % 2 == 0 { "even" } else { "odd" });
        }
        if let Some(connection) = keyed {
            req = req.header("idempotency-key", format!("c{connection}-{sent}"));
        }
        sent += 1;
        if let Some(auth) = &auth {
            req = req.header("authorization", auth);
        }
        let req = req.body(Full::new(payload(payload_len))).unwrap();
        if sender.ready().await.is_err() {
            break;
        }
        match sender.send_request(req).await {
            Ok(res) => {
                if res.status().is_success() {
                    ok += 1;
                }
                let _ = res.into_body().collect().await;
            }
            Err(_) => break,
        }
    }
    ok
}

/// Requests/s the sinks answer to a plain hyper client with
/// `o.connections` connections.
async fn ceiling(sinks: &[SocketAddr], o: &Options, run_for: Duration) -> f64 {
    let deadline = Instant::now() + run_for;
    let started = Instant::now();
    let tasks: Vec<_> = (0..o.connections)
        .map(|i| {
            let sink = sinks[i % sinks.len()];
            tokio::spawn(drive(
                sink,
                "/ceiling".into(),
                None,
                o.payload,
                deadline,
                None,
                false,
                None,
            ))
        })
        .collect();
    let mut requests = 0;
    for t in tasks {
        requests += t.await.unwrap();
    }
    requests as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() {
    let o = options();
    EPOCH.get_or_init(Instant::now);
    let received = Arc::new(Received::default());
    let mut sinks = Vec::new();
    for _ in 0..o.subscribers {
        sinks.push(start_sink(received.clone()).await);
    }
    let run_for = Duration::from_secs(o.seconds);

    // 1. The ceiling: the same sinks, the same connection count, driven
    //    directly by a plain hyper client. Measured before and after the
    //    broker, and averaged, so drift on a shared machine evens out.
    let ceiling_before = ceiling(&sinks, &o, run_for).await;
    received.count.store(0, Ordering::SeqCst);

    // 2. The broker, fanning out to the sinks.
    let notifier = WebhookNotifier::new(DeliveryConfig {
        max_in_flight: o.max_in_flight,
        ..DeliveryConfig::default()
    });
    let limits = broker_core::Limits {
        attempt_log: o.attempt_log,
        ..broker_core::Limits::default()
    };
    let broker = match &o.data_dir {
        None => Broker::with_limits(notifier.clone(), limits),
        Some(dir) => {
            let store = broker_store::DiskStore::open(dir, broker_store::Options::default())
                .expect("the data dir opens");
            Broker::open(notifier.clone(), limits, store).await.unwrap()
        }
    };
    let exporter = if o.otlp {
        let collector = start_collector().await;
        Some(
            broker_otel::OtlpExporter::start(broker_otel::OtlpConfig::new(format!(
                "http://{collector}"
            )))
            .unwrap(),
        )
    } else {
        None
    };
    let broker = match &exporter {
        Some(exporter) => broker.with_spans(exporter.clone()),
        None => broker,
    };
    let token = broker
        .register_publisher("load", "load")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let none: [(&str, &str); 0] = [];
    for (i, sink) in sinks.iter().enumerate() {
        let url = format!("http://{sink}/s/{i}");
        let filter = o.filter.as_ref().map(|expression| {
            broker_core::Filter::new(None, Some(expression.clone())).expect("the filter parses")
        });
        let endpoint = Endpoint::new(&url, None, none, broker.limits())
            .unwrap()
            .with_filter(filter);
        broker.register_subscriber("load", endpoint).await.unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Api::new(broker.clone(), ApiConfig::default()),
        ServerConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let rate = if o.rate_of_ceiling > 0.0 {
        o.rate_of_ceiling * ceiling_before / o.subscribers as f64
    } else {
        o.rate
    };
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(o.connections as f64 / rate));
    // Room for every sample up front: growing the vector mid-run would
    // stall the sinks and show up as latency.
    received.latencies.lock().reserve(4_000_000);
    // Latency is sampled after a warm-up second (connections opened,
    // workers started); throughput counts the whole window.
    let warm = received.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        warm.measuring.store(true, Ordering::SeqCst);
    });
    let deadline = Instant::now() + run_for;
    let started = Instant::now();
    let auth = format!("Bearer {token}");
    let tasks: Vec<_> = (0..o.connections)
        .map(|c| {
            tokio::spawn(drive(
                broker_addr,
                "/v1/topics/load/messages".into(),
                Some(auth.clone()),
                o.payload,
                deadline,
                interval,
                o.filter.is_some(),
                o.keyed.then_some(c),
            ))
        })
        .collect();
    let mut published = 0;
    for t in tasks {
        published += t.await.unwrap();
    }
    let window = started.elapsed().as_secs_f64();
    let in_window = received.count.load(Ordering::SeqCst);
    let left = notifier.drain(Duration::from_secs(10)).await;
    let total = received.count.load(Ordering::SeqCst);
    let _ = stop.send(());
    let _ = server.await;
    received.measuring.store(false, Ordering::SeqCst);
    let ceiling_after = ceiling(&sinks, &o, run_for).await;
    let ceiling = (ceiling_before + ceiling_after) / 2.0;

    let expected = published * o.subscribers as u64;
    let deliveries_per_s = in_window as f64 / window;
    let mut lat = std::mem::take(&mut *received.latencies.lock());
    lat.sort_unstable();
    let counts = broker.topic("load").unwrap().deliveries;
    println!(
        "subscribers={} connections={} payload={}B seconds={} rate={}",
        o.subscribers,
        o.connections,
        o.payload,
        o.seconds,
        if rate > 0.0 {
            format!("{rate:.0}/s")
        } else {
            "max".into()
        }
    );
    println!(
        "ceiling (plain hyper client -> sinks): {ceiling:.0} requests/s (before {ceiling_before:.0}, after {ceiling_after:.0})"
    );
    println!(
        "published: {:.0}/s ({published} in {window:.1}s)",
        published as f64 / window
    );
    println!(
        "deliveries received: {deliveries_per_s:.0}/s in the window; {total} of {expected} in all (ratio {:.4}); {left} left after drain",
        total as f64 / expected.max(1) as f64
    );
    println!(
        "broker counters: delivered={} failed={} dropped={} filtered={}; publishes paced: {}",
        counts.delivered,
        counts.failed,
        counts.dropped,
        counts.filtered,
        notifier.paced()
    );
    if let Some(filter) = &o.filter {
        // Every delivery the workers considered: made or filtered.
        let considered = (counts.delivered + counts.filtered) as f64 / window;
        println!("filter {filter:?}: deliveries considered {considered:.0}/s");
    }
    println!(
        "publish->receive latency ms: p50={:.3} p99={:.3} max={:.3} (n={})",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
        lat.len()
    );
    if let Some(exporter) = &exporter {
        println!(
            "spans exported {}, dropped {}",
            exporter.exported(),
            exporter.dropped()
        );
    }
    println!(
        "RATIO deliveries/s to ceiling: {:.3}",
        deliveries_per_s / ceiling
    );
}
