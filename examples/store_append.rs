//! Durable append against the disk's floor, in process, in one run.
//!
//! ```text
//! cargo run --release -p broker-store --example store_append -- [--payload 100] [--seconds 2] [--writers 16] [--dir PATH]
//! ```
//!
//! Three measurements on the same file system, alternated twice:
//!
//! 1. **The floor**: one `write` of a record's size and one `fdatasync`,
//!    in a loop, on a file of its own (what one durable append cannot beat).
//! 2. **One appender**: `DiskStore::append` with `--fsync always`, one
//!    message at a time, each awaited: its latency against the floor's.
//! 3. **`--writers` appenders** at once (closed loop, each waits for its
//!    answer): appends per second with `--fsync always`, against the
//!    rate of perfect group commit (every fsync covers every writer:
//!    `writers / floor p50`).
//!
//! The directory is a temporary one (under `--dir` when given: it must be
//! a real disk, not tmpfs).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use broker_core::{Logs, NewMessage, TopicName};
use broker_store::{DiskStore, Fsync, Options};
use bytes::Bytes;

fn message(payload: &Bytes) -> NewMessage {
    NewMessage {
        content_type: None,
        payload: payload.clone(),
        published_at: SystemTime::now(),
        event_type: None,
        idempotency: None,
        trace: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `write` + `fdatasync` of `size` bytes for `seconds`: the latencies.
fn floor(dir: &Path, size: usize, seconds: f64) -> std::io::Result<Vec<Duration>> {
    let path = dir.join("floor");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let record = vec![b'x'; size];
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let started = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        times.push(started.elapsed());
    }
    std::fs::remove_file(path)?;
    times.sort();
    Ok(times)
}

/// One appender, each append awaited: the latencies.
async fn one(store: &DiskStore, topic: &TopicName, payload: &Bytes, seconds: f64) -> Vec<Duration> {
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let started = Instant::now();
        store.append(topic, vec![message(payload)]).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times
}

/// `writers` closed-loop appenders on one topic: appends per second.
async fn many<S: Logs + 'static>(
    store: Arc<S>,
    topic: &TopicName,
    payload: &Bytes,
    writers: usize,
    seconds: f64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (store, topic, payload) = (store.clone(), topic.clone(), payload.clone());
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    store.append(&topic, vec![message(&payload)]).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut payload = 100usize;
    let mut seconds = 2.0f64;
    let mut writers = 16usize;
    let mut parent: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or("missing value")?;
        match arg.as_str() {
            "--payload" => payload = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--writers" => writers = value.parse()?,
            "--dir" => parent = Some(value.into()),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let temp = match &parent {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    let payload = Bytes::from(vec![b'p'; payload]);
    // The record's framing and header (BENCHMARKS §6: 142 B for 100 B).
    let record = payload.len() + 42;
    println!(
        "payload {} B, {seconds} s per phase, {writers} writers, in {}",
        payload.len(),
        temp.path().display()
    );
    println!("| round | floor p50 µs | one appender p50 µs | ÷ floor | p99 µs | {writers} appenders/s | ÷ perfect group commit |");
    println!("|---|---|---|---|---|---|---|---|");
    for round in 1..=2 {
        let floor = floor(temp.path(), record, seconds)?;
        let dir = temp.path().join(format!("data{round}"));
        let store = Arc::new(DiskStore::open(
            dir.clone(),
            Options {
                fsync: Fsync::Always,
                ..Options::default()
            },
        )?);
        let topic = TopicName::new("one")?;
        let one = one(&store, &topic, &payload, seconds).await;
        let durable = many(
            store.clone(),
            &TopicName::new("many")?,
            &payload,
            writers,
            seconds,
        )
        .await;
        drop(store);
        let (f50, o50) = (percentile(&floor, 0.5), percentile(&one, 0.5));
        let perfect = writers as f64 / f50.as_secs_f64();
        println!(
            "| {round} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |",
            micros(f50),
            micros(o50),
            micros(o50) / micros(f50),
            micros(percentile(&one, 0.99)),
            durable,
            durable / perfect,
        );
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}
