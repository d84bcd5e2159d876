//! Broker memory per registered subscriber: the growth of the process's
//! resident memory (RSS, so allocator overhead included) while subscribers
//! are registered.
//!
//! `cargo run --release --example memory -- [subscribers=100000]`
//!
//! Reports bytes per subscriber right after registration, and after one
//! publish, once each subscriber's delivery state (queue, signing key,
//! host slot) exists and its worker has finished (the deliveries go to a
//! closed port on 127.0.0.1 and fail at once).

use std::time::Duration;

use broker_core::{Broker, Endpoint};
use broker_http::{DeliveryConfig, WebhookNotifier};

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
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);

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
