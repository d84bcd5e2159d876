//! Broker memory per registered subscriber: the growth of the process's
//! resident memory (RSS, so allocator overhead included) while subscribers
//! are registered.
//!
//! `cargo run --release --example memory -- [subscribers=100000] [lagging]`
//!
//! Reports bytes per subscriber right after registration, and after one
//! publish, once each subscriber's delivery state (cursor, signing key,
//! host slot) exists and its worker has finished (the deliveries go to a
//! closed port on 127.0.0.1 and fail at once).
//!
//! With `lagging`, the endpoint accepts connections and never answers, and
//! 100 messages are published: every subscriber lags 100 behind, its
//! worker running with a page read and (for the host's 256 slots) requests
//! in flight; reports the bytes per lagging subscriber.

use std::time::Duration;

use broker_core::{Broker, Endpoint};
use broker_delivery::{DeliveryConfig, WebhookNotifier};

/// This process's resident memory in bytes (Linux `/proc/self/statm`).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of subscribers"))
        .unwrap_or(100_000);
    let lagging = std::env::args().nth(2).as_deref() == Some("lagging");
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = endpoint.local_addr().unwrap().port();
    if lagging {
        // Accepts and holds every connection, never reading a byte.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in endpoint.incoming().flatten() {
                held.push(stream);
            }
        });
    } else {
        drop(endpoint);
    }

    let notifier = WebhookNotifier::new(DeliveryConfig::default());
    let broker = Broker::new(notifier.clone());
    let token = broker
        .register_publisher("mem", "p")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let none: [(&str, &str); 0] = [];
    let urls: Vec<String> = (0..n)
        .map(|i| format!("http://127.0.0.1:{port}/hooks/{i}"))
        .collect();
    let before = resident();
    for url in &urls {
        let endpoint = Endpoint::new(url, None, none, broker.limits()).unwrap();
        broker.register_subscriber("mem", endpoint).await.unwrap();
    }
    let registered = resident() - before;
    drop(urls);
    println!("subscribers: {n}");
    println!(
        "registered: {} bytes in all, {:.0} bytes per subscriber",
        registered,
        registered as f64 / n as f64
    );

    if lagging {
        const MESSAGES: usize = 100;
        for _ in 0..MESSAGES {
            broker
                .publish("mem", &token, None, vec![b'x'; 100].into())
                .await
                .unwrap();
        }
        // Every worker runs and has read its page (some are waiting for a
        // host slot with it); measured before the first attempts time out
        // (10 s), once the count stops growing.
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let pending = notifier.pending();
            if notifier.busy() == n && pending == last {
                break;
            }
            last = pending;
        }
        let after = resident().saturating_sub(before);
        println!(
            "lagging {MESSAGES} behind: {} bytes in all, {:.0} bytes per subscriber ({} workers, {} messages read and pending)",
            after,
            after as f64 / n as f64,
            notifier.busy(),
            notifier.pending()
        );
        return;
    }
    broker
        .publish("mem", &token, None, "x".into())
        .await
        .unwrap();
    let left = notifier.drain(Duration::from_secs(120)).await;
    assert_eq!(left, 0, "deliveries still pending");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = resident().saturating_sub(before);
    println!(
        "after one delivery each: {} bytes in all, {:.0} bytes per subscriber",
        after,
        after as f64 / n as f64
    );
}
