//! Tokens the broker mints (`POST /v1/tokens`): only the admin mints;
//! the scope parses, the lifetime is bounded, and what is minted is a
//! tenant's token that the broker's own verifier takes, until it expires.
//! Also `GET /v1/whoami`, and an open broker (no credential configured)
//! that mints and stays open.

mod common;

use std::{sync::Arc, time::Duration};

use broker_http::ApiConfig;
use broker_jwt::{JwtConfig, JwtMinter, JwtVerifier};
use common::{Reply, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "the-admin-token";

/// A server whose verifier and minter share a fresh key, as the binary's
/// do; `leeway` is the verifier's clock skew.
async fn server(admin_token: Option<&str>, guards: bool, leeway: Duration) -> TestServer {
    let key = broker_jwt::generate_secret();
    let verifier = JwtVerifier::new(JwtConfig {
        secret: Some(key.clone().into_bytes()),
        leeway: Some(leeway),
        ..JwtConfig::default()
    })
    .unwrap();
    let minter = JwtMinter::new(key.as_bytes(), Duration::from_secs(7 * 86_400)).unwrap();
    let api = ApiConfig {
        admin_token: admin_token.map(str::to_owned),
        minter: Some(Arc::new(minter)),
        verifier_guards_management: guards,
        ..ApiConfig::default()
    };
    TestServer::with_verifier(api, verifier).await
}

async fn call(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    s.call(
        method,
        path,
        &headers,
        body.map(|b| b.to_string()).unwrap_or_default(),
    )
    .await
}

async fn mint(s: &TestServer, token: Option<&str>, body: Value) -> Reply {
    call(s, "POST", "/v1/tokens", token, Some(body)).await
}

fn topic_names(r: &Reply) -> Vec<String> {
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn only_the_admin_mints_and_a_minted_tenant_token_manages_its_own_topics() {
    let s = server(Some(ADMIN), true, Duration::from_secs(30)).await;
    for topic in ["acme.orders", "globex.orders"] {
        let r = call(
            &s,
            "POST",
            "/v1/topics",
            Some(ADMIN),
            Some(json!({"name": topic})),
        )
        .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let ask = json!({"scope": "manage:acme.* listen:acme.*", "ttl": "1h", "subject": "acme"});

    // Nobody, a wrong token: 401.
    assert_eq!(
        mint(&s, None, ask.clone()).await.error_code(401),
        "unauthorized"
    );
    assert_eq!(
        mint(&s, Some("wrong"), ask.clone()).await.error_code(401),
        "unauthorized"
    );

    // The admin: 201, a token and when it expires.
    let r = mint(&s, Some(ADMIN), ask.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let minted = r.json();
    let tenant = minted["token"].as_str().unwrap().to_owned();
    assert_eq!(minted["scope"], "manage:acme.* listen:acme.*");
    assert_eq!(minted["subject"], "acme");
    let expires = broker_core::time::parse_rfc3339(minted["expires_at"].as_str().unwrap())
        .expect("an RFC 3339 time");
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((3590..=3600).contains(&left), "expires in {left} s");

    // A tenant's token may not mint: 403.
    let r = mint(&s, Some(&tenant), json!({"scope": "admin"})).await;
    assert_eq!(r.error_code(403), "forbidden");

    // It manages its own topics and sees only them.
    let r = call(&s, "GET", "/v1/topics", Some(&tenant), None).await;
    assert_eq!(topic_names(&r), ["acme.orders"]);
    let r = call(&s, "GET", "/v1/topics", Some(ADMIN), None).await;
    assert_eq!(topic_names(&r), ["acme.orders", "globex.orders"]);
    let sub = json!({"url": "http://127.0.0.1:9/hook"});
    let r = call(
        &s,
        "POST",
        "/v1/topics/acme.orders/subscribers",
        Some(&tenant),
        Some(sub.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call(
        &s,
        "POST",
        "/v1/topics/globex.orders/subscribers",
        Some(&tenant),
        Some(sub),
    )
    .await;
    assert_eq!(r.error_code(403), "forbidden");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("manage:globex.orders"));

    // whoami says which.
    let r = call(&s, "GET", "/v1/whoami", Some(&tenant), None).await;
    assert_eq!(r.json(), json!({"role": "tenant"}));
    let r = call(&s, "GET", "/v1/whoami", Some(ADMIN), None).await;
    assert_eq!(r.json(), json!({"role": "admin"}));
    assert_eq!(
        call(&s, "GET", "/v1/whoami", None, None)
            .await
            .error_code(401),
        "unauthorized"
    );

    // A minted admin token is the admin.
    let r = mint(&s, Some(ADMIN), json!({"scope": "admin", "ttl": 60})).await;
    let admin_jwt = r.json()["token"].as_str().unwrap().to_owned();
    let r = call(&s, "GET", "/v1/topics", Some(&admin_jwt), None).await;
    assert_eq!(topic_names(&r).len(), 2);
}

#[tokio::test]
async fn a_scope_that_does_not_parse_and_a_ttl_out_of_bounds_are_400() {
    let s = server(Some(ADMIN), true, Duration::from_secs(30)).await;
    for (body, code) in [
        (json!({"scope": "openid"}), "invalid_scope"),
        (json!({"scope": ""}), "invalid_scope"),
        (json!({"scope": "manage:a/b"}), "invalid_scope"),
        (json!({"scope": "listen:a*b"}), "invalid_scope"),
        (json!({"scope": "admin", "ttl": "8d"}), "invalid_ttl"),
        (json!({"scope": "admin", "ttl": 0}), "invalid_ttl"),
        (json!({"scope": "admin", "ttl": "soon"}), "invalid_ttl"),
        (json!({"scope": "admin", "ttl": " 1h"}), "invalid_ttl"),
        (json!({"scope": "admin", "ttl": 1.5}), "invalid_json"),
        (
            json!({"scope": "admin", "subject": "two words"}),
            "invalid_subject",
        ),
        (json!({"scope": "admin", "extra": 1}), "invalid_json"),
        (json!({"ttl": "1h"}), "invalid_json"),
    ] {
        let r = mint(&s, Some(ADMIN), body.clone()).await;
        assert_eq!(r.error_code(400), code, "{body}");
    }
    let r = mint(&s, Some(ADMIN), json!({"scope": "admin", "ttl": "8d"})).await;
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("7d") && message.contains("--max-token-ttl"),
        "{message}"
    );
    // The longest allowed is allowed; no ttl is an hour.
    assert_eq!(
        mint(&s, Some(ADMIN), json!({"scope": "admin", "ttl": "7d"}))
            .await
            .status,
        201
    );
    let r = mint(&s, Some(ADMIN), json!({"scope": "listen:x"})).await;
    let expires =
        broker_core::time::parse_rfc3339(r.json()["expires_at"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((3590..=3600).contains(&left), "{left}");
}

#[tokio::test]
async fn a_minted_token_stops_working_when_it_expires() {
    // No leeway, so that the test need not wait 30 s.
    let s = server(Some(ADMIN), true, Duration::ZERO).await;
    let r = call(
        &s,
        "POST",
        "/v1/topics",
        Some(ADMIN),
        Some(json!({"name": "acme.t"})),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = mint(&s, Some(ADMIN), json!({"scope": "manage:acme.*", "ttl": 1})).await;
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let r = call(&s, "GET", "/v1/topics/acme.t", Some(&token), None).await;
    assert_eq!(r.status, 200, "valid at first: {:?}", r.body);
    // `exp` is whole seconds: refused within 2 s, however the second falls.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = call(&s, "GET", "/v1/topics/acme.t", Some(&token), None).await;
        if r.status == 401 {
            let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
            assert!(message.contains("expired"), "{message}");
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still taken after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_open_broker_mints_stays_open_and_a_tenant_token_narrows_the_view() {
    // As the binary with no credential configured: the verifier holds only
    // the minting key and does not close management.
    let s = server(None, false, Duration::from_secs(30)).await;
    for topic in ["acme.a", "other"] {
        let r = call(&s, "POST", "/v1/topics", None, Some(json!({"name": topic}))).await;
        assert_eq!(r.status, 201, "open: {:?}", r.body);
    }
    let r = mint(&s, None, json!({"scope": "manage:acme.*"})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let tenant = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        topic_names(&call(&s, "GET", "/v1/topics", None, None).await).len(),
        2
    );
    let r = call(&s, "GET", "/v1/topics", Some(&tenant), None).await;
    assert_eq!(topic_names(&r), ["acme.a"], "the portal's view");
    let r = call(&s, "GET", "/v1/whoami", Some(&tenant), None).await;
    assert_eq!(r.json(), json!({"role": "tenant"}));
    assert_eq!(
        call(&s, "GET", "/v1/whoami", None, None).await.json(),
        json!({"role": "admin"})
    );
    // A JWT the verifier refuses is refused, even here.
    let forged = format!("{}x", &tenant[..tenant.len() - 1]);
    let r = call(&s, "GET", "/v1/topics", Some(&forged), None).await;
    assert_eq!(r.error_code(401), "unauthorized");
}

#[tokio::test]
async fn without_a_minter_there_is_no_token_call() {
    let s = TestServer::start().await;
    let r = mint(&s, None, json!({"scope": "admin"})).await;
    assert_eq!(r.error_code(404), "minting_disabled");
}
