//! JWTs on the real binary: a JWKS file rotated on SIGHUP, bad key files
//! refused at start, and an HMAC secret.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
};

use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

fn key_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/keys")
        .join(name)
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(key_file(name)).unwrap()).unwrap()
}

/// A JWKS document with the public half of each (private key file, kid).
fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Jwk> = keys
        .iter()
        .map(|(file, kid)| {
            let mut jwk = Jwk::from_encoding_key(&rsa(file), Algorithm::RS256).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// An RS256 token of `file`'s key, as `kid`, with the `admin` scope.
fn admin_token(file: &str, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = json!({
        "iss": "https://idp.test",
        "exp": jsonwebtoken::get_current_timestamp() + 600,
        "scope": "admin",
    });
    jsonwebtoken::encode(&header, &claims, &rsa(file)).unwrap()
}

fn list_topics(addr: &str, token: &str) -> (String, String) {
    let auth = format!("Authorization: Bearer {token}\r\n");
    http(addr, "GET", "/v1/topics", &auth, "")
}

fn sighup(child: &Running) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Waits for a log line holding `needle`; returns it.
fn log_line(logs: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) -> String {
    loop {
        let line = logs
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no log line with {needle:?} in {seen:#?}"));
        seen.push(line.clone());
        if line.contains(needle) {
            return line;
        }
    }
}

#[test]
fn a_jwks_file_is_rotated_on_sighup_and_a_bad_one_keeps_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[("rsa.pem", "one")])).unwrap();
    let (mut child, addr, early, logs) = start(&[
        "--jwt-jwks",
        path.to_str().unwrap(),
        "--jwt-issuer",
        "https://idp.test",
    ]);
    assert!(
        early
            .iter()
            .any(|l| l.contains("JWT bearer tokens accepted")),
        "{early:#?}"
    );
    assert!(
        early.iter().all(|l| !l.contains("no admin token")),
        "JWTs guard management: {early:#?}"
    );
    let one = admin_token("rsa.pem", "one");
    let two = admin_token("rsa2.pem", "two");
    assert!(list_topics(&addr, &one).0.contains("200"));
    let (status, body) = list_topics(&addr, &two);
    assert!(
        status.contains("401") && body.contains("bad signature"),
        "{status} {body}"
    );
    let (status, _) = http(&addr, "GET", "/v1/topics", "", "");
    assert!(status.contains("401"), "{status}");

    // Rotation: the new key only, read on SIGHUP.
    std::fs::write(&path, jwks(&[("rsa2.pem", "two")])).unwrap();
    let mut seen = Vec::new();
    sighup(&child);
    let line = log_line(&logs, &mut seen, "JWT keys");
    assert!(
        line.contains("reloaded") && line.contains("keys=1"),
        "{line}"
    );
    assert!(list_topics(&addr, &two).0.contains("200"));
    assert!(list_topics(&addr, &one).0.contains("401"));

    // A broken file: said so, and the keys in use stay.
    std::fs::write(&path, "{ this is not JSON").unwrap();
    sighup(&child);
    let line = log_line(&logs, &mut seen, "JWT keys");
    assert!(
        line.contains("ERROR") && line.contains("not reloaded") && line.contains("jwks.json"),
        "{line}"
    );
    assert!(list_topics(&addr, &two).0.contains("200"));

    sigterm(&child);
    let exit = wait_for_exit(&mut child);
    seen.extend(logs.iter());
    assert!(exit.success(), "{exit:?} {seen:#?}");
    assert!(
        seen.iter().chain(&early).all(|l| !l.contains(&two[..40])),
        "no token is logged"
    );
}

/// Runs the binary with `args` and expects it to exit non-zero at once;
/// returns what it logged.
fn refused_at_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_broker-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BROKER_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let exit = wait_for_exit(&mut child);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!exit.success(), "{args:?} started: {log}");
    assert!(!log.contains("listening"), "{log}");
    log
}

#[test]
fn bad_jwt_settings_stop_the_server_at_start_with_a_reason() {
    let log = refused_at_start(&["--jwt-jwks", "/nonexistent/jwks.json"], &[]);
    assert!(log.contains("/nonexistent/jwks.json"), "{log}");
    let log = refused_at_start(
        &["--jwt-public-key", key_file("rsa.pem").to_str().unwrap()],
        &[],
    );
    assert!(log.contains("private key"), "{log}");
    let log = refused_at_start(&[], &[("BROKER_JWT_SECRET", "too-short")]);
    assert!(
        log.contains("at least 32") && !log.contains("too-short"),
        "{log}"
    );
    let log = refused_at_start(&["--jwt-audience", "broker"], &[]);
    assert!(log.contains("need a JWT key"), "{log}");
}

#[test]
fn a_secret_takes_hs256_tokens_by_either_header() {
    let secret = "a secret of at least thirty-two bytes for the binary";
    // By the flag here (`BROKER_JWT_SECRET` is read in the test above).
    let (mut child, addr, _, _logs) = start(&["--jwt-secret", secret, "--admin-token", "adm"]);
    let token = |scope: &str| {
        let claims = json!({ "exp": jsonwebtoken::get_current_timestamp() + 600, "scope": scope });
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let admin = format!(
        "X-API-Key: {}\r\nContent-Type: application/json\r\n",
        token("admin")
    );
    let (status, body) = http(&addr, "POST", "/v1/topics", &admin, r#"{"name":"t"}"#);
    assert!(status.contains("201"), "{status} {body}");
    let (status, body) = publish(&addr, &token("publish:t"), "hello");
    assert!(status.contains("202"), "{status} {body}");
    let key = format!("X-API-Key: {}\r\n", token("listen:t"));
    let (status, body) = http(&addr, "GET", "/v1/topics/t/messages", &key, "");
    assert!(
        status.contains("200") && body.contains("hello"),
        "{status} {body}"
    );
    let (status, body) = publish(&addr, &token("listen:t"), "no");
    assert!(
        status.contains("403") && body.contains("publish:t"),
        "{status} {body}"
    );
    sigterm(&child);
    assert!(wait_for_exit(&mut child).success());
}
