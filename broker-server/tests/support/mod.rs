//! What the binary tests share: starting the real binary, talking HTTP to
//! it, and stopping it.
#![allow(dead_code)] // Each test file uses its own part.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Starts the binary and returns it with the address it logged, the log
/// lines up to that one, and a channel of its further log lines. Logs at
/// `info`, or at what `TEST_RUST_LOG` says (to debug a test).
pub(crate) fn start(extra: &[&str]) -> (Running, String, Vec<String>, mpsc::Receiver<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_broker-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("BROKER_ADMIN_TOKEN")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut child = Running(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut early = Vec::new();
    loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("the server logs where it listens");
        if let Some(addr) = listening_addr(&line) {
            return (child, addr, early, rx);
        }
        early.push(line);
    }
}

/// The address in the "listening" log line, human or JSON.
pub(crate) fn listening_addr(line: &str) -> Option<String> {
    if let Some(rest) = line.split("addr=").nth(1) {
        return rest.split_whitespace().next().map(str::to_owned);
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    json["fields"]["addr"].as_str().map(str::to_owned)
}

/// The server process; killed and reaped if a test fails half-way.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal HTTP/1.1 exchange; returns the status line and the body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// A string field of a JSON body, e.g. the `token` of a registration.
pub(crate) fn json_field(body: &str, field: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    json[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_owned()
}

pub(crate) fn wait_for_exit(child: &mut Running) -> std::process::ExitStatus {
    let child = &mut child.0;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn sigterm(child: &Running) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// A receiver on 127.0.0.1:0 that answers 200 and hands over each
/// request's headers and body.
pub(crate) fn receiver() -> (String, mpsc::Receiver<(http::HeaderMap, Vec<u8>)>) {
    receiver_on(TcpListener::bind("127.0.0.1:0").unwrap())
}

/// The same, on `listener`.
pub(crate) fn receiver_on(
    listener: TcpListener,
) -> (String, mpsc::Receiver<(http::HeaderMap, Vec<u8>)>) {
    receiver_answering(listener, "200 OK")
}

/// The same, answering with `status` (e.g. "500 Internal Server Error").
pub(crate) fn receiver_answering(
    listener: TcpListener,
    status: &'static str,
) -> (String, mpsc::Receiver<(http::HeaderMap, Vec<u8>)>) {
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            stream.set_read_timeout(Some(PATIENCE)).ok();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let Some((headers, body)) = read_request(&mut reader) else {
                continue;
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if tx.send((headers, body)).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body); `None`
/// when the connection ends first.
pub(crate) fn read_request(
    reader: &mut BufReader<TcpStream>,
) -> Option<(http::HeaderMap, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = http::HeaderMap::new();
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let (name, value) = line.trim_end().split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok()?;
        }
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).ok()?,
            value.parse().ok()?,
        );
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((headers, body))
}

/// A receiver on 127.0.0.1:0 that takes `delay` over each request (many
/// connections at once, keep-alive), answers 200 and hands over each
/// request's headers and body.
pub(crate) fn slow_receiver(
    delay: Duration,
) -> (String, mpsc::Receiver<(http::HeaderMap, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let tx = tx.clone();
            thread::spawn(move || {
                stream.set_read_timeout(Some(PATIENCE)).ok();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                while let Some(request) = read_request(&mut reader) {
                    thread::sleep(delay);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                        || tx.send(request).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// A management call with a JSON body.
pub(crate) fn register(addr: &str, path: &str, body: &str) -> (String, String) {
    http(
        addr,
        "POST",
        path,
        "Content-Type: application/json\r\n",
        body,
    )
}

/// Publishes `body` on topic `t` with a publisher token.
pub(crate) fn publish(addr: &str, token: &str, body: &str) -> (String, String) {
    let auth = format!("Authorization: Bearer {token}\r\n");
    http(addr, "POST", "/v1/topics/t/messages", &auth, body)
}

/// A number field of a JSON body.
pub(crate) fn number(body: &str, field: &str) -> u64 {
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    json[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
}

/// The resident memory of process `pid`, in bytes (0 when unknown).
pub(crate) fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
