//! Publishes/s over HTTP with the Redis store against the in-memory
//! broker, in one process and the same run, and what each publish costs
//! Redis: commands and round trips per publish, from `INFO commandstats`
//! before and after.
//!
//! ```text
//! cargo run --release -p broker-redis --example redis_load -- [--connections 16]
//!     [--payload 100] [--seconds 3] [--rounds 2]
//!     [--appendfsync always|everysec (the private redis-server's; default always)]
//!     [--redis-url URL (an existing Redis 6.2+ instead of a private one;
//!      its statistics then count others' commands too)]
//!     [--data-dir PATH (adds a third broker, on a data dir with
//!      --fsync always, to each round)]
//! ```
//!
//! Everything runs on 127.0.0.1: by default a private `redis-server` on a
//! free port (`--save ''`, `appendonly yes`, in a temporary directory),
//! two brokers (memory, Redis) each behind its own HTTP server, and
//! `--connections` keep-alive hyper clients publishing back to back, one
//! request in flight each. Phases alternate memory, Redis, memory, Redis
//! (`--rounds` times), `--seconds` each; no subscribers, so what is
//! measured is the publish path and its store.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use broker_core::{Broker, Limits, Logs as _, MemoryStore, TopicName};
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{Api, ApiConfig, ServerConfig};
use broker_redis::{Options, RedisStore};
use bytes::Bytes;
use tokio::net::TcpListener;

#[path = "support/redis.rs"]
mod support;
use support::{publisher, PrivateRedis};

// The same allocator as the server binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "bench";

/// Commands the store's scripts run inside Redis (counted in
/// `commandstats` too, but no round trip of their own).
const SCRIPTED: &[&str] = &[
    "exists",
    "get",
    "set",
    "incrby",
    "decrby",
    "xadd",
    "xrange",
    "xtrim",
    "hexists",
    "hget",
    "zremrangebyscore",
    "zadd",
    "zcard",
    "zpopmin",
    "publish",
];

