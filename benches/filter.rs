//! What a subscriber filter costs per message it considers, in process:
//! `Endpoint::wants` for ten subscribers whose CEL filters match half the
//! messages, against ten without a filter, over the same messages.
//!
//! `cargo bench --bench filter`. Throughput is in elements/s, one element
//! being one message considered by one subscriber.

use std::time::SystemTime;

use broker_core::{Endpoint, EventType, Filter, Limits, Message, TopicName};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::HeaderValue;

const SUBSCRIBERS: usize = 10;

fn messages() -> Vec<Message> {
    (0..100u64)
        .map(|n| {
            let kind = if n % 2 == 0 {
                "invoice.paid"
            } else {
                "invoice.void"
            };
            Message::new(
                format!("msg_{n}"),
                n,
                TopicName::new("bench").unwrap(),
                Some(HeaderValue::from_static("application/json")),
                format!(
                    r#"{{"n":{n},"amount":{},"currency":"EUR","customer":"cu_{n}"}}"#,
                    n * 10
                )
                .into(),
                SystemTime::now(),
            )
            .with_event_type(Some(EventType::new(kind).unwrap()))
        })
        .collect()
}

fn endpoints(filter: Option<(&[&str], Option<&str>)>) -> Vec<Endpoint> {
    let none: [(&str, &str); 0] = [];
    (0..SUBSCRIBERS)
        .map(|i| {
            let e = Endpoint::new(
                &format!("http://127.0.0.1/{i}"),
                None,
                none,
                &Limits::default(),
            )
            .unwrap();
            e.with_filter(filter.map(|(types, expression)| {
                let types =
                    (!types.is_empty()).then(|| types.iter().map(|t| t.to_string()).collect());
                Filter::new(types, expression.map(str::to_owned)).unwrap()
            }))
        })
        .collect()
}

fn filter(c: &mut Criterion) {
    let messages = messages();
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements((messages.len() * SUBSCRIBERS) as u64));
    for (name, filter) in [
        ("none", None),
        ("event_types", Some((&["invoice.paid"][..], None))),
        (
            "cel_event_type",
            Some((&[][..], Some("event_type == 'invoice.paid'"))),
        ),
        ("cel_payload", Some((&[][..], Some("payload.n % 2 == 0")))),
        ("cel_true", Some((&[][..], Some("true")))),
    ] {
        let endpoints = endpoints(filter);
        let wanted = messages.iter().filter(|m| endpoints[0].wants(m)).count();
        assert!(
            wanted == 50 || name == "none" || name == "cel_true",
            "{name}"
        );
        group.bench_with_input(
            BenchmarkId::new("wants", name),
            &endpoints,
            |b, endpoints| {
                b.iter(|| {
                    let mut n = 0;
                    for m in &messages {
                        for e in endpoints {
                            n += usize::from(e.wants(m));
                        }
                    }
                    n
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, filter);
criterion_main!(benches);
