//! The TCP protocol end to end: an in-process broker, `serve` on
//! 127.0.0.1:0, and plain sockets speaking the protocol. Every test is
//! bounded in time (`within`).

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use broker_core::{Broker, Limits, MemoryStore, Publish, Retention};
use broker_tcp::{serve, TcpConfig};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::oneshot,
    task::JoinHandle,
};

const ADMIN: &str = "admin-secret-token";
const LIMIT: usize = 1024;

struct Nobody;

#[async_trait::async_trait]
impl broker_core::Notifier for Nobody {
    async fn notify(&self, _: Publish) {}
}

/// Runs a test body, failing it if it takes more than 20 s.
async fn within<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), body)
        .await
        .expect("the test finishes within 20 s")
}

fn config() -> TcpConfig {
    TcpConfig {
        admin_token: Some(ADMIN.into()),
        max_payload_bytes: LIMIT,
        ..TcpConfig::default()
    }
}

struct Server {
    addr: SocketAddr,
    broker: Broker,
    /// A publisher token of topic `t`.
    publisher: String,
    /// A publisher token of topic `other`.
    other: String,
    /// A listener token of topic `t`.
    listener: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: TcpConfig) -> Self {
        Server::start_with(Broker::new(Nobody), config).await
    }

    async fn start_with(broker: Broker, config: TcpConfig) -> Self {
        let token = |r: std::sync::Arc<broker_core::Publisher>| r.token().expose().to_owned();
        let publisher = token(broker.register_publisher("t", "p").await.unwrap().item);
        let other = token(broker.register_publisher("other", "p").await.unwrap().item);
        let listener = broker
            .register_listener("t", "l")
            .await
            .unwrap()
            .item
            .token()
            .expose()
            .to_owned();
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(socket, broker.clone(), config, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            broker,
            publisher,
            other,
            listener,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Messages published on `t` so far.
    fn published(&self) -> u64 {
        self.broker.topic("t").unwrap().published
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

struct Client {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        Client {
            read: BufReader::new(read),
            write,
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.write.write_all(bytes.as_ref()).await.unwrap();
    }

    /// The next answer line, without its `\r\n`.
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.read.read_until(b'\n', &mut line).await.unwrap();
        assert!(
            line.ends_with(b"\r\n"),
            "not a whole line: {:?}",
            String::from_utf8_lossy(&line)
        );
        line.truncate(line.len() - 2);
        String::from_utf8(line).unwrap()
    }

    /// A `MSG` answer: its offset and payload.
    async fn msg(&mut self) -> (u64, Vec<u8>) {
        let line = self.line().await;
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("MSG"), "{line}");
        let offset = words.next().unwrap().parse().unwrap();
        let size: usize = words.next().unwrap().parse().unwrap();
        let mut payload = vec![0; size + 2];
        self.read.read_exact(&mut payload).await.unwrap();
        assert_eq!(&payload[size..], b"\r\n");
        payload.truncate(size);
        (offset, payload)
    }

    /// Expects an `ERR` with this code.
    async fn err(&mut self, code: &str) -> String {
        let line = self.line().await;
        assert!(
            line.starts_with(&format!("ERR {code} ")),
            "expected ERR {code}, got {line:?}"
        );
        line
    }

    /// Expects the server to close the connection with nothing more said.
    async fn closed(&mut self) {
        let mut rest = Vec::new();
        match self.read.read_to_end(&mut rest).await {
            Ok(_) => assert!(
                rest.is_empty(),
                "more after the end: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
}

#[tokio::test]
async fn pub_and_fetch_round_trip_a_binary_payload_holding_crlf() {
    within(async {
        let server = Server::start(config()).await;
        let mut payload = b"a\r\nPUB t 3\r\nabc\r\n\r\n".to_vec();
        payload.extend(0..=255u8);
        let mut c = server.client().await;
        c.send(format!(
            "AUTH {}\r\nPUB t {}\r\n",
            server.publisher,
            payload.len()
        ))
        .await;
        c.send(&payload).await;
        c.send("\r\n").await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "OK 0");

        c.send(format!(
            "AUTH {}\r\nFETCH t 0\r\nFETCH t 1\r\n",
            server.listener
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.msg().await, (0, payload.clone()));
        assert_eq!(c.line().await, "NONE 1");

        // The admin token may fetch too; verbs in any case.
        c.send(format!("auth {ADMIN}\r\nfetch t 0\r\n")).await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.msg().await, (0, payload.clone()));

        // What the log holds is the payload, verbatim.
        let read = server.broker.read("t", 0, 10, usize::MAX).await.unwrap();
        assert_eq!(read.messages.len(), 1);
        assert_eq!(read.messages[0].payload().as_ref(), &payload[..]);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    within(async {
        let server = Server::start(config()).await;
        let mut c = server.client().await;
        let mut session = format!("AUTH {}\r\n", server.publisher).into_bytes();
        for i in 0..100 {
            session.extend_from_slice(b"PUB t 100\r\n");
            session.extend_from_slice(format!("{i:0>100}\r\n").as_bytes());
        }
        session.extend_from_slice(format!("AUTH {}\r\n", server.listener).as_bytes());
        for i in 0..101 {
            session.extend_from_slice(format!("FETCH t {i}\r\n").as_bytes());
        }
        // All at once, before reading any answer.
        c.send(&session).await;
        assert_eq!(c.line().await, "OK");
        for i in 0..100 {
            assert_eq!(c.line().await, format!("OK {i}"));
        }
        assert_eq!(c.line().await, "OK");
        for i in 0..100 {
            assert_eq!(c.msg().await, (i, format!("{i:0>100}").into_bytes()));
        }
        assert_eq!(c.line().await, "NONE 100");
        assert_eq!(server.published(), 100);

        // Pipelined refusals: one answer each, and the connection goes on.
        let mut session = format!("AUTH {}\r\n", server.publisher).into_bytes();
        for topic in ["other", "other", "other", "t"] {
            session.extend_from_slice(format!("PUB {topic} 1\r\nx\r\n").as_bytes());
        }
        c.send(&session).await;
        assert_eq!(c.line().await, "OK");
        for _ in 0..3 {
            c.err("forbidden").await;
        }
        assert_eq!(c.line().await, "OK 100");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_commands_are_refused_and_the_connection_goes_on() {
    within(async {
        let server = Server::start(config()).await;
        let mut c = server.client().await;
        for bad in [
            "HELLO\r\n",
            "\r\n",
            "AUTH\r\n",
            "AUTH a b\r\n",
            "FETCH t\r\n",
            "FETCH t 0 0\r\n",
            "FETCH t 0 1001\r\n",
            "FETCH t 0 1 2\r\n",
            "FETCH t 0 many\r\n",
            "FETCH t x\r\n",
            "FETCH t -1\r\n",
            "FETCH t 18446744073709551616\r\n",
        ] {
            c.send(bad).await;
            c.err("bad_command").await;
        }
        c.send(format!("AUTH {}\r\nFETCH t 0\r\n", server.listener))
            .await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "NONE 0");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_pub_that_cannot_be_framed_is_answered_then_closed() {
    within(async {
        let server = Server::start(config()).await;
        for (bad, code) in [
            ("PUB t\r\nabc\r\n", "bad_command"),
            ("PUB t x\r\nabc\r\n", "bad_command"),
            ("PUB t 3 e extra\r\nabc\r\n", "bad_command"),
            ("PUB t 1025\r\n", "payload_too_large"),
        ] {
            let mut c = server.client().await;
            c.send(format!("AUTH {}\r\n{bad}", server.publisher)).await;
            assert_eq!(c.line().await, "OK");
            c.err(code).await;
            c.closed().await;
        }
        // A wrong size: the payload is cut there (the \r\n after it is
        // optional) and the rest is read as a command, refused; a bad
        // event type refuses the payload. The connection stays.
        let mut c = server.client().await;
        c.send(format!(
            "AUTH {}\r\nPUB t 3\r\nabcd\r\nPUB t 1 no/type\r\nx\r\nPUB t 1 ok.type\r\ny\r\n",
            server.publisher
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "OK 0");
        c.err("bad_command").await;
        c.err("invalid_event_type").await;
        assert_eq!(c.line().await, "OK 1");
        assert_eq!(server.published(), 2);
        // The limit itself is accepted.
        let mut c = server.client().await;
        c.send(format!("AUTH {}\r\nPUB t {LIMIT}\r\n", server.publisher))
            .await;
        c.send(vec![b'x'; LIMIT]).await;
        c.send("\r\n").await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "OK 2");
        assert_eq!(server.published(), 3);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_line_over_4_kib_is_refused_then_closed() {
    within(async {
        let server = Server::start(config()).await;
        let mut c = server.client().await;
        // No newline at all: refused as soon as 4 KiB and more are in.
        c.send(vec![b'A'; 5000]).await;
        let line = c.err("line_too_long").await;
        assert!(line.contains("4096"), "{line}");
        c.closed().await;

        // A line of exactly 4 KiB is a line (an unknown command).
        let mut c = server.client().await;
        let mut line = vec![b'A'; broker_tcp::MAX_LINE];
        line.extend_from_slice(b"\r\n");
        c.send(&line).await;
        c.err("bad_command").await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_10_mib_size_line_is_refused_without_reading_the_payload() {
    within(async {
        let server = Server::start(TcpConfig {
            max_payload_bytes: 1024 * 1024,
            ..config()
        })
        .await;
        let mut c = server.client().await;
        let started = Instant::now();
        // Only the line: the answer comes without one payload byte sent.
        c.send(format!("AUTH {}\r\nPUB t 10485760\r\n", server.publisher))
            .await;
        assert_eq!(c.line().await, "OK");
        let line = c.err("payload_too_large").await;
        assert!(
            line.contains("10485760") && line.contains("1048576"),
            "{line}"
        );
        c.closed().await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(server.published(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn refusals_carry_the_broker_codes() {
    within(async {
        let server = Server::start(config()).await;
        let mut c = server.client().await;

        // Nothing before AUTH; the refused payload is skipped, not read as
        // commands.
        c.send("PUB t 12\r\nFETCH t 0\r\nX\r\nFETCH t 0\r\n").await;
        c.err("unauthorized").await;
        c.err("unauthorized").await;

        // An unknown token: AUTH refuses it, and the connection stays
        // unauthenticated (the payload is dropped unread).
        c.send("AUTH pub_nobody.secret\r\nPUB t 1\r\nx\r\nFETCH t 0\r\n")
            .await;
        c.err("unauthorized").await;
        c.err("unauthorized").await;
        c.err("unauthorized").await;

        // Another topic's publisher token.
        c.send(format!("AUTH {}\r\nPUB t 1\r\nx\r\n", server.other))
            .await;
        assert_eq!(c.line().await, "OK");
        c.err("forbidden").await;

        // A publisher token does not fetch; a listener token does not
        // publish, nor fetch another topic.
        c.send(format!("AUTH {}\r\nFETCH t 0\r\n", server.publisher))
            .await;
        assert_eq!(c.line().await, "OK");
        c.err("unauthorized").await;
        c.send(format!(
            "AUTH {}\r\nPUB t 1\r\nx\r\nFETCH other 0\r\n",
            server.listener
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        c.err("unauthorized").await;
        c.err("forbidden").await;

        // Invalid topic names, whatever the token.
        c.send(format!(
            "AUTH {}\r\nPUB bad/topic 1\r\nx\r\nFETCH .. 0\r\nPUB {} 1\r\nx\r\n",
            server.publisher,
            "t".repeat(129)
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        c.err("invalid_topic").await;
        c.err("invalid_topic").await;
        c.err("invalid_topic").await;

        // The admin token fetches any topic, so it learns which exist; it
        // does not publish.
        c.send(format!(
            "AUTH {ADMIN}\r\nFETCH nope 0\r\nFETCH t 0\r\nPUB t 1\r\nx\r\n"
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        c.err("topic_not_found").await;
        assert_eq!(c.line().await, "NONE 0");
        c.err("unauthorized").await;

        // A token stops working as soon as it is deregistered.
        c.send(format!("AUTH {}\r\nPUB t 1\r\nx\r\n", server.publisher))
            .await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "OK 0");
        let id = server.broker.topic("t").unwrap().publishers[0]
            .id()
            .to_owned();
        server.broker.deregister_publisher("t", &id).await.unwrap();
        c.send("PUB t 1\r\nx\r\n").await;
        c.err("unauthorized").await;

        // After all that the connection still works.
        c.send(format!("AUTH {}\r\nPUB other 1\r\ny\r\n", server.other))
            .await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "OK 0");

        // A closed broker refuses publishes.
        server.broker.close();
        c.send("PUB other 1\r\ny\r\n").await;
        c.err("shutting_down").await;
        assert_eq!(server.published(), 1);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_truncated_payload_publishes_nothing() {
    within(async {
        let server = Server::start(config()).await;
        let mut c = server.client().await;
        c.send(format!("AUTH {}\r\nPUB t 100\r\nabc", server.publisher))
            .await;
        assert_eq!(c.line().await, "OK");
        c.write.shutdown().await.unwrap();
        c.closed().await;
        assert_eq!(server.published(), 0);
        let read = server.broker.read("t", 0, 10, usize::MAX).await.unwrap();
        assert!(read.messages.is_empty());
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_slowloris_line_is_cut_off_at_its_deadline() {
    within(async {
        let deadline = Duration::from_millis(400);
        let server = Server::start(TcpConfig {
            line_timeout: deadline,
            ..config()
        })
        .await;
        let Client {
            mut read,
            mut write,
        } = server.client().await;
        let started = Instant::now();
        // A byte every 50 ms, for up to 10 s: far longer than the deadline.
        let dribble = tokio::spawn(async move {
            for b in "FETCH t 0".repeat(22).bytes() {
                if write.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // Until the server closes; it may reset the connection, as the
        // client keeps writing after it.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{e}"),
            }
        }
        let took = started.elapsed();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("ERR timeout "), "{answer:?}");
        assert!(
            took >= deadline && took < Duration::from_secs(2),
            "cut off after {took:?}"
        );
        dribble.abort();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    within(async {
        let idle = Duration::from_millis(300);
        let server = Server::start(TcpConfig {
            idle_timeout: idle,
            ..config()
        })
        .await;
        let mut c = server.client().await;
        c.send(format!("AUTH {}\r\n", server.listener)).await;
        assert_eq!(c.line().await, "OK");
        let started = Instant::now();
        c.closed().await;
        assert!(started.elapsed() >= idle - Duration::from_millis(50));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn connections_over_the_cap_are_told_and_closed() {
    within(async {
        let server = Server::start(TcpConfig {
            max_connections: 2,
            ..config()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = server.client().await;
            c.send(format!("AUTH {}\r\n", server.listener)).await;
            assert_eq!(c.line().await, "OK");
            held.push(c);
        }
        let mut over = server.client().await;
        let line = over.err("limit_exceeded").await;
        assert!(line.contains("at most 2"), "{line}");
        over.closed().await;

        // One leaves: a slot frees as soon as the server sees it go.
        held.pop().unwrap().write.shutdown().await.unwrap();
        loop {
            let mut c = server.client().await;
            c.send("FETCH t 0\r\n").await;
            let line = c.line().await;
            if line.starts_with("ERR unauthorized ") {
                break;
            }
            assert!(line.starts_with("ERR limit_exceeded "), "{line}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn fetch_before_retention_shows_the_gap_and_none_at_the_end() {
    within(async {
        // Room for three messages of 10 bytes (each counts 160 more).
        let retention = Retention {
            bytes_per_topic: 3 * (10 + 160),
            ..Retention::default()
        };
        let store = MemoryStore::new(retention, 1 << 20);
        let broker = Broker::open(Nobody, Limits::default(), store)
            .await
            .unwrap();
        let server = Server::start_with(broker, config()).await;
        let mut c = server.client().await;
        c.send(format!("AUTH {}\r\n", server.publisher)).await;
        assert_eq!(c.line().await, "OK");
        for i in 0..10 {
            c.send(format!("PUB t 10\r\nmessage {i:02}\r\n")).await;
            assert_eq!(c.line().await, format!("OK {i}"));
        }
        c.send(format!(
            "AUTH {}\r\nFETCH t 0\r\nFETCH t 9\r\nFETCH t 10\r\nFETCH t 1000\r\n",
            server.listener
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        // Offsets 0-6 are gone: the first retained one comes, with its
        // offset.
        assert_eq!(c.msg().await, (7, b"message 07".to_vec()));
        assert_eq!(c.msg().await, (9, b"message 09".to_vec()));
        assert_eq!(c.line().await, "NONE 10");
        assert_eq!(c.line().await, "NONE 10");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_multi_message_fetch_answers_up_to_max_then_none_where_the_log_ends() {
    within(async {
        let server = Server::start(config()).await;
        let mut c = server.client().await;
        c.send(format!("AUTH {}\r\n", server.publisher)).await;
        assert_eq!(c.line().await, "OK");
        for i in 0..5 {
            c.send(format!("PUB t 4\r\nm{i}\r\n\r\n")).await;
            assert_eq!(c.line().await, format!("OK {i}"));
        }
        // Pipelined: three at most, the rest and the end, past the end,
        // and seed 002's one-message FETCH between them.
        c.send(format!(
            "AUTH {}\r\nFETCH t 0 3\r\nFETCH t 3 1000\r\nFETCH t 1\r\nFETCH t 5 10\r\nFETCH t 2 2\r\n",
            server.listener
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        for i in 0..3 {
            assert_eq!(c.msg().await, (i, format!("m{i}\r\n").into_bytes()));
        }
        // Cut by max: no NONE; the client goes on from offset 3.
        for i in 3..5 {
            assert_eq!(c.msg().await, (i, format!("m{i}\r\n").into_bytes()));
        }
        assert_eq!(c.line().await, "NONE 5", "it ran out: where the log ends");
        assert_eq!(c.msg().await, (1, b"m1\r\n".to_vec()), "one, and no NONE");
        assert_eq!(c.line().await, "NONE 5", "nothing yet");
        for i in 2..4 {
            assert_eq!(c.msg().await, (i, format!("m{i}\r\n").into_bytes()));
        }
        // Max reached exactly at the log's end: NONE says so.
        c.send("FETCH t 3 2\r\nFETCH other 0 5\r\n").await;
        assert_eq!(c.msg().await.0, 3);
        assert_eq!(c.msg().await.0, 4);
        assert_eq!(c.line().await, "NONE 5");
        c.err("forbidden").await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_multi_message_fetch_holds_at_most_a_mebibyte_of_payload() {
    within(async {
        let server = Server::start(TcpConfig {
            max_payload_bytes: 600 * 1024,
            ..config()
        })
        .await;
        let mut c = server.client().await;
        c.send(format!("AUTH {}\r\n", server.publisher)).await;
        assert_eq!(c.line().await, "OK");
        let big = vec![b'x'; 400 * 1024];
        for i in 0..4 {
            c.send(format!("PUB t {}\r\n", big.len())).await;
            c.send(&big).await;
            c.send("\r\n").await;
            assert_eq!(c.line().await, format!("OK {i}"));
        }
        c.send(format!("AUTH {}\r\nFETCH t 0 10\r\n", server.listener))
            .await;
        assert_eq!(c.line().await, "OK");
        // 1 MiB holds two of 400 KiB; the third would pass it. No NONE:
        // there is more.
        assert_eq!(c.msg().await, (0, big.clone()));
        assert_eq!(c.msg().await, (1, big.clone()));
        c.send("FETCH t 2 10\r\n").await;
        assert_eq!(c.msg().await, (2, big.clone()));
        assert_eq!(c.msg().await, (3, big.clone()));
        assert_eq!(c.line().await, "NONE 4");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_answers_what_came_then_closes_every_connection() {
    within(async {
        let server = Server::start(config()).await;
        let mut idle = server.client().await;
        idle.send(format!("AUTH {}\r\n", server.listener)).await;
        assert_eq!(idle.line().await, "OK");
        let mut busy = server.client().await;
        busy.send(format!("AUTH {}\r\nPUB t 1\r\nx\r\n", server.publisher))
            .await;
        assert_eq!(busy.line().await, "OK");
        assert_eq!(busy.line().await, "OK 0");
        // `serve` returns once every connection has ended.
        server.stop().await;
        for c in [&mut idle, &mut busy] {
            c.err("shutting_down").await;
            c.closed().await;
        }
    })
    .await;
}

/// A JWT of `claims`, HS256 with `secret`.
fn jwt(secret: &[u8], claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn jwts_pub_and_fetch_as_their_scope_says() {
    within(async {
        let secret = b"a secret of at least thirty-two bytes, for tests";
        let verifier = broker_jwt::JwtVerifier::new(broker_jwt::JwtConfig {
            secret: Some(secret.to_vec()),
            ..broker_jwt::JwtConfig::default()
        })
        .unwrap();
        let broker = Broker::new(Nobody).with_token_verifier(verifier);
        let server = Server::start_with(broker, config()).await;
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let token = |scope: &str| jwt(secret, serde_json::json!({ "exp": exp, "scope": scope }));
        let publisher = token("publish:t");
        let listener = token("listen:t*");
        let admin = token("admin");
        let mut c = server.client().await;
        c.send(format!(
            "AUTH {publisher}\r\nPUB t 2\r\nhi\r\nPUB other 1\r\nx\r\nFETCH t 0\r\n"
        ))
        .await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "OK 0");
        let refused = c.err("forbidden").await;
        assert!(refused.contains("publish:other"), "{refused}");
        let refused = c.err("forbidden").await;
        assert!(refused.contains("listen:t"), "{refused}");
        for reader in [&listener, &admin] {
            c.send(format!("AUTH {reader}\r\nFETCH t 0\r\nPUB t 1\r\nx\r\n"))
                .await;
            assert_eq!(c.line().await, "OK");
            assert_eq!(c.msg().await, (0, b"hi".to_vec()));
            c.err("forbidden").await;
        }
        // Checked at AUTH: a refused JWT says why, never itself, and the
        // connection stays unauthenticated.
        let expired = jwt(
            secret,
            serde_json::json!({ "exp": exp - 7200, "scope": "publish:t listen:t" }),
        );
        let forged = jwt(
            b"another secret of at least thirty-two bytes!",
            serde_json::json!({ "exp": exp, "scope": "publish:t listen:t" }),
        );
        for (token, why) in [(&expired, "expired"), (&forged, "bad signature")] {
            c.send(format!("AUTH {token}\r\nPUB t 1\r\nx\r\nFETCH t 0\r\n"))
                .await;
            let line = c.err("unauthorized").await;
            assert!(
                line.contains(why) && !line.contains(token.as_str()),
                "{line}"
            );
            for _ in 0..2 {
                let line = c.err("unauthorized").await;
                assert!(!line.contains(token.as_str()), "{line}");
            }
        }
        // Registered tokens keep working beside them.
        c.send(format!("AUTH {}\r\nPUB t 1\r\ny\r\n", server.publisher))
            .await;
        assert_eq!(c.line().await, "OK");
        assert_eq!(c.line().await, "OK 1");
        assert_eq!(server.published(), 2);
        drop(c);
        server.stop().await;
    })
    .await;
}