struct Args {
    connections: usize,
    payload: usize,
    seconds: u64,
    rounds: usize,
    appendfsync: String,
    redis_url: Option<String>,
    data_dir: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        connections: 16,
        payload: 100,
        seconds: 3,
        rounds: 2,
        appendfsync: "always".into(),
        redis_url: None,
        data_dir: None,
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
            "--seconds" => a.seconds = n().clamp(1, 60) as u64,
            "--rounds" => a.rounds = n().clamp(1, 10),
            "--appendfsync" => a.appendfsync = value,
            "--redis-url" => a.redis_url = Some(value),
            "--data-dir" => a.data_dir = Some(value),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Serves `broker` on 127.0.0.1 and returns the address and a publisher
/// token.
async fn serve(broker: Broker) -> (SocketAddr, String) {
    let token = broker
        .register_publisher(TOPIC, "load")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(broker_http::serve(
        listener,
        Api::new(broker, ApiConfig::default()),
        ServerConfig::default(),
        std::future::pending(),
    ));
    (addr, token)
}

/// Publishes/s against `addr` for `seconds`.
async fn phase(a: &Args, addr: SocketAddr, token: &str) -> (f64, u64) {
    let payload = Bytes::from(vec![b'x'; a.payload]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let tasks: Vec<_> = (0..a.connections)
        .map(|_| {
            tokio::spawn(publisher(
                addr,
                TOPIC,
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

/// `INFO commandstats` as command → calls.
async fn command_calls(con: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let a = args();
    let private = a
        .redis_url
        .is_none()
        .then(|| PrivateRedis::start(&a.appendfsync));
    let url = a
        .redis_url
        .clone()
        .unwrap_or_else(|| private.as_ref().unwrap().url.clone());
    // A namespace of its own: nothing of another broker on the same Redis
    // is touched, and its keys are deleted at the end.
    let namespace = format!("redis-load-{}", std::process::id());
    let store = std::sync::Arc::new(
        RedisStore::open(
            &url,
            Options {
                namespace: namespace.clone(),
                ..Options::default()
            },
        )
        .await
        .expect("the Redis store opens"),
    );
    let mut stats_con = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let appendfsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut stats_con)
        .await
        .unwrap_or_default();

    let notifier = || WebhookNotifier::new(DeliveryConfig::default());
    let memory = Broker::open(notifier(), Limits::default(), MemoryStore::default())
        .await
        .unwrap();
    let on_redis = Broker::open(notifier(), Limits::default(), store.clone())
        .await
        .unwrap();
    let (memory_addr, memory_token) = serve(memory).await;
    let (redis_addr, redis_token) = serve(on_redis).await;
    let on_disk = match &a.data_dir {
        Some(dir) => {
            let store = broker_store::DiskStore::open(dir, broker_store::Options::default())
                .expect("the data dir opens");
            let broker = Broker::open(notifier(), Limits::default(), store)
                .await
                .unwrap();
            Some(serve(broker).await)
        }
        None => None,
    };

    println!(
        "{} connections, {} B payloads, {} s a phase; redis at {} (appendfsync {})",
        a.connections,
        a.payload,
        a.seconds,
        store.url(),
        appendfsync.get(1).map_or("unknown", String::as_str),
    );
    let (mut memory_rates, mut redis_rates, mut disk_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut published = 0;
    // Commands Redis ran during the Redis phases only.
    let mut ran: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..a.rounds {
        let (rate, _) = phase(&a, memory_addr, &memory_token).await;
        println!("memory:   {rate:>9.0} publishes/s");
        memory_rates.push(rate);
        let at_start = command_calls(&mut stats_con).await;
        let (rate, n) = phase(&a, redis_addr, &redis_token).await;
        let at_end = command_calls(&mut stats_con).await;
        println!("redis:    {rate:>9.0} publishes/s");
        redis_rates.push(rate);
        published += n;
        for (name, calls) in at_end {
            let earlier = at_start.get(&name).copied().unwrap_or(0);
            *ran.entry(name).or_insert(0) += calls - earlier;
        }
        if let Some((addr, token)) = &on_disk {
            let (rate, _) = phase(&a, *addr, token).await;
            println!("data dir: {rate:>9.0} publishes/s");
            disk_rates.push(rate);
        }
    }
    // Not the statistics call itself.
    let mut deltas: Vec<(String, u64)> = ran
        .into_iter()
        .filter(|(name, delta)| *delta > 0 && name != "info")
        .collect();
    deltas.sort_by_key(|(_, delta)| std::cmp::Reverse(*delta));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (m, r) = (mean(&memory_rates), mean(&redis_rates));
    println!(
        "mean: memory {m:.0}/s, redis {r:.0}/s: redis / memory = {:.2}",
        r / m
    );
    if !disk_rates.is_empty() {
        let d = mean(&disk_rates);
        println!(
            "mean: data dir {d:.0}/s: data dir / memory = {:.2}, redis / data dir = {:.2}",
            d / m,
            r / d
        );
    }
    let per = |n: u64| n as f64 / published.max(1) as f64;
    let commands: u64 = deltas.iter().map(|(_, d)| d).sum();
    let round_trips: u64 = deltas
        .iter()
        .filter(|(name, _)| !SCRIPTED.contains(&name.as_str()))
        .map(|(_, d)| d)
        .sum();
    println!(
        "{published} publishes on redis: {:.3} round trips and {:.3} commands per publish",
        per(round_trips),
        per(commands)
    );
    for (name, delta) in &deltas {
        let scripted = if SCRIPTED.contains(&name.as_str()) {
            " (in a script)"
        } else {
            ""
        };
        println!("  {name:<18} {:>8.3} per publish{scripted}", per(*delta));
    }

    // Clean up this run's keys: the topic's, then the registrations'.
    let topic = TopicName::new(TOPIC).unwrap();
    store.delete_topic(&topic).await.unwrap();
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(format!("{namespace}:{{r}}:registrations"))
        .arg(format!("{namespace}:{{r}}:cursors"))
        .query_async(&mut stats_con)
        .await;
}
