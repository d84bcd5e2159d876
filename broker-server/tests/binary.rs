//! The real binary: starts on 127.0.0.1:0, serves, and exits 0 on SIGTERM.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use support::*;

#[test]
fn serves_and_exits_zero_on_sigterm() {
    let (mut child, addr, _, logs) = start(&[]);
    let (status, body) = http(&addr, "GET", "/healthz", "", "");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("ok"));
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/topics/t/publishers",
        "Content-Type: application/json\r\n",
        r#"{"name":"p"}"#,
    );
    assert!(status.contains("201"), "{status} {body}");

    sigterm(&child);
    assert!(wait_for_exit(&mut child).success());
    let rest: Vec<String> = logs.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("all deliveries drained")),
        "{rest:#?}"
    );
}

#[test]
fn warns_when_management_is_open_and_not_with_a_token() {
    let (mut open, _, open_early, _open_logs) = start(&[]);
    sigterm(&open);
    let exit = wait_for_exit(&mut open);
    assert!(exit.success(), "{exit:?}");
    assert!(
        open_early
            .iter()
            .any(|l| l.contains("WARN") && l.contains("no admin token")),
        "{open_early:#?}"
    );

    let (mut guarded, addr, guarded_early, guarded_logs) = start(&["--admin-token", "s3cret"]);
    assert!(
        guarded_early.iter().all(|l| !l.contains("no admin token")),
        "{guarded_early:#?}"
    );
    let (status, _) = http(&addr, "GET", "/v1/topics", "", "");
    assert!(status.contains("401"), "{status}");
    let (status, _) = http(
        &addr,
        "GET",
        "/v1/topics",
        "Authorization: Bearer s3cret\r\n",
        "",
    );
    assert!(status.contains("200"), "{status}");
    sigterm(&guarded);
    let exit = wait_for_exit(&mut guarded);
    let mut guarded_logs: Vec<String> = guarded_logs.iter().collect();
    assert!(exit.success(), "{exit:?} {guarded_logs:#?}");
    guarded_logs.extend(guarded_early);
    assert!(
        guarded_logs.iter().all(|l| !l.contains("s3cret")),
        "the token is never logged"
    );
}

#[test]
fn a_closed_stderr_does_not_take_the_server_down() {
    let child = Command::new(env!("CARGO_BIN_EXE_broker-server"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a log line").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Close the read end: every later log line hits a broken pipe.
    drop(lines);
    let (status, _) = http(&addr, "GET", "/healthz", "", "");
    assert!(status.contains("200"), "{status}");
    sigterm(&child);
    let exit = wait_for_exit(&mut child);
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn sigterm_with_deliveries_stuck_drains_until_the_deadline_and_exits_zero() {
    // An endpoint that accepts connections and never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hanging.incoming().take(16) {
            held.push(stream);
        }
    });

    let (mut child, addr, _, logs) = start(&["--drain-timeout", "300ms"]);
    let json = "Content-Type: application/json\r\n";
    let (_, body) = http(
        &addr,
        "POST",
        "/v1/topics/t/publishers",
        json,
        r#"{"name":"p"}"#,
    );
    let token = json_field(&body, "token");
    let subscriber = format!(r#"{{"url":"http://{hanging_addr}/"}}"#);
    let (status, _) = http(&addr, "POST", "/v1/topics/t/subscribers", json, &subscriber);
    assert!(status.contains("201"), "{status}");
    let auth = format!("Authorization: Bearer {token}\r\n");
    for _ in 0..3 {
        let (status, _) = http(&addr, "POST", "/v1/topics/t/messages", &auth, "stuck");
        assert!(status.contains("202"), "{status}");
    }

    sigterm(&child);
    let exit = wait_for_exit(&mut child);
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = logs.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("undelivered=3")),
        "the undelivered count is reported: {rest:#?}"
    );
}

