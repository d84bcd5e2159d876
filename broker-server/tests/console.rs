//! The console at `/ui`, used as a person uses it: the real binary, a real
//! webhook endpoint that fails until the test heals it, and Debian's
//! Chromium driven by Playwright (`tests/console/console_test.py`).
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`) and a Python
//! with Playwright (`python3 -m venv target/console-venv &&
//! target/console-venv/bin/pip install -r tests/console/requirements.txt`,
//! which `.ci/run` does); `BROKER_CONSOLE_PYTHON` names another Python.
//! Without them the test fails, saying so. Screenshots land in
//! `target/console-screenshots/`.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use support::*;

const ADMIN: &str = "console-admin-token";
const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python that has Playwright, or why there is none.
fn python() -> PathBuf {
    let python = std::env::var_os("BROKER_CONSOLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/console-venv/bin/python"));
    let has_playwright = Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_playwright,
        "{} has no Playwright: run `python3 -m venv target/console-venv && \
         target/console-venv/bin/pip install -r tests/console/requirements.txt` \
         (or set BROKER_CONSOLE_PYTHON)",
        python.display()
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    );
    python
}

/// A webhook endpoint on 127.0.0.1:0: `/hook` answers `500` with the body
/// `database down` until `/heal` is called, then `200`; `/ok` always
/// answers `200`. Each body delivered with a `200` to `/hook` is sent on
/// the channel.
fn endpoint() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let healed = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let (healed, tx) = (healed.clone(), tx.clone());
            thread::spawn(move || serve(stream, &healed, &tx));
        }
    });
    (addr, rx)
}

/// Answers the requests of one connection (keep-alive).
fn serve(stream: TcpStream, healed: &AtomicBool, delivered: &mpsc::Sender<String>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let (status, text) = match path {
            "/heal" => {
                healed.store(true, Ordering::SeqCst);
                ("200 OK", "healed")
            }
            "/hook" if !healed.load(Ordering::SeqCst) => {
                ("500 Internal Server Error", "database down")
            }
            "/hook" => {
                let _ = delivered.send(String::from_utf8_lossy(&body).into_owned());
                ("200 OK", "ok")
            }
            _ => ("200 OK", "ok"),
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn call(addr: &str, method: &str, path: &str, token: &str, body: &str) -> (String, String) {
    let mut headers = format!("Authorization: Bearer {token}\r\n");
    if !body.is_empty() {
        headers.push_str("Content-Type: application/json\r\n");
    }
    http(addr, method, path, &headers, body)
}

fn ok(reply: (String, String)) -> serde_json::Value {
    let (status, body) = reply;
    assert!(status.contains(" 20"), "{status} {body}");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// Waits until `check` holds of the JSON at `path`.
fn await_json(addr: &str, path: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let json = ok(call(addr, "GET", path, ADMIN, ""));
        if check(&json) {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: never so: {json}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_console_shows_an_operator_what_failed_and_redrives_it() {
    let python = python();
    let (_server, addr, _, _) = start(&[
        "--admin-token",
        ADMIN,
        "--circuit-open-for",
        "1s",
        "--loopback-only-destinations",
    ]);
    let (hook, delivered) = endpoint();

    // The operational events topic, so its feed has something to show.
    ok(call(
        &addr,
        "POST",
        "/v1/topics",
        ADMIN,
        r#"{"name":"broker.events"}"#,
    ));
    // A tenant's topic, with a subscriber that fails, and another's.
    let publisher = ok(call(
        &addr,
        "POST",
        "/v1/topics/shop.orders/publishers",
        ADMIN,
        r#"{"name":"checkout"}"#,
    ));
    let publisher = publisher["token"].as_str().unwrap().to_owned();
    let subscriber = ok(call(
        &addr,
        "POST",
        "/v1/topics/shop.orders/subscribers",
        ADMIN,
        &format!(r#"{{"url":"http://{hook}/hook"}}"#),
    ));
    let subscriber = subscriber["id"].as_str().unwrap().to_owned();
    ok(call(
        &addr,
        "POST",
        "/v1/topics/shop.orders/groups",
        ADMIN,
        r#"{"name":"fulfilment"}"#,
    ));
    ok(call(
        &addr,
        "POST",
        "/v1/topics/globex.billing/subscribers",
        ADMIN,
        &format!(r#"{{"url":"http://{hook}/ok"}}"#),
    ));
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/topics/shop.orders/messages",
        &format!("Authorization: Bearer {publisher}\r\nContent-Type: application/json\r\n"),
        r#"{"order":1}"#,
    );
    assert!(status.contains("202"), "{status} {body}");
    let message = json_field(&body, "id");
    let dead = format!("/v1/topics/shop.orders/subscribers/{subscriber}/dead-letters");
    await_json(&addr, &dead, |d| {
        d["dead_letters"].as_array().is_some_and(|l| !l.is_empty())
    });
    let tenant = ok(call(
        &addr,
        "POST",
        "/v1/tokens",
        ADMIN,
        r#"{"scope":"manage:shop.* listen:shop.*","ttl":"10m","subject":"shop"}"#,
    ));
    let tenant = tenant["token"].as_str().unwrap().to_owned();

    let screenshots = workspace().join("target/console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let status = Command::new(python)
        .arg(workspace().join("tests/console/console_test.py"))
        .env("CONSOLE_BASE", format!("http://{addr}"))
        .env("CONSOLE_ADMIN", ADMIN)
        .env("CONSOLE_TENANT", &tenant)
        .env("CONSOLE_PUBLISHER", &publisher)
        .env("CONSOLE_SUBSCRIBER", &subscriber)
        .env("CONSOLE_MESSAGE", &message)
        .env("CONSOLE_HEAL", format!("http://{hook}/heal"))
        .env("CONSOLE_SCREENSHOTS", &screenshots)
        .env("CONSOLE_CHROMIUM", CHROMIUM)
        .status()
        .expect("the browser test runs");
    assert!(status.success(), "the browser test failed: {status}");

    // What the Redrive button did, seen from the endpoint and the API.
    let first = delivered
        .recv_timeout(PATIENCE)
        .expect("the dead letter, redriven, reached the endpoint");
    assert_eq!(first, r#"{"order":1}"#);
    await_json(&addr, &dead, |d| {
        d["dead_letters"].as_array().is_some_and(Vec::is_empty)
    });
}
