//! Pulling consumers under load, over the real HTTP server on 127.0.0.1:
//! fetch by offset (one reader, `limit` 1,000) and a consumer group (4
//! pullers, pull 100 then ack them), against a log filled beforehand with
//! batch publishes of 100-byte messages.
//!
//! ```text
//! cargo run --release --example consume_load -- [--messages 200000]
//!     [--data-dir PATH (the broker keeps its log there; default: memory)]
//! ```
//!
//! Bounded by the message count; everything on loopback.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use broker_core::Broker;
use broker_delivery::{DeliveryConfig, WebhookNotifier};
use broker_http::{serve, Api, ApiConfig, ServerConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn call(
    client: &HttpClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> Value {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        })))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(status.is_success(), "{status}: {bytes:?}");
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::main]
async fn main() {
    let mut messages = 200_000usize;
    let mut data_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().expect("a value after each flag");
        match flag.as_str() {
            "--messages" => messages = value.parse().expect("a count"),
            "--data-dir" => data_dir = Some(value),
            other => panic!("unknown flag {other}"),
        }
    }
    let notifier = WebhookNotifier::new(DeliveryConfig::default());
    let broker = match &data_dir {
        None => Broker::new(notifier.clone()),
        Some(dir) => {
            let store = broker_store::DiskStore::open(dir, broker_store::Options::default())
                .expect("the data dir opens");
            Broker::open(notifier.clone(), broker_core::Limits::default(), store)
                .await
                .unwrap()
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Api::new(broker.clone(), ApiConfig::default()),
        ServerConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let publisher = broker
        .register_publisher("load", "p")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    let reader = broker
        .register_listener("load", "r")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    call(
        &client,
        addr,
        "POST",
        "/v1/topics/load/groups",
        &reader,
        json!({"name": "workers", "start": "earliest"}),
    )
    .await;

    // Fill the log with batches of 1,000.
    let data = base64::engine::general_purpose::STANDARD.encode([b'x'; 100]);
    let item = json!({"data": data, "content_type": "application/octet-stream"});
    let started = Instant::now();
    for _ in 0..messages.div_ceil(1_000) {
        let batch = json!({ "messages": vec![item.clone(); 1_000] });
        call(
            &client,
            addr,
            "POST",
            "/v1/topics/load/messages/batch",
            &publisher,
            batch,
        )
        .await;
    }
    let total = messages.div_ceil(1_000) * 1_000;
    let took = started.elapsed();
    println!(
        "batch publish: {total} messages in {took:.2?}: {:.0} messages/s",
        total as f64 / took.as_secs_f64()
    );

    // Fetch by offset, one reader, limit 1,000.
    let started = Instant::now();
    let mut offset = 0u64;
    let mut read = 0usize;
    while read < total {
        let page = call(
            &client,
            addr,
            "GET",
            &format!("/v1/topics/load/messages?offset={offset}&limit=1000"),
            &reader,
            Value::Null,
        )
        .await;
        let n = page["messages"].as_array().unwrap().len();
        assert!(n > 0, "the log ended early at {offset}");
        read += n;
        offset = page["next_offset"].as_u64().unwrap();
    }
    let took = started.elapsed();
    println!(
        "fetch (limit 1000, one reader): {read} messages in {took:.2?}: {:.0} messages/s",
        read as f64 / took.as_secs_f64()
    );

    // A consumer group: 4 pullers, pull 100, ack them.
    let started = Instant::now();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pullers: Vec<_> = (0..4)
        .map(|_| {
            let (client, reader, acked) = (client.clone(), reader.clone(), acked.clone());
            tokio::spawn(async move {
                loop {
                    let pulled = call(
                        &client,
                        addr,
                        "POST",
                        "/v1/topics/load/groups/workers/pull",
                        &reader,
                        json!({"max": 100}),
                    )
                    .await;
                    let receipts: Vec<Value> = pulled["messages"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m["receipt"].clone())
                        .collect();
                    if receipts.is_empty() {
                        return;
                    }
                    let answer = call(
                        &client,
                        addr,
                        "POST",
                        "/v1/topics/load/groups/workers/ack",
                        &reader,
                        json!({ "receipts": receipts }),
                    )
                    .await;
                    acked.fetch_add(
                        answer["acked"].as_u64().unwrap() as usize,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            })
        })
        .collect();
    for p in pullers {
        p.await.unwrap();
    }
    let took = started.elapsed();
    let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(acked, total, "every message acked once");
    println!(
        "group (4 pullers, pull 100 + ack): {acked} messages in {took:.2?}: {:.0} messages/s",
        acked as f64 / took.as_secs_f64()
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
