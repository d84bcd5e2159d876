//! The cost of an idempotency key on the in-process publish path (issue
//! 21's goal: at most 15 % more per publish): one subscriber, the memory
//! store, publishes without a key, each with a new key (the table at its
//! steady state: full, forgetting its oldest at every insert), and each
//! with a key already seen (the replay path, which appends nothing).
//!
//! `cargo bench --bench idempotency`; compare the three in one run.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use broker_core::{Broker, Draft, Endpoint, IdempotencyKey, Notifier, Publish};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

struct Counting;

#[async_trait::async_trait]
impl Notifier for Counting {
    async fn notify(&self, publish: Publish) {
        for subscriber in publish.subscribers.iter() {
            subscriber.record(broker_core::Outcome::Delivered, 1);
        }
    }
}

/// Polls a future that never waits (the counting notifier and the memory
/// store don't) to completion without a runtime.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the counting notifier and the memory store never wait"),
    }
}

fn broker() -> (Broker, String) {
    broker_keeping(broker_core::IdempotencyLimits::default().max_keys)
}

/// A broker whose memory store remembers at most `max_keys` keys.
fn broker_keeping(max_keys: usize) -> (Broker, String) {
    let limits = broker_core::IdempotencyLimits {
        max_keys,
        ..broker_core::IdempotencyLimits::default()
    };
    // A log of 4 MiB: at its steady state (evicting as it appends) from
    // the start, so that every variant measures the same log.
    let retention = broker_core::Retention {
        bytes_per_topic: 4 << 20,
        ..broker_core::Retention::default()
    };
    let store = broker_core::MemoryStore::new(retention, 512 << 20).with_idempotency(limits);
    let broker = ready(Broker::open(
        Counting,
        broker_core::Limits::default(),
        store,
    ))
    .unwrap();
    let token = ready(broker.register_publisher("bench", "p"))
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let none: [(&str, &str); 0] = [];
    let endpoint = Endpoint::new("http://127.0.0.1:9/s", None, none, broker.limits()).unwrap();
    ready(broker.register_subscriber("bench", endpoint)).unwrap();
    (broker, token)
}

/// The next new key, as a publisher's `Idempotency-Key` arrives: made
/// outside the timed part (formatting it is the publisher's work).
fn new_key(n: &mut u64) -> IdempotencyKey {
    *n += 1;
    IdempotencyKey::new(&format!("order-{n:016}")).unwrap()
}

fn publish(c: &mut Criterion) {
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut group = c.benchmark_group("idempotency");
    group.throughput(Throughput::Elements(1));
    let (b, token) = broker();
    group.bench_function("no_key", |bench| {
        bench.iter(|| {
            let draft = Draft::new(None, payload.clone());
            ready(b.publish_draft("bench", &token, draft)).unwrap()
        })
    });
    drop(b);
    for (name, max_keys) in [
        (
            "new_key",
            broker_core::IdempotencyLimits::default().max_keys,
        ),
        ("new_key_1k_table", 1_000),
    ] {
        let (b, token) = broker_keeping(max_keys);
        let mut n = 0u64;
        group.bench_function(name, |bench| {
            bench.iter_batched(
                || new_key(&mut n),
                |key| {
                    let draft = Draft::new(None, payload.clone()).with_idempotency_key(Some(key));
                    ready(b.publish_draft("bench", &token, draft)).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    let (b, token) = broker();
    let key = IdempotencyKey::new("order-0000000000000001").unwrap();
    let first = Draft::new(None, payload.clone()).with_idempotency_key(Some(key.clone()));
    ready(b.publish_draft("bench", &token, first)).unwrap();
    group.bench_function("seen_key", |bench| {
        bench.iter(|| {
            let draft = Draft::new(None, payload.clone()).with_idempotency_key(Some(key.clone()));
            let receipt = ready(b.publish_draft("bench", &token, draft)).unwrap();
            assert!(receipt.replayed);
            receipt
        })
    });
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
