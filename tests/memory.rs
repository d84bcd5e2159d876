//! What the in-memory log costs per message, through the real server: a
//! retained message holds its own bytes, not the connection's read buffer
//! it arrived in. A test binary of its own, so that no other test's
//! allocations move the resident size it measures.

mod common;

use std::sync::Arc;

use common::{resident_bytes, TestServer};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_small_message_costs_its_size_not_a_read_buffer() {
    let server = Arc::new(TestServer::start().await);
    let token = Arc::new(server.publisher("t", "p").await);
    // Warm up: connections, pools and the allocator's first pages.
    publish_many(&server, &token, 2_000).await;
    let before = resident_bytes();
    let n = 20_000;
    publish_many(&server, &token, n).await;
    let grown = resident_bytes().saturating_sub(before);
    // Each message is retained by the log: 100 B of payload, a content
    // type and the bookkeeping, a few hundred bytes. Keeping hyper's read
    // buffer alive with it cost about 10 KiB a message (200 MB here).
    let per_message = grown / n;
    assert!(
        per_message < 2_048,
        "{grown} bytes for {n} retained messages: {per_message} a message"
    );
    let detail = server.get("/v1/topics/t").await.json();
    assert_eq!(detail["counters"]["published"], 22_000);
}

async fn publish_many(server: &Arc<TestServer>, token: &Arc<String>, n: u64) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (server, token) = (server.clone(), token.clone());
            tokio::spawn(async move {
                let auth = format!("Bearer {token}");
                for _ in 0..n / 8 {
                    let r = server
                        .call(
                            "POST",
                            "/v1/topics/t/messages",
                            &[
                                ("authorization", auth.as_str()),
                                ("content-type", "application/json"),
                            ],
                            vec![b'x'; 100],
                        )
                        .await;
                    assert_eq!(r.status, StatusCode::ACCEPTED);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
