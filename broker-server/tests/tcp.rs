//! The real binary with `--tcp-listen`: a message published over TCP is
//! the same message over HTTP, and both servers end on SIGTERM.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
};

use support::*;

const ADMIN: &str = "adm1n";

/// The next answer line, without its `\r\n`.
fn line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.ends_with("\r\n"), "not a whole line: {line:?}");
    line.truncate(line.len() - 2);
    line
}

#[test]
fn a_message_published_over_tcp_is_seen_over_http_and_fetched() {
    let (mut child, addr, _, logs) = start(&[
        "--tcp-listen",
        "127.0.0.1:0",
        "--admin-token",
        ADMIN,
        "--max-body-bytes",
        "64",
    ]);
    // Logged right after the HTTP line.
    let tcp_addr = loop {
        let log = logs
            .recv_timeout(PATIENCE)
            .expect("the TCP address is logged");
        if log.contains("tcp listening") {
            break listening_addr(&log).expect("an address");
        }
    };
    assert_ne!(tcp_addr, addr);

    let admin = format!("Authorization: Bearer {ADMIN}\r\n");
    let json = format!("Content-Type: application/json\r\n{admin}");
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/topics/t/publishers",
        &json,
        r#"{"name":"p"}"#,
    );
    assert!(status.contains("201"), "{status} {body}");
    let token = json_field(&body, "token");

    let stream = TcpStream::connect(&tcp_addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    write!(writer, "AUTH {token}\r\nPUB t 7\r\nhi\r\nyou\r\n").unwrap();
    assert_eq!(line(&mut reader), "OK");
    assert_eq!(line(&mut reader), "OK 0");

    // Over HTTP: the topic counts it.
    let (status, body) = http(&addr, "GET", "/v1/topics/t", &admin, "");
    assert!(status.contains("200"), "{status} {body}");
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["counters"]["published"], 1, "{body}");

    // Over TCP, with the admin token; the server's --max-body-bytes is the
    // payload limit.
    write!(writer, "AUTH {ADMIN}\r\nFETCH t 0\r\nFETCH t 1\r\n").unwrap();
    assert_eq!(line(&mut reader), "OK");
    assert_eq!(line(&mut reader), "MSG 0 7");
    let mut payload = [0u8; 9];
    reader.read_exact(&mut payload).unwrap();
    assert_eq!(&payload, b"hi\r\nyou\r\n");
    assert_eq!(line(&mut reader), "NONE 1");
    write!(writer, "PUB t 65\r\n").unwrap();
    assert!(line(&mut reader).starts_with("ERR payload_too_large "));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // SIGTERM ends an idle TCP connection with a word, and the process
    // exits 0.
    let stream = TcpStream::connect(&tcp_addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream);
    write!(reader.get_mut(), "AUTH {ADMIN}\r\n").unwrap();
    assert_eq!(line(&mut reader), "OK");
    sigterm(&child);
    assert!(line(&mut reader).starts_with("ERR shutting_down "));
    assert!(wait_for_exit(&mut child).success());
}
