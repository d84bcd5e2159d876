//! Replicas on one Redis: publishes/s and publish→receive latency with 1
//! and 3 brokers sharing one Redis, each as a ratio to the in-memory
//! broker measured in the same run, and what Redis runs per publish and
//! per delivery (`INFO commandstats`).
//!
//! ```text
//! cargo run --release -p broker-redis --example cluster_load -- [--connections 16]
//!     [--payload 100] [--seconds 3] [--rounds 2] [--replicas 3]
//!     [--subscribers 4] [--rate 500 (publishes/s in the latency phases)]
//!     [--latency-connections 6] [--appendfsync always|everysec]
//! ```
//!
//! Everything runs on 127.0.0.1, in one process: an in-memory broker, one
//! broker on a private `redis-server` and `--replicas` brokers on another
//! (each with its own `RedisStore::open`, so its own replica id, change
//! feed and delivery leases, as separate processes would have), each broker
//! behind its own HTTP server. The two redis-servers are configured alike
//! (`appendonly yes`, `appendfsync always` unless told otherwise, `--save
//! ''`, a temporary directory), so each configuration's `commandstats`
//! count its own commands only.
//!
//! 1. **Publish rate**: `--connections` keep-alive clients publish 100 B
//!    back to back on topic `bench` (no subscribers), spread round robin
//!    over a configuration's HTTP servers; phases of `--seconds` alternate
//!    memory, 1 replica, 3 replicas, `--rounds` times.
//! 2. **Latency**: `--subscribers` webhook receivers per configuration (a
//!    hyper server each on 127.0.0.1:0, answering 200 and noting when each
//!    `webhook-id` arrived) subscribe to topic `lat`, registered on the
//!    first replica (the others learn of them through the change feed);
//!    once every subscriber is owned by a replica (the `delivering` of all
//!    replicas' `GET /healthz` sum to K, unchanged for 2 s),
//!    `--latency-connections` clients publish at `--rate` in all, spread
//!    over the replicas, and note when each returned message id was sent.
//!    Latency is arrival − send; every (subscriber, message) is checked to
//!    have arrived exactly once. Phases alternate as above.
//! 3. **Redis work**: `INFO stats commandstats` before and after each
//!    Redis phase. Per delivery: (commands of the latency phase − its
//!    publishes × the per-publish commands of the publish phases) ÷
//!    deliveries, by command.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use broker_core::{Broker, Endpoint, Limits, MemoryStore};
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{Api, ApiConfig, ServerConfig};
use broker_redis::{Options, RedisStore};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

#[path = "support/redis.rs"]
mod support;
use support::{publisher, PrivateRedis};

// The same allocator as the server binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The topic of the publish-rate phases (no subscribers).
const BENCH: &str = "bench";
/// The topic of the latency phases (the webhook subscribers).
const LAT: &str = "lat";

/// Commands the store's scripts run inside Redis: counted in
/// `commandstats` (and `total_commands_processed`) too, but no round trip
/// of their own. `GET` is also the feed's version check, one round trip a
/// second per replica, counted here as scripted.
const SCRIPTED: &[&str] = &[
    "exists",
    "get",
    "set",
    "incr",
    "incrby",
    "xadd",
    "xrange",
    "xtrim",
    "publish",
    "hexists",
    "hget",
    "hset",
    "hdel",
    "zremrangebyscore",
    "zadd",
    "zcard",
    "zpopmin",
    "zrange",
    "time",
    "pexpire",
    "del",
];

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_nanos() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct Args {
    connections: usize,
    payload: usize,
    seconds: u64,
    rounds: usize,
    replicas: usize,
    subscribers: usize,
    rate: f64,
    latency_connections: usize,
    appendfsync: String,
}