#[test]
fn running_out_of_file_descriptors_backs_off_and_recovers() {
    // A low descriptor limit: the server's accepts fail with EMFILE while
    // the clients below hold connections open.
    let child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -n 64 && exec {} --listen 127.0.0.1:0 --header-read-timeout 60s",
                env!("CARGO_BIN_EXE_broker-server")
            ),
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let (tx, logs) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = logs.recv_timeout(PATIENCE).expect("the server starts");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    for stream in &mut held {
        let _ = stream.write_all(b"G");
    }
    let saw_backoff = loop {
        match logs.recv_timeout(PATIENCE) {
            Ok(line) if line.contains("accept failed") => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    assert!(saw_backoff, "the accept error was logged");
    drop(held);
    // Recovered: still running and serving.
    let (status, _) = http(&addr, "GET", "/healthz", "", "");
    assert!(status.contains("200"), "{status}");
    assert!(child.0.try_wait().unwrap().is_none());
    sigterm(&child);
    let exit = wait_for_exit(&mut child);
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn json_logs_never_carry_tokens_or_secrets() {
    let (mut child, addr, early, logs) = start(&[
        "--log-format",
        "json",
        "--admin-token",
        "admin-s3cret-token",
    ]);
    let admin = "Authorization: Bearer admin-s3cret-token\r\n";
    let json = format!("{admin}Content-Type: application/json\r\n");
    let (_, body) = http(
        &addr,
        "POST",
        "/v1/topics/t/publishers",
        &json,
        r#"{"name":"p"}"#,
    );
    let token = json_field(&body, "token");
    // A refused destination is logged (with a warning), its secret is not.
    let (_, body) = http(
        &addr,
        "POST",
        "/v1/topics/t/subscribers",
        &json,
        r#"{"url":"http://169.254.169.254/latest?key=query-credential"}"#,
    );
    let secret = json_field(&body, "secret");
    let auth = format!("Authorization: Bearer {token}\r\n");
    let (status, _) = http(&addr, "POST", "/v1/topics/t/messages", &auth, "payload");
    assert!(status.contains("202"), "{status}");
    // Wait until the refusal is counted, so its log line has been written.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, detail) = http(&addr, "GET", "/v1/topics/t", admin, "");
        if detail.contains("\"refused\":1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery was not refused"
        );
        thread::sleep(Duration::from_millis(20));
    }
    sigterm(&child);
    assert!(wait_for_exit(&mut child).success());

    let mut lines = early;
    lines.extend(logs.iter());
    assert!(
        lines.iter().any(|l| l.contains("destination policy")),
        "{lines:#?}"
    );
    for line in &lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
        for secret in [
            token.as_str(),
            secret.as_str(),
            "admin-s3cret-token",
            "query-credential",
        ] {
            assert!(!line.contains(secret), "a secret was logged: {line}");
        }
    }
}

#[test]
fn health_check_mode_reports_the_server() {
    let (child, addr, _, _logs) = start(&[]);
    let check = |listen: &str| {
        Command::new(env!("CARGO_BIN_EXE_broker-server"))
            .args(["--health-check", "--listen", listen])
            .status()
            .unwrap()
            .success()
    };
    assert!(check(&addr), "healthy server");
    drop(child);
    assert!(!check(&addr), "no server");
}

/// The binary wires live listening: a listener token opens an event
/// stream, a publish arrives on it, and SIGTERM ends the stream, so the
/// shutdown does not wait out its grace and drop the connection.
#[test]
fn live_listening_works_and_ends_on_sigterm() {
    let (mut child, addr, _, logs) = start(&["--replay-messages", "5"]);
    let register = |path: &str| {
        let (status, body) = http(
            &addr,
            "POST",
            path,
            "Content-Type: application/json\r\n",
            r#"{"name":"n"}"#,
        );
        assert!(status.contains("201"), "{status} {body}");
        json_field(&body, "token")
    };
    let publisher = register("/v1/topics/t/publishers");
    let listener = register("/v1/topics/t/listeners");
    let auth = format!("Authorization: Bearer {publisher}\r\n");
    let (status, _) = http(&addr, "POST", "/v1/topics/t/messages", &auth, "retained");
    assert!(status.contains("202"), "{status}");

    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /v1/topics/t/events?last_n=5 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {listener}\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read_until = |seen: &mut Vec<u8>, stream: &mut TcpStream, buf: &mut [u8], what: &str| {
        while !String::from_utf8_lossy(seen).contains(what) {
            let n = stream.read(buf).unwrap();
            assert!(
                n > 0,
                "the stream closed before {what:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until(&mut seen, &mut stream, &mut buf, "data: retained\n");
    let (status, _) = http(&addr, "POST", "/v1/topics/t/messages", &auth, "live");
    assert!(status.contains("202"), "{status}");
    read_until(&mut seen, &mut stream, &mut buf, "data: live\n");

    sigterm(&child);
    // The stream ends (last chunk), and the process exits.
    read_until(&mut seen, &mut stream, &mut buf, "\r\n0\r\n\r\n");
    assert!(wait_for_exit(&mut child).success());
    let rest: Vec<String> = logs.try_iter().collect();
    assert!(
        !rest
            .iter()
            .any(|l| l.contains("still open after the shutdown grace")),
        "{rest:#?}"
    );
}
