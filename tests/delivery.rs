//! The delivery engine against real endpoints on 127.0.0.1: isolation,
//! bounded queues, pooling, timeouts, redirects, huge bodies, retries,
//! HTTPS, the destination policy and drain.

mod common;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use broker_delivery::{DeliveryConfig, DestinationPolicy};
use broker_http::ApiConfig;
use common::{dead_port, resident_bytes, Behaviour, Sink, TestServer, PATIENCE};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::Semaphore};

async fn server(delivery: DeliveryConfig) -> TestServer {
    TestServer::with_config(ApiConfig::default(), delivery).await
}

/// The counters of the subscriber registered with `url` on `topic`.
async fn counters_of(s: &TestServer, topic: &str, url: &str) -> Value {
    let detail = s.get(&format!("/v1/topics/{topic}")).await.json();
    detail["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sub| sub["url"] == url)
        .unwrap_or_else(|| panic!("no subscriber {url} in {detail}"))["counters"]
        .clone()
}

fn counts(delivered: u64, failed: u64, dropped: u64, refused: u64, retried: u64) -> Value {
    // Every delivery given up on goes to the dead letters.
    json!({"delivered": delivered, "failed": failed, "dropped": dropped, "refused": refused, "retried": retried, "dead_lettered": failed, "dead_letters_evicted": 0, "filtered": 0})
}

/// A topic "t" with a publisher (its token returned), an endpoint that
/// holds every request until the gate opens, and a healthy one.
async fn stuck_and_healthy(s: &TestServer) -> (String, Arc<Semaphore>, Sink, Sink) {
    let gate = Arc::new(Semaphore::new(0));
    let stuck = Sink::start(Behaviour::Gated(gate.clone())).await;
    let healthy = Sink::ok().await;
    let token = s.publisher("t", "p").await;
    s.subscriber("t", json!({"url": stuck.url("/")})).await;
    s.subscriber("t", json!({"url": healthy.url("/")})).await;
    (token, gate, stuck, healthy)
}

#[tokio::test]
async fn a_hanging_endpoint_delays_no_one_else() {
    let s = server(DeliveryConfig::default()).await;
    let (token, gate, mut hanging, mut healthy) = stuck_and_healthy(&s).await;

    for i in 0..100 {
        let r = s.publish("t", &token, "text/plain", "m").await;
        assert_eq!(r.status, 202, "publish {i}");
    }
    for _ in 0..100 {
        healthy.next().await;
    }
    // While the healthy one got everything, the hanging one holds no more
    // than its in-flight limit; the rest waits in the log, its cursor
    // behind.
    let held = hanging.drain_now().len();
    assert!(held <= 8, "{held} requests in flight to one endpoint");
    let detail = s.get("/v1/topics/t").await.json();
    let lag: Vec<u64> = detail["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sub| sub["lag"].as_u64().unwrap())
        .collect();
    assert_eq!(lag, [100, 0], "the hanging one lags, the healthy one not");
    gate.add_permits(usize::MAX >> 4);
    s.settle().await;
    assert_eq!(
        counters_of(&s, "t", &hanging.url("/")).await,
        counts(100, 0, 0, 0, 0)
    );
}

#[tokio::test]
async fn every_kind_of_bad_endpoint_on_one_topic() {
    // Every failure counted: no circuit opens.
    let s = server(DeliveryConfig {
        request_timeout: Duration::from_millis(300),
        circuit_after: 0,
        ..DeliveryConfig::default()
    })
    .await;
    let mut redirect_target = Sink::ok().await;
    let hanging = Sink::start(Behaviour::Hang).await;
    let failing = Sink::start(Behaviour::Status(500)).await;
    let redirecting = Sink::start(Behaviour::Redirect(redirect_target.url("/target"))).await;
    let huge = Sink::start(Behaviour::Huge(100 * 1024 * 1024)).await;
    let mut healthy = Sink::ok().await;
    let dead = format!("http://{}/", dead_port().await);
    let token = s.publisher("t", "p").await;
    for sink in [&hanging, &failing, &redirecting, &huge, &healthy] {
        s.subscriber("t", json!({"url": sink.url("/")})).await;
    }
    s.subscriber("t", json!({"url": dead})).await;

    let rss_before = resident_bytes();
    const N: u64 = 20;
    for _ in 0..N {
        assert_eq!(s.publish("t", &token, "text/plain", "m").await.status, 202);
    }
    for _ in 0..N {
        healthy.next().await;
    }
    s.settle().await;
    // A 100 MiB answer per delivery was not buffered.
    let grown = resident_bytes().saturating_sub(rss_before);
    assert!(grown < 64 * 1024 * 1024, "memory grew by {grown} bytes");

    let failed_all = counts(0, N, 0, 0, 0);
    assert_eq!(
        counters_of(&s, "t", &healthy.url("/")).await,
        counts(N, 0, 0, 0, 0)
    );
    assert_eq!(
        counters_of(&s, "t", &hanging.url("/")).await,
        failed_all,
        "timed out"
    );
    assert_eq!(counters_of(&s, "t", &failing.url("/")).await, failed_all);
    assert_eq!(
        counters_of(&s, "t", &redirecting.url("/")).await,
        failed_all
    );
    assert_eq!(counters_of(&s, "t", &dead).await, failed_all);
    assert_eq!(
        counters_of(&s, "t", &huge.url("/")).await,
        counts(N, 0, 0, 0, 0)
    );
    let topic = s.get("/v1/topics/t").await.json();
    assert_eq!(
        topic["counters"],
        json!({"published": N, "delivered": 2 * N, "failed": 4 * N, "dropped": 0, "refused": 0, "retried": 0, "dead_lettered": 4 * N, "dead_letters_evicted": 0, "filtered": 0})
    );
    // Redirects are not followed.
    assert!(redirect_target.drain_now().is_empty());
    s.assert_alive().await;
}

#[tokio::test]
async fn a_slow_subscriber_lags_behind_and_loses_nothing() {
    let s = server(DeliveryConfig {
        max_in_flight: 1,
        ..DeliveryConfig::default()
    })
    .await;
    let gate = Arc::new(Semaphore::new(0));
    let mut slow = Sink::start(Behaviour::Gated(gate.clone())).await;
    let token = s.publisher("t", "p").await;
    s.subscriber("t", json!({"url": slow.url("/")})).await;

    let auth = format!("Bearer {token}");
    for i in 0..2_000 {
        let r = s
            .call(
                "POST",
                "/v1/topics/t/messages",
                &[("authorization", &auth)],
                i.to_string(),
            )
            .await;
        assert_eq!(r.status, 202);
    }
    assert_eq!(slow.next().await.body, "0");
    // It lags: the topic detail says where it is and by how much.
    let detail = s.get("/v1/topics/t").await.json();
    let sub = &detail["subscribers"][0];
    assert_eq!(sub["offset"], 0, "{sub}");
    assert_eq!(sub["lag"], 2_000, "{sub}");
    gate.add_permits(usize::MAX >> 4);
    s.settle().await;
    let bodies: Vec<String> = std::iter::once("0".to_owned())
        .chain(
            slow.drain_now()
                .into_iter()
                .map(|r| String::from_utf8(r.body.to_vec()).unwrap()),
        )
        .collect();
    let want: Vec<String> = (0..2_000).map(|i| i.to_string()).collect();
    assert_eq!(bodies, want, "all of them, in order (one in flight)");
    assert_eq!(
        counters_of(&s, "t", &slow.url("/")).await,
        counts(2_000, 0, 0, 0, 0)
    );
    let sub = &s.get("/v1/topics/t").await.json()["subscribers"][0];
    assert_eq!(
        (sub["offset"].as_u64(), sub["lag"].as_u64()),
        (Some(2_000), Some(0))
    );
}

#[tokio::test]
async fn deregistering_stops_queued_deliveries() {
    let s = server(DeliveryConfig {
        max_in_flight: 1,
        ..DeliveryConfig::default()
    })
    .await;
    let gate = Arc::new(Semaphore::new(0));
    let mut slow = Sink::start(Behaviour::Gated(gate.clone())).await;
    let token = s.publisher("t", "p").await;
    let sub = s.subscriber("t", json!({"url": slow.url("/")})).await;
    for _ in 0..10 {
        s.publish("t", &token, "text/plain", "m").await;
    }
    slow.next().await;
    let path = format!("/v1/topics/t/subscribers/{}", sub["id"].as_str().unwrap());
    assert_eq!(s.delete(&path).await.status, 204);
    gate.add_permits(100);
    s.settle().await;
    assert!(
        slow.drain_now().is_empty(),
        "nothing after the one in flight"
    );
    // The one in flight is abandoned too: deregistering ends deliveries at
    // once.
    let topic = s.get("/v1/topics/t").await.json();
    assert_eq!(topic["counters"]["delivered"], 0);
    assert_eq!(topic["counters"]["dropped"], 10);
}

#[tokio::test]
async fn connections_are_reused() {
    let s = server(DeliveryConfig::default()).await;
    let mut sink = Sink::ok().await;
    let token = s.publisher("t", "p").await;
    s.subscriber("t", json!({"url": sink.url("/")})).await;
    for _ in 0..200 {
        s.publish("t", &token, "text/plain", "m").await;
    }
    for _ in 0..200 {
        sink.next().await;
    }
    s.settle().await;
    let opened = sink.connections.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&opened),
        "{opened} connections for 200 deliveries"
    );
}

