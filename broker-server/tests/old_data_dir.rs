//! A data dir written by an older build (before event types: segment
//! format 1) opens with no migration step: its registrations and messages
//! are all there, new messages carry event types, and both read back
//! after a restart. The fixture is `tests/fixtures/data-dir-v1` (see its
//! README), written by the real binary at commit 1e38b07.

mod support;

use std::path::Path;

use support::{http, sigterm, start, wait_for_exit};

const PUBLISHER: &str = "pub_f87402ef89f643f2f87859ef.J_JcQSQjGV8EP-JHvbE4iuZtcpXpGHzu_RyJdXNIV6Q";
const LISTENER: &str = "lis_45ef0f9ece736aceebed7bda.8U8ipG5VcxsGm-E9-ydfa6G2qetTUb9MCCu3I5ht9S4";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `(id, event_type, payload as sent back)` of every message of `orders`.
fn messages(addr: &str) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    let auth = format!("Authorization: Bearer {LISTENER}\r\n");
    let (status, body) = http(
        addr,
        "GET",
        "/v1/topics/orders/messages?offset=0",
        &auth,
        "",
    );
    assert!(status.contains("200"), "{status} {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["event_type"].clone(),
                m["payload"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_data_dir_of_the_previous_format_opens_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-dir-v1"),
        &data,
    );
    std::fs::remove_file(data.join("README.md")).unwrap();
    let data = data.to_str().unwrap().to_owned();

    let old = vec![
        (
            "msg_7e30f88431c2000000000000".to_owned(),
            serde_json::Value::Null,
            serde_json::json!({"n": 1}),
        ),
        (
            "msg_7e30f88431c2000000000001".to_owned(),
            serde_json::Value::Null,
            serde_json::json!({"n": 2}),
        ),
        (
            "msg_7e30f88431c2000000000002".to_owned(),
            serde_json::Value::Null,
            serde_json::json!({"n": 3}),
        ),
        (
            "msg_7e30f88431c2000000000003".to_owned(),
            serde_json::Value::Null,
            serde_json::json!("plain text"),
        ),
    ];
    let (server, addr, _, _) = start(&["--data-dir", &data, "--drain-timeout", "100ms"]);
    assert_eq!(messages(&addr), old);
    // The registrations are there: the subscriber, and the publisher's
    // token publishes, now with an event type.
    let (_, detail) = http(&addr, "GET", "/v1/topics/orders", "", "");
    assert!(detail.contains("sub_aed9228932940a980847860b"), "{detail}");
    let headers = format!(
        "Authorization: Bearer {PUBLISHER}\r\nContent-Type: application/json\r\nEvent-Type: order.created\r\n"
    );
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/topics/orders/messages",
        &headers,
        r#"{"n":4}"#,
    );
    assert!(status.contains("202"), "{status} {body}");
    assert!(body.contains(r#""offset":4"#), "{body}");
    let mut all = old.clone();
    all.push((
        "msg_7e30f88431c2000000000004".to_owned(),
        serde_json::json!("order.created"),
        serde_json::json!({"n": 4}),
    ));
    assert_eq!(messages(&addr), all);
    let mut server = server;
    sigterm(&server);
    assert!(wait_for_exit(&mut server).success());

    // After a restart: the old segment and the new one.
    let (_server, addr, _, _) = start(&["--data-dir", &data, "--drain-timeout", "100ms"]);
    assert_eq!(messages(&addr), all);
}
