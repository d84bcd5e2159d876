//! Start-up time of a data directory holding a large log, and bytes on
//! disk per message.
//!
//! ```text
//! cargo run --release -p broker-store --example store_startup -- [--gib 1] [--payload 100] [--dir PATH] [--cold true] [--keyed true]
//! ```
//!
//! Fills one topic's log with `--gib` GiB of `--payload`-byte messages
//! (fsync off while filling, one fsync at the end), then opens the
//! directory again as the server does (`DiskStore::open`, then
//! `Broker::open`) five times and prints each time, with the bytes on
//! disk per message. With `--cold true` (root only) the page cache is
//! dropped before each open, so the newest segment is read from the
//! device. With `--keyed true` every message carries its own idempotency
//! key, so that an open also reads the keys back (the whole log is within
//! the default 24 h window; the newest 100,000 are kept). The directory is
//! a temporary one unless `--dir` is given; it is removed at the end.

use std::{
    path::PathBuf,
    time::{Instant, SystemTime},
};

use broker_core::{Broker, Limits, Logs, NewMessage, Notifier, Publish, TopicName};
use broker_store::{DiskStore, Fsync, Options};
use bytes::Bytes;
use http::HeaderValue;

struct Nobody;

#[async_trait::async_trait]
impl Notifier for Nobody {
    async fn notify(&self, _: Publish) {}
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut gib = 1.0f64;
    let mut payload = 100usize;
    let mut dir: Option<PathBuf> = None;
    let mut cold = false;
    let mut keyed = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or("missing value")?;
        match arg.as_str() {
            "--gib" => gib = value.parse()?,
            "--payload" => payload = value.parse()?,
            "--dir" => dir = Some(value.into()),
            "--cold" => cold = value.parse()?,
            "--keyed" => keyed = value.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let temp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| temp.path().join("data"));
    let topic = TopicName::new("big")?;
    let fill = Options {
        fsync: Fsync::Never,
        ..Options::default()
    };
    let target = (gib * (1u64 << 30) as f64) as u64;
    let started = Instant::now();
    let mut messages = 0u64;
    {
        let store = DiskStore::open(&dir, fill)?;
        let body = Bytes::from(vec![b'x'; payload]);
        let ct = HeaderValue::from_static("application/json");
        while on_disk(&dir)? < target {
            let batch: Vec<NewMessage> = (0..1000u64)
                .map(|i| NewMessage {
                    content_type: Some(ct.clone()),
                    payload: body.clone(),
                    published_at: SystemTime::now(),
                    event_type: None,
                    trace: None,
                    idempotency: keyed.then(|| broker_core::Keyed {
                        key: broker_core::IdempotencyKey::new(&format!("key-{}", messages + i))
                            .expect("a valid key"),
                        fingerprint: broker_core::fingerprint(None, &body),
                        subscribers: 0,
                    }),
                })
                .collect();
            messages += store.append(&topic, batch).await?.len() as u64;
        }
        store.flush()?;
    }
    let bytes = on_disk(&dir)?;
    println!(
        "filled {messages} messages of {payload} B: {:.2} GiB in {:.1?}; {:.1} bytes on disk per message ({} B payload + content type \"application/json\")",
        bytes as f64 / (1u64 << 30) as f64,
        started.elapsed(),
        bytes as f64 / messages as f64,
        payload
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        if cold {
            std::fs::write("/proc/sys/vm/drop_caches", "3")
                .map_err(|e| format!("--cold needs root to drop the page cache: {e}"))?;
        }
        let t = Instant::now();
        let store = DiskStore::open(&dir, Options::default())?;
        let broker = Broker::open(Nobody, Limits::default(), store).await?;
        let elapsed = t.elapsed();
        times.push(elapsed);
        let read = broker.read("big", messages - 1, 1, usize::MAX).await?;
        assert_eq!(read.messages[0].offset(), messages - 1);
        drop(broker);
    }
    times.sort();
    println!(
        "start-up{} (open the directory, recover the newest segment, load registrations): median {:.1?}, min {:.1?}, max {:.1?} over 5 opens",
        if cold { ", page cache dropped" } else { "" },
        times[2],
        times[0],
        times[4]
    );
    // Also the first read of the oldest message: its segment is indexed on
    // first need, not at start.
    let store = DiskStore::open(&dir, Options::default())?;
    let t = Instant::now();
    let read = store.read(&topic, messages / 2, 1, usize::MAX).await?;
    println!(
        "first read in the middle of the log (indexes one sealed segment): {:.1?}",
        t.elapsed()
    );
    assert_eq!(read.messages[0].offset(), messages / 2);
    Ok(())
}

fn on_disk(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    let topic = dir.join("topics/big");
    if !topic.exists() {
        return Ok(0);
    }
    for entry in std::fs::read_dir(topic)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
