//! The webhook delivery issue's memory test, against the real binary: 20
//! topics, each with one subscriber whose endpoint accepts connections and
//! never answers, and 1,100 publishes of 1 MiB on each (22 GiB in all).
//! Resident memory stays under `--max-memory-bytes` plus a fixed overhead
//! the whole time, and `/healthz` and publishing keep answering.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use support::{http, json_field, resident, start, PATIENCE};

const TOPICS: usize = 20;
const PUBLISHES: usize = 1_100;
const MIB: usize = 1 << 20;
/// The cap the broker runs with (its default).
const CAP: u64 = 512 * MIB as u64;
/// What the process may hold beyond the cap: code, runtime, connection
/// buffers (16 publishing connections, 20 × 8 requests in flight and the
/// allocator's slack.
const OVERHEAD: u64 = 128 * MIB as u64;

/// Accepts connections and never reads nor answers them; keeps them open.
fn hanging_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            match stream {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
    });
    addr
}

/// One keep-alive connection publishing `body` to a topic again and again.
struct Publisher {
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Publisher {
    fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Publisher {
            reader: BufReader::new(stream),
            addr: addr.to_owned(),
        }
    }

    /// Publishes and returns the status code.
    fn publish(&mut self, topic: &str, token: &str, body: &[u8]) -> u16 {
        let head = format!(
            "POST /v1/topics/{topic}/messages HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        if stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .is_err()
        {
            // The server closed the connection: one more try on a new one.
            *self = Publisher::connect(&self.addr);
            let stream = self.reader.get_mut();
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(body).unwrap();
        }
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {status:?}"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut rest = vec![0; length];
        self.reader.read_exact(&mut rest).unwrap();
        code
    }
}

#[test]
fn hanging_subscribers_on_20_topics_keep_memory_under_the_cap() {
    let (child, addr, _, _logs) = start(&[]);
    let pid = child.0.id();
    let mut tokens = Vec::new();
    for t in 0..TOPICS {
        let (status, body) = http(
            &addr,
            "POST",
            &format!("/v1/topics/t{t}/publishers"),
            "Content-Type: application/json\r\n",
            r#"{"name":"p"}"#,
        );
        assert!(status.contains("201"), "{status} {body}");
        tokens.push(json_field(&body, "token"));
        let endpoint = hanging_endpoint();
        let (status, body) = http(
            &addr,
            "POST",
            &format!("/v1/topics/t{t}/subscribers"),
            "Content-Type: application/json\r\n",
            &format!(r#"{{"url":"http://{endpoint}/hook"}}"#),
        );
        assert!(status.contains("201"), "{status} {body}");
    }
    let baseline = resident(pid);

    // Watch resident memory and /healthz while the publishers run.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (done, peak, addr) = (done.clone(), peak.clone(), addr.clone());
        thread::spawn(move || {
            let mut probes = 0;
            while !done.load(Ordering::Acquire) {
                peak.fetch_max(resident(pid), Ordering::AcqRel);
                let (status, _) = http(&addr, "GET", "/healthz", "", "");
                assert!(status.contains("200"), "healthz: {status}");
                probes += 1;
                thread::sleep(Duration::from_millis(50));
            }
            probes
        })
    };

    // Four threads, five topics each, one connection per topic.
    let refused = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (addr, tokens, refused) = (addr.clone(), tokens.clone(), refused.clone());
            thread::spawn(move || {
                let body = vec![b'x'; MIB];
                let mut connections: Vec<_> =
                    (0..TOPICS / 4).map(|_| Publisher::connect(&addr)).collect();
                for _ in 0..PUBLISHES {
                    for (i, connection) in connections.iter_mut().enumerate() {
                        let t = p * (TOPICS / 4) + i;
                        loop {
                            match connection.publish(&format!("t{t}"), &tokens[t], &body) {
                                202 => break,
                                503 => {
                                    // Over the whole broker's budget: told
                                    // so, try again a little later.
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    thread::sleep(Duration::from_millis(20));
                                }
                                other => panic!("publish answered {other}"),
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().expect("a publisher failed");
    }
    done.store(true, Ordering::Release);
    let probes = watcher.join().expect("/healthz stopped answering");
    let peak = peak.load(Ordering::Acquire).max(resident(pid));
    eprintln!(
        "baseline {} MiB, peak {} MiB, {probes} health probes, {} publishes refused for a while",
        baseline >> 20,
        peak >> 20,
        refused.load(Ordering::Relaxed)
    );
    assert!(probes > 0);
    assert!(
        peak < CAP + OVERHEAD,
        "resident memory peaked at {} MiB, over the {} MiB cap plus {} MiB",
        peak >> 20,
        CAP >> 20,
        OVERHEAD >> 20
    );
    // Every topic has all its messages counted as published.
    for t in 0..TOPICS {
        let (_, body) = http(&addr, "GET", &format!("/v1/topics/t{t}"), "", "");
        let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(detail["counters"]["published"], PUBLISHES as u64, "{body}");
    }
    drop(child);
}
