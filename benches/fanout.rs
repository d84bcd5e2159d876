//! In-process publish fan-out of broker-core: how many deliveries per
//! second reach a notifier that touches every subscriber of the snapshot.
//!
//! `cargo bench --bench fanout`. Throughput is reported in elements/s,
//! where one element is one delivery (one subscriber of one publish).

use std::{
    future::Future,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    thread,
};

use broker_core::{Broker, Endpoint, Notifier, Publish};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Counts each delivery on its subscriber's own counter: one atomic add per
/// delivery, the least a real notifier does.
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
/// store don't) to
/// completion without a runtime, so the runtime is not what is measured.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the counting notifier and the memory store never wait"),
    }
}

fn broker_with(subscribers: usize) -> (Broker, String) {
    let broker = Broker::new(Counting);
    let token = ready(broker.register_publisher("bench", "p"))
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let none: [(&str, &str); 0] = [];
    for i in 0..subscribers {
        let url = format!("http://127.0.0.1:{}/s/{i}", 1024 + i % 60_000);
        let endpoint = Endpoint::new(&url, None, none, broker.limits()).unwrap();
        ready(broker.register_subscriber("bench", endpoint)).unwrap();
    }
    (broker, token)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for payload_len in [100usize, 64 * 1024] {
        let payload = Bytes::from(vec![b'x'; payload_len]);
        for subscribers in [1usize, 10, 100, 1_000, 10_000] {
            let (broker, token) = broker_with(subscribers);
            group.throughput(Throughput::Elements(subscribers as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("payload_{payload_len}B"), subscribers),
                &subscribers,
                |b, _| {
                    b.iter(|| {
                        ready(broker.publish("bench", &token, None, payload.clone())).unwrap()
                    })
                },
            );
        }
    }
    group.finish();
}

fn concurrent_publishers(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_concurrent");
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    let subscribers = 1_000;
    let (broker, token) = broker_with(subscribers);
    let broker = Arc::new(broker);
    let payload = Bytes::from_static(&[b'x'; 100]);
    const PUBLISHES_PER_THREAD: u64 = 100;
    group.throughput(Throughput::Elements(
        threads as u64 * PUBLISHES_PER_THREAD * subscribers as u64,
    ));
    group.bench_function(
        BenchmarkId::new(format!("{threads}_threads_x100_publishes"), subscribers),
        |b| {
            b.iter(|| {
                thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            for _ in 0..PUBLISHES_PER_THREAD {
                                ready(broker.publish("bench", &token, None, payload.clone()))
                                    .unwrap();
                            }
                        });
                    }
                });
            })
        },
    );
    group.finish();
}

criterion_group!(benches, fanout, concurrent_publishers);
criterion_main!(benches);