fn args() -> Args {
    let mut a = Args {
        connections: 16,
        payload: 100,
        seconds: 3,
        rounds: 2,
        replicas: 3,
        subscribers: 4,
        rate: 500.0,
        latency_connections: 6,
        appendfsync: "always".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let (flag, value) = (pair[0].as_str(), pair.get(1).cloned().unwrap_or_default());
        let n = || -> usize {
            value
                .parse()
                .unwrap_or_else(|_| panic!("bad value {value:?} for {flag}"))
        };
        match flag {
            "--connections" => a.connections = n().max(1),
            "--payload" => a.payload = n(),
            "--seconds" => a.seconds = n().clamp(1, 30) as u64,
            "--rounds" => a.rounds = n().clamp(1, 10),
            "--replicas" => a.replicas = n().clamp(2, 8),
            "--subscribers" => a.subscribers = n().clamp(1, 64),
            "--rate" => a.rate = (n() as f64).max(1.0),
            "--latency-connections" => a.latency_connections = n().max(1),
            "--appendfsync" => a.appendfsync = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// One broker behind its own HTTP server.
struct Node {
    broker: Broker,
    addr: SocketAddr,
}

/// Serves `broker` on 127.0.0.1 (publishes paced by `notifier`, as the
/// server binary does; `/healthz` then says how many subscribers this
/// replica delivers).
async fn serve(broker: Broker) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(broker_http::serve(
        listener,
        Api::new(broker.clone(), ApiConfig::default()),
        ServerConfig::default(),
        std::future::pending(),
    ));
    Node { broker, addr }
}

fn notifier() -> WebhookNotifier {
    // Loopback receivers are allowed by the default destination policy.
    WebhookNotifier::new(DeliveryConfig {
        lease_ttl: Duration::from_secs(15),
        ..DeliveryConfig::default()
    })
}

/// One configuration: its brokers, and for Redis a statistics connection.
struct Setup {
    name: String,
    nodes: Vec<Node>,
    stats: Option<redis::aio::MultiplexedConnection>,
}

impl Setup {
    async fn memory() -> Self {
        let broker = Broker::open(notifier(), Limits::default(), MemoryStore::default())
            .await
            .unwrap();
        Setup {
            name: "memory".into(),
            nodes: vec![serve(broker).await],
            stats: None,
        }
    }

    /// `replicas` brokers, each with its own store on `url`.
    async fn redis(url: &str, replicas: usize) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..replicas {
            let store = RedisStore::open(
                url,
                Options {
                    namespace: "cluster-load".into(),
                    ..Options::default()
                },
            )
            .await
            .expect("the Redis store opens");
            let broker = Broker::open(notifier(), Limits::default(), Arc::new(store))
                .await
                .unwrap();
            nodes.push(serve(broker).await);
        }
        let stats = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Setup {
            name: if replicas == 1 {
                "1 replica".into()
            } else {
                format!("{replicas} replicas")
            },
            nodes,
            stats: Some(stats),
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// A publisher token for `topic`, registered on the first replica and
    /// known to all.
    async fn publisher(&self, topic: &str) -> String {
        let token = self.nodes[0]
            .broker
            .register_publisher(topic, "load")
            .await
            .unwrap()
            .item
            .token()
            .expose()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &self.nodes {
            while node
                .broker
                .topic(topic)
                .map_or(true, |t| t.publishers.is_empty())
            {
                assert!(
                    Instant::now() < deadline,
                    "the publisher did not reach every replica"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        token
    }

    async fn snapshot(&mut self) -> Option<Snapshot> {
        match &mut self.stats {
            Some(con) => Some(snapshot(con).await),
            None => None,
        }
    }
}

/// `INFO stats commandstats`: command → calls, and
/// `total_commands_processed`.
#[derive(Default, Clone)]
struct Snapshot {
    calls: BTreeMap<String, u64>,
    total: u64,
}

async fn snapshot(con: &mut redis::aio::MultiplexedConnection) -> Snapshot {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let mut s = Snapshot::default();
    for line in info.lines() {
        if let Some(total) = line.strip_prefix("total_commands_processed:") {
            s.total = total.trim().parse().unwrap_or(0);
        }
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if let Some(calls) = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|c| c.parse().ok())
        {
            s.calls.insert(name.to_owned(), calls);
        }
    }
    s
}

impl Snapshot {
    /// Adds `after − before` to `self`, leaving out the statistics calls.
    fn add_delta(&mut self, before: &Snapshot, after: &Snapshot) {
        for (name, calls) in &after.calls {
            if name == "info" {
                continue;
            }
            let earlier = before.calls.get(name).copied().unwrap_or(0);
            *self.calls.entry(name.clone()).or_insert(0) += calls - earlier;
        }
        // `before`'s own INFO is counted in `after`'s total.
        self.total += (after.total - before.total).saturating_sub(1);
    }

    fn round_trips(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(name, _)| !SCRIPTED.contains(&name.as_str()))
            .map(|(_, c)| c)
            .sum()
    }
}

// ---------------------------------------------------------------------
// 1. Publish rate

/// Publishes/s over `addrs` (connections round robin) for `seconds`.
async fn rate_phase(a: &Args, addrs: &[SocketAddr], token: &str) -> (f64, u64) {
    let payload = Bytes::from(vec![b'x'; a.payload]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let tasks: Vec<_> = (0..a.connections)
        .map(|i| {
            tokio::spawn(publisher(
                addrs[i % addrs.len()],
                BENCH,
                token.to_owned(),
                payload.clone(),
                deadline,
            ))
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    (total as f64 / started.elapsed().as_secs_f64(), total)
}

// ---------------------------------------------------------------------
// 2. Latency

/// What one webhook receiver saw: message id → (first arrival, times).
#[derive(Default)]
struct Arrivals {
    seen: Mutex<HashMap<String, (u64, u32)>>,
}

async fn receiver(arrivals: Arc<Arrivals>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let arrivals = arrivals.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let arrivals = arrivals.clone();
                async move {
                    let at = now_nanos();
                    let id = req
                        .headers()
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let _ = req.into_body().collect().await;
                    arrivals
                        .seen
                        .lock()
                        .entry(id)
                        .and_modify(|(_, n)| *n += 1)
                        .or_insert((at, 1));
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

/// The `"id"` of a publish receipt.
fn receipt_id(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("\"id\":\"")? + 6..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// One connection publishing every `interval` from `first` until
/// `deadline`; returns (message id, sent at, answered after µs) of each
/// accepted publish.
async fn paced(
    addr: SocketAddr,
    token: String,
    payload: Bytes,
    interval: Duration,
    first: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> Vec<(String, u64, u32)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let auth = format!("Bearer {token}");
    let mut sent = Vec::new();
    let mut next = first;
    while next < deadline {
        tokio::time::sleep_until(next).await;
        next += interval;
        let req = Request::post(format!("http://{addr}/v1/topics/{LAT}/messages"))
            .header("host", addr.to_string())
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .body(Full::new(payload.clone()))
            .unwrap();
        if sender.ready().await.is_err() {
            break;
        }
        let at = now_nanos();
        let Ok(res) = sender.send_request(req).await else {
            break;
        };
        let ok = res.status() == 202;
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        if let (true, Ok(body)) = (ok, body) {
            if let Some(id) = receipt_id(&body) {
                let acked = (now_nanos() - at) / 1000;
                sent.push((id, at, acked.min(u64::from(u32::MAX)) as u32));
            }
        }
    }
    sent
}

/// The outcome of one latency phase.
#[derive(Default)]
struct Outcome {
    published: u64,
    /// Every arrival, duplicates included.
    deliveries: u64,
    missing: u64,
    duplicates: u64,
    /// Arrivals of ids not published in this phase.
    strays: u64,
    /// Publish→first arrival, µs.
    latencies: Vec<u32>,
    /// Publish→its answer (the message in the log), µs.
    acks: Vec<u32>,
    drained_in: Duration,
}

/// Publishes at `a.rate` over `addrs` for `run_for`, waits until every
/// receiver has every message (at most 10 s), and checks.
async fn latency_phase(
    a: &Args,
    addrs: &[SocketAddr],
    token: &str,
    receivers: &[Arc<Arrivals>],
    run_for: Duration,
) -> Outcome {
    for r in receivers {
        r.seen.lock().clear();
    }
    let payload = Bytes::from(vec![b'x'; a.payload]);
    let c = a.latency_connections;
    let interval = Duration::from_secs_f64(c as f64 / a.rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let deadline = start + run_for;
    let tasks: Vec<_> = (0..c)
        .map(|i| {
            // Spread over one interval, not in step.
            let first = start + interval.mul_f64(i as f64 / c as f64);
            tokio::spawn(paced(
                addrs[i % addrs.len()],
                token.to_owned(),
                payload.clone(),
                interval,
                first,
                deadline,
            ))
        })
        .collect();
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    let ended = Instant::now();
    let expected = sent.len() * receivers.len();
    let give_up = ended + Duration::from_secs(10);
    while Instant::now() < give_up {
        let got: usize = receivers.iter().map(|r| r.seen.lock().len()).sum();
        if got >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drained_in = ended.elapsed();
    // Room for late duplicates, and for the buffered cursors (every
    // 100 ms) to be written within the phase.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut o = Outcome {
        published: sent.len() as u64,
        drained_in,
        latencies: Vec::with_capacity(expected),
        ..Outcome::default()
    };
    let ids: HashSet<&str> = sent.iter().map(|(id, _, _)| id.as_str()).collect();
    o.acks = sent.iter().map(|&(_, _, acked)| acked).collect();
    o.acks.sort_unstable();
    for r in receivers {
        let seen = r.seen.lock();
        let mut matched = 0;
        for (id, at, _) in &sent {
            match seen.get(id) {
                Some(&(arrived, n)) => {
                    matched += 1;
                    o.duplicates += u64::from(n - 1);
                    let micros = arrived.saturating_sub(*at) / 1000;
                    o.latencies.push(micros.min(u64::from(u32::MAX)) as u32);
                }
                None => o.missing += 1,
            }
        }
        o.deliveries += seen.values().map(|&(_, n)| u64::from(n)).sum::<u64>();
        if seen.len() > matched {
            o.strays += seen.keys().filter(|id| !ids.contains(id.as_str())).count() as u64;
        }
    }
    o
}

/// A plain `GET` of `path`; the body as text.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .ok()?;
    let res = sender.send_request(req).await.ok()?;
    let body = res.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// The `delivering` of each replica's `/healthz`.
async fn delivering(setup: &Setup) -> Vec<usize> {
    let mut owned = Vec::new();
    for node in &setup.nodes {
        let n = get(node.addr, "/healthz").await.and_then(|body| {
            let rest = &body[body.find("\"delivering\":")? + 13..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        });
        owned.push(n.unwrap_or(0));
    }
    owned
}

/// Waits until the replicas own `k` subscribers in all, unchanged for
/// 2 s (at most 30 s); returns who owns how many and how long it took.
async fn wait_owned(setup: &Setup, k: usize) -> (Vec<usize>, Duration) {
    let started = Instant::now();
    let mut last = Vec::new();
    let mut since = Instant::now();
    loop {
        let owned = delivering(setup).await;
        if owned != last {
            last = owned.clone();
            since = Instant::now();
        }
        let settled = owned.iter().sum::<usize>() == k && since.elapsed() >= Duration::from_secs(2);
        if settled || started.elapsed() > Duration::from_secs(30) {
            if !settled {
                println!(
                    "  {}: subscribers not all owned after 30 s: {owned:?}",
                    setup.name
                );
            }
            return (owned, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// No `-0.000` in the table: a difference that small is none.
fn tidy(x: f64) -> f64 {
    if x.abs() < 0.0005 {
        0.0
    } else {
        x
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[tokio::main]
async fn main() {
    let a = args();
    EPOCH.get_or_init(Instant::now);
    let redis_one = PrivateRedis::start(&a.appendfsync);
    let redis_many = PrivateRedis::start(&a.appendfsync);
    let mut setups = vec![
        Setup::memory().await,
        Setup::redis(&redis_one.url, 1).await,
        Setup::redis(&redis_many.url, a.replicas).await,
    ];
    let n = setups.len();
    println!(
        "redis-server x2 (appendfsync {}), {} replicas on the second; {} connections, {} B, {} s phases, {} rounds",
        a.appendfsync, a.replicas, a.connections, a.payload, a.seconds, a.rounds
    );

    // 1. Publish rate.
    let mut tokens = Vec::new();
    for s in &setups {
        tokens.push(s.publisher(BENCH).await);
    }
    let mut rates = vec![Vec::new(); n];
    let mut publish_work = vec![Snapshot::default(); n];
    let mut published = vec![0u64; n];
    for round in 0..a.rounds {
        for (i, s) in setups.iter_mut().enumerate() {
            let before = s.snapshot().await;
            let (rate, count) = rate_phase(&a, &s.addrs(), &tokens[i]).await;
            if let (Some(before), Some(after)) = (before, s.snapshot().await) {
                publish_work[i].add_delta(&before, &after);
            }
            published[i] += count;
            rates[i].push(rate);
            println!("round {}: publish {:<11} {rate:>9.0}/s", round + 1, s.name);
        }
    }

    // 2. Latency: receivers, subscribers (registered on the first
    //    replica), a publisher token, every subscriber owned.
    let mut receivers = Vec::new();
    for s in &setups {
        let mut rs = Vec::new();
        for k in 0..a.subscribers {
            let arrivals = Arc::new(Arrivals::default());
            arrivals
                .seen
                .lock()
                .reserve(4 * a.rate as usize * a.seconds as usize);
            let addr = receiver(arrivals.clone()).await;
            let none: [(&str, &str); 0] = [];
            let broker = &s.nodes[0].broker;
            let endpoint =
                Endpoint::new(&format!("http://{addr}/s/{k}"), None, none, broker.limits())
                    .unwrap();
            broker.register_subscriber(LAT, endpoint).await.unwrap();
            rs.push(arrivals);
        }
        receivers.push(rs);
    }
    let mut lat_tokens = Vec::new();
    for s in &setups {
        lat_tokens.push(s.publisher(LAT).await);
    }
    let mut owners = vec![String::from("-"); n];
    for (i, s) in setups.iter().enumerate().skip(1) {
        let (owned, took) = wait_owned(s, a.subscribers).await;
        owners[i] = owned
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{}: subscribers owned {} after {:.1} s",
            s.name,
            owners[i],
            took.as_secs_f64()
        );
    }
    // Background work of an idle cluster (heartbeats, leases, version
    // checks, cursor flushes), over 2 s.
    let mut idle = vec![Snapshot::default(); n];
    let mut befores = Vec::new();
    for s in setups.iter_mut() {
        befores.push(s.snapshot().await);
    }
    let idle_for = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_secs = idle_for.elapsed().as_secs_f64();
    for (i, s) in setups.iter_mut().enumerate() {
        if let (Some(before), Some(after)) = (&befores[i], s.snapshot().await) {
            idle[i].add_delta(before, &after);
        }
    }
    // Warm-up: connections to the receivers opened, workers started.
    for (i, s) in setups.iter().enumerate() {
        let o = latency_phase(
            &a,
            &s.addrs(),
            &lat_tokens[i],
            &receivers[i],
            Duration::from_millis(500),
        )
        .await;
        if o.missing + o.duplicates > 0 {
            println!(
                "warm-up {}: {} missing, {} duplicates",
                s.name, o.missing, o.duplicates
            );
        }
    }
    let mut outcomes: Vec<Vec<Outcome>> = (0..n).map(|_| Vec::new()).collect();
    let mut delivery_work = vec![Snapshot::default(); n];
    for round in 0..a.rounds {
        for (i, s) in setups.iter_mut().enumerate() {
            let before = s.snapshot().await;
            let mut o = latency_phase(
                &a,
                &s.addrs(),
                &lat_tokens[i],
                &receivers[i],
                Duration::from_secs(a.seconds),
            )
            .await;
            if let (Some(before), Some(after)) = (before, s.snapshot().await) {
                delivery_work[i].add_delta(&before, &after);
            }
            o.latencies.sort_unstable();
            println!(
                "round {}: latency {:<11} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms (publish answered p50 {:.2} p99 {:.2} ms); {} published, {} delivered, {} missing, {} duplicates, {} strays, drained {:.0} ms after",
                round + 1,
                s.name,
                percentile(&o.latencies, 0.5),
                percentile(&o.latencies, 0.99),
                o.latencies.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
                percentile(&o.acks, 0.5),
                percentile(&o.acks, 0.99),
                o.published,
                o.deliveries,
                o.missing,
                o.duplicates,
                o.strays,
                o.drained_in.as_secs_f64() * 1000.0,
            );
            outcomes[i].push(o);
        }
    }

    // The table.
    let memory_rate = mean(&rates[0]);
    println!();
    println!(
        "{:<11} | {:>22} | {:>8} | {:>5} | {:>7} | {:>7} | {:>7} | {:>13} | {:>5} | {:>8}",
        "config",
        "publishes/s (rounds)",
        "mean",
        "ratio",
        "p50 ms",
        "p99 ms",
        "max ms",
        "delivered",
        "dup",
        "owned"
    );
    for (i, s) in setups.iter().enumerate() {
        let each = rates[i]
            .iter()
            .map(|r| format!("{:.1}k", r / 1000.0))
            .collect::<Vec<_>>()
            .join(" ");
        let mut all: Vec<u32> = outcomes[i]
            .iter()
            .flat_map(|o| o.latencies.iter().copied())
            .collect();
        all.sort_unstable();
        let delivered: u64 = outcomes[i].iter().map(|o| o.deliveries).sum();
        let expected: u64 = outcomes[i]
            .iter()
            .map(|o| o.published * a.subscribers as u64)
            .sum();
        let dup: u64 = outcomes[i].iter().map(|o| o.duplicates).sum();
        let missing: u64 = outcomes[i].iter().map(|o| o.missing).sum();
        println!(
            "{:<11} | {:>22} | {:>7.1}k | {:>5.2} | {:>7.2} | {:>7.2} | {:>7.2} | {:>13} | {:>5} | {:>8}",
            s.name,
            each,
            mean(&rates[i]) / 1000.0,
            mean(&rates[i]) / memory_rate,
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
            format!("{delivered}/{expected}"),
            dup,
            owners[i],
        );
        if missing > 0 {
            println!(
                "  {}: {missing} (subscriber, message) pairs never arrived",
                s.name
            );
        }
    }
    println!(
        "{} / 1 replica: publishes {:.2}",
        setups[n - 1].name,
        mean(&rates[n - 1]) / mean(&rates[1])
    );
    let exactly_once = outcomes[n - 1]
        .iter()
        .all(|o| o.missing == 0 && o.duplicates == 0 && o.strays == 0);
    println!(
        "exactly once with {}: {}",
        setups[n - 1].name,
        if exactly_once { "yes" } else { "NO" }
    );

    // 3. Redis work.
    println!();
    println!(
        "{:<18} | {:>12} | {:>12} | {:>12} | {:>12}",
        "redis command",
        format!("/publish {}", setups[1].nodes.len()),
        format!("/publish {}", setups[2].nodes.len()),
        format!("/delivery {}", setups[1].nodes.len()),
        format!("/delivery {}", setups[2].nodes.len()),
    );
    let per_publish = |i: usize, name: &str| {
        publish_work[i].calls.get(name).copied().unwrap_or(0) as f64 / published[i].max(1) as f64
    };
    // Deliveries' share of a latency phase: what its publishes cost at
    // the publish phases' rate taken out.
    let per_delivery = |i: usize, name: &str| {
        let lat_published: u64 = outcomes[i].iter().map(|o| o.published).sum();
        let delivered: u64 = outcomes[i].iter().map(|o| o.deliveries).sum();
        let ran = delivery_work[i].calls.get(name).copied().unwrap_or(0) as f64;
        (ran - lat_published as f64 * per_publish(i, name)) / delivered.max(1) as f64
    };
    let mut names: Vec<&String> = publish_work[1..]
        .iter()
        .chain(&delivery_work[1..])
        .flat_map(|w| w.calls.iter().filter(|(_, c)| **c > 0).map(|(k, _)| k))
        .collect();
    names.sort();
    names.dedup();
    names.sort_by(|x, y| {
        let weight = |name: &str| -(per_publish(2, name) + per_delivery(2, name)).abs();
        weight(x).total_cmp(&weight(y))
    });
    for name in names {
        let scripted = if SCRIPTED.contains(&name.as_str()) {
            " (in a script)"
        } else {
            ""
        };
        println!(
            "{:<18} | {:>12.3} | {:>12.3} | {:>12.3} | {:>12.3}{scripted}",
            name,
            per_publish(1, name),
            per_publish(2, name),
            tidy(per_delivery(1, name)),
            tidy(per_delivery(2, name)),
        );
    }
    for i in 1..n {
        let p = published[i].max(1) as f64;
        let lat_published: u64 = outcomes[i].iter().map(|o| o.published).sum();
        let delivered = outcomes[i].iter().map(|o| o.deliveries).sum::<u64>().max(1) as f64;
        let w = &publish_work[i];
        let d = &delivery_work[i];
        let commands = |s: &Snapshot| s.calls.values().sum::<u64>() as f64;
        println!(
            "{}: per publish {:.3} commands ({:.3} by total_commands_processed), {:.3} round trips; \
             per delivery {:.3} commands, {:.3} round trips ({} publishes, {} deliveries in the latency phases)",
            setups[i].name,
            commands(w) / p,
            w.total as f64 / p,
            w.round_trips() as f64 / p,
            (commands(d) - lat_published as f64 * commands(w) / p) / delivered,
            (d.round_trips() as f64 - lat_published as f64 * w.round_trips() as f64 / p)
                / delivered,
            lat_published,
            delivered as u64,
        );
        let idle_calls: u64 = idle[i].calls.values().sum();
        let split: Vec<String> = idle[i]
            .calls
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(name, c)| format!("{name} {:.1}", *c as f64 / idle_secs))
            .collect();
        println!(
            "  idle, subscribers owned: {:.1} commands/s, {:.1} round trips/s ({})",
            idle_calls as f64 / idle_secs,
            idle[i].round_trips() as f64 / idle_secs,
            split.join(", ")
        );
    }
}
