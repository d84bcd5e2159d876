//! Tokens the real binary mints: signed with a key it keeps in the data
//! dir (so a token outlives a `kill -9`), shares on Redis (so a token
//! minted on one replica is taken by another), or holds in memory (and a
//! broker given no credential stays open).

mod support;

#[path = "../../broker-redis/tests/support/mod.rs"]
mod redis_support;

use redis_support::RedisServer;
use support::*;

const ADMIN: &str = "the-admin-token";

fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (String, String) {
    let mut headers = String::new();
    if let Some(token) = token {
        headers.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        headers.push_str("Content-Type: application/json\r\n");
    }
    http(addr, method, path, &headers, body)
}

fn mint(addr: &str, scope: &str) -> String {
    let (status, body) = call(
        addr,
        "POST",
        "/v1/tokens",
        Some(ADMIN),
        &format!(r#"{{"scope":"{scope}","ttl":"1h","subject":"acme"}}"#),
    );
    assert!(status.contains("201"), "{status} {body}");
    json_field(&body, "token")
}

fn topics(addr: &str, token: Option<&str>) -> Vec<String> {
    let (status, body) = call(addr, "GET", "/v1/topics", token, "");
    assert!(status.contains("200"), "{status} {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn create(addr: &str, topic: &str) {
    let (status, body) = call(
        addr,
        "POST",
        "/v1/topics",
        Some(ADMIN),
        &format!(r#"{{"name":"{topic}"}}"#),
    );
    assert!(status.contains("201"), "{status} {body}");
}

#[test]
fn a_token_minted_before_a_sigkill_is_taken_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data, "--admin-token", ADMIN];
    let (mut first, addr, _, _) = start(&args);
    create(&addr, "acme.orders");
    create(&addr, "globex.orders");
    let tenant = mint(&addr, "manage:acme.* listen:acme.*");
    assert_eq!(topics(&addr, Some(&tenant)), ["acme.orders"]);
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    let key = dir.path().join("token.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is the owner's only");
    }
    let kept = std::fs::read_to_string(&key).unwrap();
    assert_eq!(kept.len(), 64);

    let (_second, addr, _, _) = start(&args);
    assert_eq!(
        topics(&addr, Some(&tenant)),
        ["acme.orders"],
        "the same key"
    );
    let (status, body) = call(&addr, "GET", "/v1/topics/globex.orders", Some(&tenant), "");
    assert!(status.contains("403"), "{status} {body}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), kept);
}

#[test]
fn a_token_minted_on_one_replica_is_taken_by_another() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--admin-token", ADMIN];
    let (_a, a, _, _) = start(&args);
    let (_b, b, _, _) = start(&args);
    create(&a, "acme.orders");
    create(&a, "globex.orders");
    let tenant = mint(&a, "manage:acme.*");
    // The second replica learns of the topics through Redis; the token it
    // takes at once.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let seen = topics(&b, Some(&tenant));
        if seen == ["acme.orders"] {
            break;
        }
        assert!(seen.is_empty(), "{seen:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "b never saw the topic"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, body) = call(
        &b,
        "POST",
        "/v1/topics/acme.orders/subscribers",
        Some(&tenant),
        r#"{"url":"http://127.0.0.1:9/hook"}"#,
    );
    assert!(status.contains("201"), "{status} {body}");
    let (status, _) = call(
        &b,
        "POST",
        "/v1/topics/globex.orders/subscribers",
        Some(&tenant),
        r#"{"url":"http://127.0.0.1:9/hook"}"#,
    );
    assert!(status.contains("403"), "{status}");
    // And the other way round.
    let from_b = mint(&b, "manage:globex.*");
    assert_eq!(topics(&a, Some(&from_b)), ["globex.orders"]);
}

#[test]
fn the_default_broker_stays_open_and_still_mints() {
    let (_server, addr, _, _) = start(&[]);
    let (status, body) = call(&addr, "POST", "/v1/topics", None, r#"{"name":"acme.a"}"#);
    assert!(
        status.contains("201"),
        "management is open: {status} {body}"
    );
    let (status, body) = call(
        &addr,
        "POST",
        "/v1/tokens",
        None,
        r#"{"scope":"manage:acme.* publish:acme.*"}"#,
    );
    assert!(status.contains("201"), "{status} {body}");
    let token = json_field(&body, "token");
    assert_eq!(topics(&addr, Some(&token)), ["acme.a"]);
    // The minted token publishes, as a JWT with publish: scope does.
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/topics/acme.a/messages",
        &format!("Authorization: Bearer {token}\r\nContent-Type: text/plain\r\n"),
        "hello",
    );
    assert!(status.contains("202"), "{status} {body}");
}