#[tokio::test]
async fn opted_in_retries_keep_the_id_and_re_sign() {
    let s = server(DeliveryConfig {
        retry_base_delay: Duration::from_millis(20),
        ..DeliveryConfig::default()
    })
    .await;
    let mut flaky = Sink::start(Behaviour::script(&[
        (500, None),
        (503, Some("0")),
        (429, Some("0")),
    ]))
    .await;
    let mut refusing = Sink::start(Behaviour::Status(400)).await;
    let mut no_opt_in = Sink::start(Behaviour::Status(500)).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": flaky.url("/"), "retry": {"max_attempts": 5}}),
        )
        .await;
    assert_eq!(sub["retry"]["max_attempts"], 5);
    s.subscriber(
        "t",
        json!({"url": refusing.url("/"), "retry": {"max_attempts": 5}}),
    )
    .await;
    s.subscriber("t", json!({"url": no_opt_in.url("/")})).await;

    let r = s
        .publish("t", &token, "application/json", "{\"n\":1}")
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    s.settle().await;

    let attempts = flaky.drain_now();
    assert_eq!(attempts.len(), 4);
    let verifier = standardwebhooks::Webhook::new(sub["secret"].as_str().unwrap()).unwrap();
    for a in &attempts {
        assert_eq!(a.headers["webhook-id"], id.as_str());
        verifier
            .verify(&a.body, &a.headers)
            .expect("every attempt is signed");
    }
    assert_eq!(
        counters_of(&s, "t", &flaky.url("/")).await,
        counts(1, 0, 0, 0, 3)
    );
    assert_eq!(refusing.drain_now().len(), 1, "4xx is not retried");
    assert_eq!(
        counters_of(&s, "t", &refusing.url("/")).await,
        counts(0, 1, 0, 0, 0)
    );
    assert_eq!(no_opt_in.drain_now().len(), 1, "no retry without opting in");

    for bad in [
        json!({"max_attempts": 0}),
        json!({"max_attempts": 11}),
        json!({"max": 2}),
        json!(3),
    ] {
        let r = s
            .post_json(
                "/v1/topics/t/subscribers",
                json!({"url": "http://127.0.0.1:9/r", "retry": bad}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

fn test_certificate() -> (
    rcgen::CertifiedKey<rcgen::KeyPair>,
    rustls::pki_types::CertificateDer<'static>,
) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let der = certified.cert.der().clone();
    (certified, der)
}

#[tokio::test]
async fn https_deliveries_work_and_are_verified() {
    let (certified, der) = test_certificate();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut sink = Sink::serve_with(listener, Behaviour::Status(200), Some(acceptor));
    let url = format!("https://localhost:{}/secure", sink.addr.port());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let trusting = server(DeliveryConfig {
        tls: Some(Arc::new(client_tls)),
        ..DeliveryConfig::default()
    })
    .await;
    let token = trusting.publisher("t", "p").await;
    trusting.subscriber("t", json!({"url": url})).await;
    trusting
        .publish("t", &token, "text/plain", "over tls")
        .await;
    let got = sink.next().await;
    assert_eq!(got.body, "over tls");
    assert_eq!(got.path, "/secure");
    trusting.settle().await;
    assert_eq!(
        counters_of(&trusting, "t", &url).await,
        counts(1, 0, 0, 0, 0)
    );

    // With the default roots the self-signed certificate is not trusted.
    let default_roots = server(DeliveryConfig::default()).await;
    let token = default_roots.publisher("t", "p").await;
    default_roots.subscriber("t", json!({"url": url})).await;
    default_roots.publish("t", &token, "text/plain", "x").await;
    default_roots.settle().await;
    assert_eq!(
        counters_of(&default_roots, "t", &url).await,
        counts(0, 1, 0, 0, 0)
    );
    assert!(sink.drain_now().is_empty());
}

#[tokio::test]
async fn the_destination_policy_refuses_on_resolved_addresses() {
    let open = server(DeliveryConfig {
        connect_timeout: Duration::from_millis(300),
        ..DeliveryConfig::default()
    })
    .await;
    let mut local = Sink::ok().await;
    let token = open.publisher("t", "p").await;
    let metadata = "http://169.254.169.254/latest/meta-data/";
    open.subscriber("t", json!({"url": metadata})).await;
    open.subscriber("t", json!({"url": "http://[::ffff:169.254.169.254]/"}))
        .await;
    open.subscriber("t", json!({"url": local.url("/")})).await;
    open.publish("t", &token, "text/plain", "x").await;
    local.next().await;
    open.settle().await;
    assert_eq!(
        counters_of(&open, "t", metadata).await,
        counts(0, 0, 0, 1, 0)
    );
    assert_eq!(
        counters_of(&open, "t", "http://[::ffff:169.254.169.254]/").await,
        counts(0, 0, 0, 1, 0)
    );
    assert_eq!(
        counters_of(&open, "t", &local.url("/")).await,
        counts(1, 0, 0, 0, 0)
    );

    let strict = server(DeliveryConfig {
        destination_policy: DestinationPolicy {
            deny_private: true,
            ..DestinationPolicy::default()
        },
        ..DeliveryConfig::default()
    })
    .await;
    let token = strict.publisher("t", "p").await;
    // By address, and by a name that resolves to loopback.
    let by_name = format!("http://localhost:{}/", local.addr.port());
    strict.subscriber("t", json!({"url": local.url("/")})).await;
    strict.subscriber("t", json!({"url": by_name})).await;
    strict.publish("t", &token, "text/plain", "x").await;
    strict.settle().await;
    assert_eq!(
        counters_of(&strict, "t", &local.url("/")).await,
        counts(0, 0, 0, 1, 0)
    );
    assert_eq!(
        counters_of(&strict, "t", &by_name).await,
        counts(0, 0, 0, 1, 0)
    );
    assert!(local.drain_now().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn drain_finishes_what_it_can_within_the_deadline() {
    let s = server(DeliveryConfig::default()).await;
    let (token, gate, mut stuck, mut healthy) = stuck_and_healthy(&s).await;
    for _ in 0..3 {
        s.publish("t", &token, "text/plain", "m").await;
    }
    stuck.next().await;
    s.broker.close();
    let left = s.notifier.drain(Duration::from_millis(200)).await;
    assert_eq!(left, 3, "the stuck endpoint's three are left");
    assert_eq!(healthy.drain_now().len(), 3);
    gate.add_permits(10);
    assert_eq!(s.notifier.drain(PATIENCE).await, 0);
}

#[tokio::test]
async fn loopback_only_resolves_no_name_and_sends_nowhere_else() {
    let s = server(DeliveryConfig {
        destination_policy: DestinationPolicy {
            loopback_only: true,
            ..DestinationPolicy::default()
        },
        ..DeliveryConfig::default()
    })
    .await;
    let mut local = Sink::ok().await;
    let token = s.publisher("t", "p").await;
    let by_name = format!("http://localhost:{}/", local.addr.port());
    for url in [
        local.url("/"),
        by_name.clone(),
        "http://10.255.255.1/".to_owned(),
        "http://example.invalid/".to_owned(),
    ] {
        s.subscriber("t", json!({"url": url})).await;
    }
    s.publish("t", &token, "text/plain", "x").await;
    assert_eq!(local.next().await.body, "x");
    s.settle().await;
    assert_eq!(
        counters_of(&s, "t", &local.url("/")).await,
        counts(1, 0, 0, 0, 0)
    );
    for url in [
        by_name.as_str(),
        "http://10.255.255.1/",
        "http://example.invalid/",
    ] {
        assert_eq!(
            counters_of(&s, "t", url).await,
            counts(0, 0, 0, 1, 0),
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_retry_schedule_is_followed_and_shown() {
    let s = server(DeliveryConfig::default()).await;
    let mut flaky = Sink::start(Behaviour::script(&[(500, None), (502, None)])).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": flaky.url("/"), "retry": {"schedule": ["50ms", "1500ms"]}}),
        )
        .await;
    assert_eq!(
        sub["retry"],
        json!({"max_attempts": 3, "schedule": ["50ms", "1500ms"]})
    );
    s.publish("t", &token, "text/plain", "m").await;
    let first = flaky.next().await;
    let second = flaky.next().await;
    let third = flaky.next().await;
    // The waits of the schedule, within its ±20 % (and the time to answer).
    let gap1 = second.at - first.at;
    let gap2 = third.at - second.at;
    assert!(gap1 >= Duration::from_millis(40), "first wait {gap1:?}");
    assert!(gap2 >= Duration::from_millis(1200), "second wait {gap2:?}");
    s.settle().await;
    assert_eq!(
        counters_of(&s, "t", &flaky.url("/")).await,
        counts(1, 0, 0, 0, 2)
    );
    for bad in [
        json!({"schedule": ["5s", "25h"]}),
        json!({"schedule": vec!["1s"; 21]}),
        json!({"schedule": ["soon"]}),
        json!({"schedule": ["1s"], "max_attempts": 2}),
        json!({}),
    ] {
        let r = s
            .post_json(
                "/v1/topics/t/subscribers",
                json!({"url": "http://127.0.0.1:9/s", "retry": bad}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn an_ordered_subscriber_gets_one_at_a_time_in_offset_order() {
    let s = server(DeliveryConfig::default()).await;
    // The second message fails twice before it is delivered.
    let mut sink = Sink::start(Behaviour::script(&[(200, None), (500, None), (500, None)])).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": sink.url("/"), "ordered": true, "retry": {"schedule": ["20ms", "20ms"]}}),
        )
        .await;
    assert_eq!(sub["ordered"], true);
    for body in ["0", "1", "2", "3", "4", "5"] {
        s.publish("t", &token, "text/plain", body).await;
    }
    s.settle().await;
    let bodies: Vec<String> = sink
        .drain_now()
        .into_iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, ["0", "1", "1", "1", "2", "3", "4", "5"]);
    assert_eq!(
        counters_of(&s, "t", &sink.url("/")).await,
        counts(6, 0, 0, 0, 2)
    );
}

#[tokio::test]
async fn dead_letters_are_listed_redriven_and_replayed() {
    let s = server(DeliveryConfig {
        circuit_after: 0,
        ..DeliveryConfig::default()
    })
    .await;
    // Six failures: both attempts of three messages; then all is well.
    let mut sink = Sink::start(Behaviour::script(&[(500, None); 6])).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": sink.url("/"), "retry": {"schedule": ["10ms"]}}),
        )
        .await;
    let base = format!("/v1/topics/t/subscribers/{}", sub["id"].as_str().unwrap());
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut ids = Vec::new();
    for body in ["a", "b", "c"] {
        ids.push(s.publish("t", &token, "text/plain", body).await.json()["id"].clone());
    }
    s.settle().await;
    assert_eq!(sink.drain_now().len(), 6);
    assert_eq!(
        counters_of(&s, "t", &sink.url("/")).await,
        counts(0, 3, 0, 0, 3)
    );
    let listed = s.get(&format!("{base}/dead-letters")).await;
    assert_eq!(listed.status, 200);
    let dead = listed.json()["dead_letters"].clone();
    assert_eq!(dead.as_array().unwrap().len(), 3, "{dead}");
    for (i, d) in dead.as_array().unwrap().iter().enumerate() {
        assert_eq!(d["message_id"], ids[i]);
        assert_eq!(d["offset"], i);
        assert_eq!(d["attempts"], 2);
        assert_eq!(d["last_status"], 500);
        assert!(d["last_error"].as_str().unwrap().contains("status"), "{d}");
        assert!(d["failed_at"].as_str().unwrap().ends_with('Z'), "{d}");
    }
    let limited = s.get(&format!("{base}/dead-letters?limit=1")).await.json();
    assert_eq!(limited["dead_letters"].as_array().unwrap().len(), 1);

    // Redrive one by id, then the rest.
    let r = s
        .post_json(&format!("{base}/redrive"), json!({"message_ids": [ids[1]]}))
        .await;
    assert_eq!((r.status.as_u16(), r.json()), (202, json!({"redriven": 1})));
    s.settle().await;
    let got = sink.drain_now();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["webhook-id"], ids[1].as_str().unwrap());
    let left = s.get(&format!("{base}/dead-letters")).await.json();
    let left: Vec<_> = left["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message_id"].clone())
        .collect();
    assert_eq!(left, [ids[0].clone(), ids[2].clone()]);
    let r = s.post_json(&format!("{base}/redrive"), json!({})).await;
    assert_eq!(r.json(), json!({"redriven": 2}));
    s.settle().await;
    assert_eq!(sink.drain_now().len(), 2);
    let none = s.get(&format!("{base}/dead-letters")).await.json();
    assert_eq!(none, json!({"dead_letters": []}));

    // Replay from an offset and from a time: all three again.
    let r = s
        .post_json(&format!("{base}/replay"), json!({"from_offset": 1}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (202, json!({"replayed": 2, "from_offset": 1}))
    );
    s.settle().await;
    assert_eq!(sink.drain_now().len(), 2);
    let since = httpdate::fmt_http_date(started); // not RFC 3339: refused
    let r = s
        .post_json(&format!("{base}/replay"), json!({"since": since}))
        .await;
    assert_eq!(r.status, 400);
    // After everything: nothing, from the end; before everything: all
    // three (written with an offset and in UTC).
    let later = s
        .post_json(
            &format!("{base}/replay"),
            json!({"since": "2999-01-01T00:00:00+01:00"}),
        )
        .await;
    assert_eq!(later.json(), json!({"replayed": 0, "from_offset": 3}));
    let since = "2000-01-01T00:00:00Z";
    let r = s
        .post_json(&format!("{base}/replay"), json!({"since": since}))
        .await;
    assert_eq!(
        r.json(),
        json!({"replayed": 3, "from_offset": 0}),
        "{since}"
    );
    s.settle().await;
    let again: Vec<_> = sink
        .drain_now()
        .into_iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(again.len(), 3);
    for id in &ids {
        assert!(again.contains(&id.as_str().unwrap().to_owned()));
    }

    // Unknown subscribers and malformed bodies.
    for path in ["dead-letters", "redrive", "replay"] {
        let url = format!("/v1/topics/t/subscribers/sub_nope/{path}");
        let r = match path {
            "dead-letters" => s.get(&url).await,
            "redrive" => s.post_json(&url, json!({})).await,
            _ => s.post_json(&url, json!({"from_offset": 0})).await,
        };
        assert_eq!(r.status, 404, "{path}");
    }
    for (path, body) in [
        ("redrive", json!({"ids": []})),
        ("replay", json!({})),
        ("replay", json!({"from_offset": 0, "since": since})),
        ("replay", json!({"from_offset": -1})),
    ] {
        let r = s.post_json(&format!("{base}/{path}"), body.clone()).await;
        assert_eq!(r.status, 400, "{path} {body}");
    }
    for limit in ["0", "1001", "x"] {
        let r = s.get(&format!("{base}/dead-letters?limit={limit}")).await;
        assert_eq!(r.status, 400, "limit={limit}");
    }
}

#[tokio::test]
async fn a_410_disables_the_subscriber_and_enable_resumes_it() {
    let s = server(DeliveryConfig::default()).await;
    // Gone for the first message; fine afterwards.
    let mut sink = Sink::start(Behaviour::script(&[(410, None)])).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": sink.url("/"), "ordered": true, "retry": {"max_attempts": 5}}),
        )
        .await;
    let base = format!("/v1/topics/t/subscribers/{}", sub["id"].as_str().unwrap());
    s.publish("t", &token, "text/plain", "gone").await;
    s.settle().await;
    let detail = s.get("/v1/topics/t").await.json();
    let status = |detail: &Value| detail["subscribers"][0]["status"].clone();
    assert_eq!(status(&detail), "disabled", "{detail}");
    // 410 is not retried; the message is a dead letter.
    assert_eq!(sink.drain_now().len(), 1);
    let dead = s.get(&format!("{base}/dead-letters")).await.json();
    assert_eq!(dead["dead_letters"][0]["last_status"], 410);
    // Disabled: nothing goes out; it lags.
    for body in ["a", "b"] {
        s.publish("t", &token, "text/plain", body).await;
    }
    s.settle().await;
    assert!(sink.drain_now().is_empty());
    assert_eq!(
        s.get("/v1/topics/t").await.json()["subscribers"][0]["lag"],
        2
    );

    let r = s.post_json(&format!("{base}/enable"), json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "active");
    s.settle().await;
    let bodies: Vec<_> = sink.drain_now().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies, ["a", "b"], "resumed from its cursor");
    let detail = s.get("/v1/topics/t").await.json();
    assert_eq!(status(&detail), "active");
    assert_eq!(detail["subscribers"][0]["lag"], 0);
    let r = s
        .post_json("/v1/topics/t/subscribers/sub_nope/enable", json!({}))
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one() {
    let s = server(DeliveryConfig::default()).await;
    let mut sink = Sink::ok().await;
    let token = s.publisher("t", "p").await;
    let sub = s.subscriber("t", json!({"url": sink.url("/")})).await;
    let old = sub["secret"].as_str().unwrap().to_owned();
    let path = format!(
        "/v1/topics/t/subscribers/{}/rotate-secret",
        sub["id"].as_str().unwrap()
    );
    let r = s.post_json(&path, json!({})).await;
    assert_eq!(r.status, 200);
    let new = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    s.publish("t", &token, "text/plain", "m").await;
    let got = sink.next().await;
    let signatures = got.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    for secret in [&old, &new] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got.body, &got.headers)
            .expect("verifies with either secret");
    }
    // A registration replay answers the current secret.
    let again = s
        .post_json("/v1/topics/t/subscribers", json!({"url": sink.url("/")}))
        .await;
    assert_eq!(again.json()["secret"], new.as_str());
    assert_eq!(
        s.post_json("/v1/topics/t/subscribers/sub_nope/rotate-secret", json!({}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn five_failures_in_a_row_open_the_circuit_and_pause_attempts() {
    // One in flight, so that exactly five attempts come before it opens.
    let s = server(DeliveryConfig {
        circuit_open_for: Duration::from_secs(60),
        max_in_flight: 1,
        ..DeliveryConfig::default()
    })
    .await;
    let mut failing = Sink::start(Behaviour::Status(500)).await;
    let mut healthy = Sink::ok().await;
    let token = s.publisher("t", "p").await;
    s.subscriber("t", json!({"url": failing.url("/")})).await;
    s.subscriber("t", json!({"url": healthy.url("/")})).await;
    for _ in 0..20 {
        s.publish("t", &token, "text/plain", "m").await;
    }
    for _ in 0..20 {
        healthy.next().await;
    }
    // Awaited (bounded): the failing one's circuit opens.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let detail = loop {
        let detail = s.get("/v1/topics/t").await.json();
        if detail["subscribers"][0]["circuit"] == "open" {
            break detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the circuit did not open: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let sub = &detail["subscribers"][0];
    // Five attempts, all failed; the other fifteen wait, not failed.
    assert_eq!(failing.drain_now().len(), 5);
    assert_eq!(sub["counters"]["failed"], 5, "{sub}");
    // (The cursor may trail the last failure by a commit.)
    assert!(sub["lag"].as_u64().unwrap() >= 15, "{sub}");
    assert_eq!(detail["subscribers"][1]["circuit"], "closed");
}

/// Publishes `n` small messages ("0", "1", …) on `topic` from 8 tasks.
async fn publish_numbered(s: &Arc<TestServer>, topic: &str, token: &str, n: usize) {
    let tasks: Vec<_> = (0..8)
        .map(|k| {
            let (s, topic, auth) = (s.clone(), topic.to_owned(), format!("Bearer {token}"));
            tokio::spawn(async move {
                for i in (k..n).step_by(8) {
                    let r = s
                        .call(
                            "POST",
                            &format!("/v1/topics/{topic}/messages"),
                            &[("authorization", &auth)],
                            i.to_string(),
                        )
                        .await;
                    assert_eq!(r.status, 202);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The issue's "lag without loss": an endpoint taking 50 ms a request
/// behind 3,000 small messages receives every one of them, in memory and
/// with a data dir (both at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_behind_3000_messages_receives_all_of_them() {
    const N: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let disk = broker_store::DiskStore::open(dir.path(), broker_store::Options::default()).unwrap();
    let servers = [
        Arc::new(server(DeliveryConfig::default()).await),
        Arc::new(TestServer::with_store(DeliveryConfig::default(), disk).await),
    ];
    let runs = servers.iter().map(|s| {
        let s = s.clone();
        async move {
            let mut slow = Sink::start(Behaviour::Slow(Duration::from_millis(50))).await;
            let token = s.publisher("t", "p").await;
            s.subscriber("t", json!({"url": slow.url("/")})).await;
            publish_numbered(&s, "t", &token, N).await;
            let mut seen = vec![false; N];
            for _ in 0..N {
                let got = slow.next().await;
                let i: usize = std::str::from_utf8(&got.body).unwrap().parse().unwrap();
                assert!(!std::mem::replace(&mut seen[i], true), "{i} twice");
            }
            s.settle().await;
            assert_eq!(
                counters_of(&s, "t", &slow.url("/")).await,
                counts(N as u64, 0, 0, 0, 0)
            );
            let sub = &s.get("/v1/topics/t").await.json()["subscribers"][0];
            assert_eq!(sub["lag"], 0, "{sub}");
        }
    });
    futures_util::future::join_all(runs).await;
}

/// Deliveries charge what they hold to the memory budget, and keep to
/// half of it: with endpoints holding every request, what four workers
/// hold stays within half the budget and one message each, while the log
/// evicts to make room (those count as dropped, never silently lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_hold_at_most_half_the_memory_budget() {
    const BUDGET: usize = 256 << 10;
    const SIZE: usize = 8 << 10;
    const N: u64 = 100;
    let store = broker_core::MemoryStore::new(broker_core::Retention::default(), BUDGET);
    let s = TestServer::with_store(DeliveryConfig::default(), store).await;
    let memory = s.broker.memory().clone();
    let gate = Arc::new(Semaphore::new(0));
    let mut sinks = Vec::new();
    for _ in 0..4 {
        let sink = Sink::start(Behaviour::Gated(gate.clone())).await;
        s.subscriber("t", json!({"url": sink.url("/")})).await;
        sinks.push(sink);
    }
    let token = s.publisher("t", "p").await;
    let auth = format!("Bearer {token}");
    let mut most = 0;
    for _ in 0..N {
        let r = s
            .call(
                "POST",
                "/v1/topics/t/messages",
                &[("authorization", &auth)],
                vec![b'x'; SIZE],
            )
            .await;
        assert_eq!(r.status, 202);
        most = most.max(memory.pinned());
    }
    // Let the workers read what they may while the endpoints hold on.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        most = most.max(memory.pinned());
    }
    assert!(most > 0, "the deliveries were charged");
    let bound = BUDGET / 2 + 4 * (SIZE + 160);
    assert!(most <= bound, "deliveries held {most} bytes, over {bound}");
    assert!(
        memory.used() <= BUDGET + 4 * (SIZE + 160),
        "{}",
        memory.used()
    );
    gate.add_permits(usize::MAX >> 4);
    s.settle().await;
    for sink in &sinks {
        let c = counters_of(&s, "t", &sink.url("/")).await;
        assert_eq!(
            c["delivered"].as_u64().unwrap() + c["dropped"].as_u64().unwrap(),
            N,
            "{c}"
        );
        assert!(c["dropped"].as_u64().unwrap() > 0, "the log evicted: {c}");
    }
    assert_eq!(memory.pinned(), 0, "every charge was given back");
}

/// When deliveries alone hold more than the whole budget, publishing is
/// refused with 503 and Retry-After until they finish.
#[tokio::test]
async fn publishing_is_refused_while_deliveries_hold_the_whole_budget() {
    let s = server(DeliveryConfig::default()).await;
    let token = s.publisher("t", "p").await;
    let memory = s.broker.memory().clone();
    let held = memory.charge(memory.limit() + 1);
    let r = s.publish("t", &token, "text/plain", "m").await;
    assert_eq!(r.error_code(503), "overloaded");
    assert_eq!(r.headers["retry-after"], "1");
    drop(held);
    assert_eq!(s.publish("t", &token, "text/plain", "m").await.status, 202);
}

/// The Standard Webhooks schedule followed for real, on tokio's paused
/// clock: seven failures, eight attempts over about 27.6 hours of virtual
/// time, each wait within its ±20 %, then delivered; a few real seconds.
#[tokio::test(start_paused = true)]
async fn the_standard_schedule_runs_for_a_day_on_a_paused_clock() {
    const STANDARD: [u64; 7] = [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000];
    let s = server(DeliveryConfig {
        // Only the schedule spaces the attempts here.
        circuit_after: 0,
        ..DeliveryConfig::default()
    })
    .await;
    let mut flaky = Sink::start(Behaviour::script(&[(503, None); 7])).await;
    let token = s.publisher("t", "p").await;
    s.subscriber(
        "t",
        json!({"url": flaky.url("/"), "retry": {"schedule": ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]}}),
    )
    .await;
    let started = tokio::time::Instant::now();
    s.publish("t", &token, "text/plain", "m").await;
    // No real-time patience here: virtual time jumps to each retry. A
    // missing attempt shows as the virtual deadline passing instead.
    let attempts = tokio::time::timeout(Duration::from_secs(40 * 3600), async {
        let mut at = Vec::new();
        for _ in 0..8 {
            at.push(flaky.received.recv().await.expect("the sink runs").at);
        }
        at
    })
    .await
    .expect("eight attempts within 40 hours");
    for (n, (pair, wait)) in attempts.windows(2).zip(STANDARD).enumerate() {
        let gap = (pair[1] - pair[0]).as_secs_f64();
        let wait = wait as f64;
        assert!(
            gap >= 0.8 * wait && gap <= 1.2 * wait + 1.0,
            "wait {n}: {gap} s for a scheduled {wait} s"
        );
    }
    let total = attempts[7] - started;
    assert!(
        total >= Duration::from_secs(22 * 3600) && total <= Duration::from_secs(34 * 3600),
        "{total:?}"
    );
    let c = counters_of(&s, "t", &flaky.url("/")).await;
    assert_eq!(
        (c["delivered"].as_u64(), c["retried"].as_u64()),
        (Some(1), Some(7)),
        "{c}"
    );
}

/// What paces publishers counts only subscribers that are delivering: a
/// hanging endpoint, however far behind, counts nothing; a slow one counts
/// while it is behind (at most 1,024), and nothing once caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribers_that_deliver_count_toward_the_pace() {
    let s = Arc::new(
        server(DeliveryConfig {
            max_in_flight: 1,
            ..DeliveryConfig::default()
        })
        .await,
    );
    let hanging = Sink::start(Behaviour::Hang).await;
    let token = s.publisher("t", "p").await;
    s.subscriber("t", json!({"url": hanging.url("/")})).await;
    publish_numbered(&s, "t", &token, 2_000).await;
    assert_eq!(s.notifier.backlog(), 0, "a hanging endpoint never counts");

    let slow = Sink::start(Behaviour::Slow(Duration::from_millis(2))).await;
    let token = s.publisher("u", "p").await;
    s.subscriber("u", json!({"url": slow.url("/")})).await;
    publish_numbered(&s, "u", &token, 2_000).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut most = 0;
    while tokio::time::Instant::now() < deadline {
        most = most.max(s.notifier.backlog());
        let lag = s.get("/v1/topics/u").await.json()["subscribers"][0]["lag"]
            .as_u64()
            .unwrap();
        if lag == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most > 0 && most <= 1_024, "{most}");
    // Caught up: the worker stops and counts nothing.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while s.notifier.backlog() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            s.notifier.backlog()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Disabled while messages it had read were not sent yet: they stay
/// before its cursor and go out once it is enabled (none skipped).
#[tokio::test]
async fn a_disable_keeps_what_was_read_and_not_sent() {
    let s = server(DeliveryConfig::default()).await;
    let mut sink = Sink::start(Behaviour::script(&[(410, None)])).await;
    let token = s.publisher("t", "p").await;
    let sub = s
        .subscriber(
            "t",
            json!({"url": sink.url("/"), "ordered": true, "retry": {"max_attempts": 5}}),
        )
        .await;
    let base = format!("/v1/topics/t/subscribers/{}", sub["id"].as_str().unwrap());
    // One append: the worker reads all four in one page, the first is
    // answered 410 (disabled) while the other three wait their turn.
    let r = s
        .call(
            "POST",
            "/v1/topics/t/messages/batch",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            json!({"messages": [
                {"payload": "gone"}, {"payload": "x1"}, {"payload": "x2"}, {"payload": "x3"}
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    s.settle().await;
    assert_eq!(sink.drain_now().len(), 1, "only the first went out");
    let r = s.post_json(&format!("{base}/enable"), json!({})).await;
    assert_eq!(r.status, 200);
    s.settle().await;
    let bodies: Vec<String> = sink
        .drain_now()
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, ["\"x1\"", "\"x2\"", "\"x3\""], "none skipped");
}

/// A subscriber whose circuit five failures opened for a minute (no
/// retries: each failure is a dead letter), then a sixth message waiting
/// on it, and an endpoint that answers from now on.
async fn an_open_circuit() -> (TestServer, Sink, String) {
    let s = server(DeliveryConfig {
        circuit_open_for: Duration::from_secs(60),
        max_in_flight: 1,
        ..DeliveryConfig::default()
    })
    .await;
    let mut sink = Sink::start(Behaviour::script(&[(500, None); 5])).await;
    let token = s.publisher("t", "p").await;
    let sub = s.subscriber("t", json!({"url": sink.url("/")})).await;
    let base = format!("/v1/topics/t/subscribers/{}", sub["id"].as_str().unwrap());
    for _ in 0..5 {
        s.publish("t", &token, "text/plain", "m").await;
    }
    for _ in 0..5 {
        sink.next().await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while s.get("/v1/topics/t").await.json()["subscribers"][0]["circuit"] != "open" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the circuit did not open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.publish("t", &token, "text/plain", "waits").await;
    (s, sink, base)
}

/// `n` requests within two seconds (the circuit would hold them a
/// minute).
async fn within_two_seconds(sink: &mut Sink, n: usize) -> Vec<common::Received> {
    let mut got = Vec::new();
    for i in 0..n {
        let next = tokio::time::timeout(Duration::from_secs(2), sink.next()).await;
        got.push(next.unwrap_or_else(|_| panic!("{i} of {n} within 2 s")));
    }
    got
}

#[tokio::test]
async fn a_redrive_closes_the_circuit_and_sends_at_once() {
    let (s, mut sink, base) = an_open_circuit().await;
    let r = s.post_json(&format!("{base}/redrive"), json!({})).await;
    assert_eq!(r.json(), json!({"redriven": 5}));
    // The five dead letters and the message that waited.
    let got = within_two_seconds(&mut sink, 6).await;
    assert_eq!(got.iter().filter(|r| &r.body[..] == b"waits").count(), 1);
    let detail = s.get("/v1/topics/t").await.json();
    assert_eq!(detail["subscribers"][0]["circuit"], "closed", "{detail}");
}

#[tokio::test]
async fn a_replay_closes_the_circuit_and_sends_at_once() {
    let (s, mut sink, base) = an_open_circuit().await;
    let r = s
        .post_json(&format!("{base}/replay"), json!({"from_offset": 3}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    // Offsets 3, 4 and the one that waited (5).
    let got = within_two_seconds(&mut sink, 3).await;
    assert_eq!(&got[2].body[..], b"waits");
}

#[tokio::test]
async fn enabling_closes_the_circuit_and_sends_at_once() {
    let (s, mut sink, base) = an_open_circuit().await;
    // Disabled as a `410 Gone` or `disable_after` would, then enabled.
    let id = base.rsplit('/').next().unwrap();
    s.broker.set_enabled("t", id, false).await.unwrap();
    let r = s.post_json(&format!("{base}/enable"), json!({})).await;
    assert!(r.status.is_success(), "{:?}", r.json());
    let got = within_two_seconds(&mut sink, 1).await;
    assert_eq!(&got[0].body[..], b"waits");
}
