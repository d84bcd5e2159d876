//! The TCP protocol's harness, shared by the `tcp_session` fuzz target and
//! by broker-tcp's test that replays its corpus
//! (`broker-tcp/tests/fuzz_corpus.rs`). Kept out of `lib.rs`, which the
//! workspace's `tests/fuzz_corpus.rs` compiles into broker-http's tests,
//! where broker-tcp is not a dependency.
//!
//! The input is a whole session: the bytes a client sends, then the end of
//! its stream. `$PUB`, `$LIS`, `$OTHER` and `$ADMIN` in it stand for a
//! publisher token of topic `t`, a listener token of `t`, a publisher
//! token of `other` and the admin token, so seeds get past `AUTH`.

use std::{sync::OnceLock, time::Duration};

use broker_core::{Broker, Limits, MemoryStore, Notifier, Publish, Retention};
use broker_tcp::{serve_connection, TcpConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Takes every publish and does nothing with it.
struct Discard;

#[async_trait::async_trait]
impl Notifier for Discard {
    async fn notify(&self, _: Publish) {}
}

struct World {
    runtime: tokio::runtime::Runtime,
    broker: Broker,
    config: TcpConfig,
    tokens: Vec<(&'static [u8], Vec<u8>)>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let (broker, tokens) = runtime.block_on(async {
            // A small log: fuzzing publishes a lot.
            let store = MemoryStore::new(Retention::default(), 1 << 20);
            let broker = Broker::open(Discard, Limits::default(), store)
                .await
                .expect("opens");
            let token =
                |c: std::sync::Arc<broker_core::Publisher>| c.token().expose().as_bytes().to_vec();
            let publisher = token(broker.register_publisher("t", "fuzz").await.unwrap().item);
            let other = token(
                broker
                    .register_publisher("other", "fuzz")
                    .await
                    .unwrap()
                    .item,
            );
            let listener = token(broker.register_listener("t", "fuzz").await.unwrap().item);
            let tokens = vec![
                (&b"$PUB"[..], publisher),
                (&b"$LIS"[..], listener),
                (&b"$OTHER"[..], other),
                (&b"$ADMIN"[..], b"fuzz-admin".to_vec()),
            ];
            (broker, tokens)
        });
        World {
            runtime,
            broker,
            config: TcpConfig {
                admin_token: Some("fuzz-admin".into()),
                max_payload_bytes: 4096,
                ..TcpConfig::default()
            },
            tokens,
        }
    })
}

/// `data` with the token placeholders replaced.
fn substitute(data: &[u8], tokens: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    'outer: while let Some(&first) = rest.first() {
        if first == b'$' {
            for (name, token) in tokens {
                if let Some(after) = rest.strip_prefix(*name) {
                    out.extend_from_slice(token);
                    rest = after;
                    continue 'outer;
                }
            }
        }
        out.push(first);
        rest = &rest[1..];
    }
    out
}

/// Runs `data` as one session through the connection handler over an
/// in-memory pipe. Panics (a finding) if the handler panics, if the session
/// does not end within 10 s of the input's end, or if any answer is not a
/// well-formed `OK`, `OK <n>`, `NONE <n>`, `MSG <n> <size>` and its payload,
/// or `ERR <code> <message>` with a code the protocol has.
pub fn tcp_session(data: &[u8]) {
    let world = world();
    let input = substitute(data, &world.tokens);
    let output = world.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let session =
            serve_connection(server, &world.broker, &world.config, std::future::pending());
        let send = async move {
            // The server may close first: what it did not read is dropped.
            let _ = to_server.write_all(&input).await;
            let _ = to_server.shutdown().await;
        };
        let receive = async move {
            let mut answers = Vec::new();
            let _ = from_server.read_to_end(&mut answers).await;
            answers
        };
        let whole = async {
            let (_, (), answers) = tokio::join!(session, send, receive);
            answers
        };
        tokio::time::timeout(Duration::from_secs(10), whole)
            .await
            .expect("the session ends once the client's stream does")
    });
    check(&output);
}

const CODES: &[&str] = &[
    "bad_command",
    "payload_too_large",
    "line_too_long",
    "unauthorized",
    "forbidden",
    "invalid_topic",
    "topic_not_found",
];

fn number(word: &str) -> u64 {
    assert!(
        !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()),
        "not a number: {word:?}"
    );
    word.parse().expect("a u64")
}

/// Checks that `answers` is a sequence of well-formed answers.
fn check(mut answers: &[u8]) {
    while !answers.is_empty() {
        let end = answers
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "an answer without \\r\\n: {:?}",
                    String::from_utf8_lossy(answers)
                )
            });
        let line = std::str::from_utf8(&answers[..end]).expect("answer lines are UTF-8");
        answers = &answers[end + 2..];
        assert!(
            !line.bytes().any(|b| b.is_ascii_control()),
            "a control character in {line:?}"
        );
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        match words[..] {
            ["OK"] => {}
            ["OK", n] | ["NONE", n] => {
                number(n);
            }
            ["MSG", offset, size] => {
                number(offset);
                let size = usize::try_from(number(size)).expect("a size");
                assert!(
                    answers.len() >= size + 2 && &answers[size..size + 2] == b"\r\n",
                    "a MSG of {size} bytes not followed by them and \\r\\n"
                );
                answers = &answers[size + 2..];
            }
            ["ERR", code, message] => {
                assert!(CODES.contains(&code), "unexpected code in {line:?}");
                assert!(!message.trim().is_empty(), "no message in {line:?}");
            }
            _ => panic!("a malformed answer: {line:?}"),
        }
    }
}
