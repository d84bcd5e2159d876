//! `--otlp-endpoint` on the real binary: a publish with a `traceparent`
//! is delivered with that trace, and its spans (the publish, the attempt)
//! reach an OTLP/HTTP receiver on 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use support::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn spans_of_a_traced_publish_reach_the_collector() {
    let (collector, exported) = receiver();
    let (_child, addr, _, _logs) = start(&["--otlp-endpoint", &format!("http://{collector}")]);
    let (hook, delivered) = receiver();
    let (_, p) = register(&addr, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let token = json_field(&p, "token");
    let (status, s) = register(
        &addr,
        "/v1/topics/t/subscribers",
        &format!(r#"{{"url":"http://{hook}/"}}"#),
    );
    assert!(status.contains("201"), "{status} {s}");
    let headers = format!("Authorization: Bearer {token}\r\ntraceparent: {PARENT}\r\n");
    let (status, reply) = http(&addr, "POST", "/v1/topics/t/messages", &headers, "m");
    assert!(status.contains("202"), "{status} {reply}");
    let (headers, _) = delivered.recv_timeout(PATIENCE).expect("a delivery");
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );

    // The spans, in one export or more (protobuf: the trace id's bytes
    // and the span names are there as they are).
    let deadline = Instant::now() + PATIENCE;
    let (mut publish, mut deliver) = (false, false);
    while !(publish && deliver) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (headers, body) = exported.recv_timeout(left).expect("an export in time");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert!(contains(&body, &TRACE), "the publisher's trace id");
        publish |= contains(&body, b"publish");
        deliver |= contains(&body, b"deliver");
    }
    // Counted once the collector's answer is back (awaited, bounded).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, metrics) = http(&addr, "GET", "/metrics", "", "");
        if metrics.contains("broker_spans_exported_total 2") {
            assert!(
                metrics.contains("broker_spans_dropped_total 0"),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
