//! A client without a valid credential holds nothing (issue 26): made-up
//! tokens get no WebSocket connection and have no publish body read,
//! against the real binary.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use support::{json_field, publish, register, resident, start};

/// Sends `head` on a new connection and reads the response's status
/// line and headers; returns the status line and the open connection.
fn exchange(addr: &str, head: &str) -> (String, TcpStream) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&stream).write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
    }
    (status.trim_end().to_owned(), stream)
}

fn handshake(addr: &str, token: &str) -> (String, TcpStream) {
    exchange(
        addr,
        &format!(
            "GET /v1/ws?access_token={token} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
}

#[test]
fn made_up_tokens_get_no_websocket_and_no_publish_body_read() {
    let (server, addr, _, _logs) = start(&[]);
    let pid = server.0.id();
    let (_, body) = register(&addr, "/v1/topics/t/listeners", r#"{"name":"l"}"#);
    let listener = json_field(&body, "token");
    let (_, body) = register(&addr, "/v1/topics/t/publishers", r#"{"name":"p"}"#);
    let publisher = json_field(&body, "token");
    // A real credential is upgraded and publishes: the refusals below
    // are the tokens', not the routes'.
    assert!(handshake(&addr, &listener).0.contains(" 101 "));
    assert!(publish(&addr, &publisher, "{}").0.contains(" 202 "));

    let before = resident(pid);
    let mut held = Vec::new();
    for n in 0..200 {
        let token = match n % 3 {
            0 => "nope".to_owned(),
            1 => format!("lis_{n:024x}.bm9wZW5vcGVub3Blbm9wZQ"),
            // A real id with the wrong secret.
            _ => {
                let (head, last) = listener.split_at(listener.len() - 1);
                format!("{head}{}", if last == "A" { "B" } else { "A" })
            }
        };
        let (status, stream) = handshake(&addr, &token);
        assert!(
            status.contains(" 401 "),
            "handshake {n} with {token}: {status}"
        );
        held.push(stream);
    }
    // Each promises a 1 MiB body and sends none of it: the answer comes
    // at once, without waiting for the body.
    for n in 0..200 {
        let started = Instant::now();
        let (status, stream) = exchange(
            &addr,
            &format!(
                "POST /v1/topics/t/messages HTTP/1.1\r\nHost: test\r\n\
                 Authorization: Bearer pub_{n:024x}.bm9wZQ\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                1 << 20
            ),
        );
        assert!(status.contains(" 401 "), "publish {n}: {status}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "publish {n} waited for its body"
        );
        held.push(stream);
    }
    // The same with a batch.
    let (status, mut stream) = exchange(
        &addr,
        "POST /v1/topics/t/messages/batch HTTP/1.1\r\nHost: test\r\n\
         Authorization: Bearer pub_x.y\r\nContent-Type: application/json\r\n\
         Content-Length: 1048576\r\n\r\n",
    );
    assert!(status.contains(" 401 "), "batch: {status}");
    // The server does not wait for the body it will never read: it closes.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let grown = resident(pid).saturating_sub(before);
    assert!(grown < 32 << 20, "resident memory grew by {grown} bytes");
    drop(held);
    // Still serving its own.
    assert!(publish(&addr, &publisher, "{}").0.contains(" 202 "));
}
