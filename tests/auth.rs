//! Who may do what: JWT bearer tokens (minted here with `jsonwebtoken`,
//! checked by `broker-jwt`) beside the admin token and registered tokens,
//! on every kind of call, over real sockets; and the `X-API-Key` header.

mod common;

use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use broker_http::{ApiConfig, LiveConfig, LiveHub};
use broker_jwt::{JwtConfig, JwtVerifier};
use bytes::Bytes;
use common::{Reply, TestServer, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const SECRET: &[u8] = b"a test secret of more than thirty-two bytes";
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "broker";
const ADMIN: &str = "the-admin-token";

fn key_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/keys")
        .join(name)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A token with these claims, HS256 with the server's secret.
fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A valid token with this scope.
fn jwt(scope: &str) -> String {
    signed(json!({ "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "scope": scope }))
}

/// A server that takes HS256 tokens of [`SECRET`] for [`ISSUER`] and
/// [`AUDIENCE`], with live listening on.
async fn server(admin_token: Option<&str>) -> TestServer {
    let verifier = JwtVerifier::new(JwtConfig {
        secret: Some(SECRET.to_vec()),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..JwtConfig::default()
    })
    .unwrap();
    let api = ApiConfig {
        admin_token: admin_token.map(str::to_owned),
        live: Some(LiveHub::new(LiveConfig::default())),
        ..ApiConfig::default()
    };
    TestServer::with_verifier(api, verifier).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn call_as(
    s: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Reply {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    s.call(method, path, &headers, body).await
}

async fn publish_as(s: &TestServer, topic: &str, token: &str, body: &'static str) -> Reply {
    s.publish(topic, token, "text/plain", body).await
}

async fn batch_as(s: &TestServer, topic: &str, token: &str) -> Reply {
    let body = json!({ "messages": [{ "payload": 1 }, { "payload": 2 }] });
    call_as(
        s,
        "POST",
        &format!("/v1/topics/{topic}/messages/batch"),
        token,
        Some(body),
    )
    .await
}

/// Asserts a refusal: status, code, and that the body does not hold the
/// token; returns the message.
fn refused(r: &Reply, status: u16, code: &str, token: &str) -> String {
    assert_eq!(r.error_code(status), code);
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains(token), "the token is echoed: {text}");
    r.json()["error"]["message"].as_str().unwrap().to_owned()
}

/// Opens an event stream; its status, and the stream's body when 200.
async fn sse(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<hyper::body::Incoming>, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(format!("http://{}{path}", s.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = timeout(PATIENCE, client.request(req.body(Empty::new()).unwrap()))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = res.status();
    if status == StatusCode::OK {
        (status, Some(res.into_body()), Bytes::new())
    } else {
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, None, body)
    }
}

/// Reads an event stream until `needle` shows up.
async fn sse_sees(body: &mut hyper::body::Incoming, needle: &str) {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let frame = timeout(PATIENCE, body.frame())
            .await
            .expect("an event in time")
            .expect("the stream is open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test]
async fn an_admin_jwt_manages_but_publishes_only_with_a_publish_scope() {
    let s = server(None).await;
    let admin = jwt("openid admin");
    // With a verifier, management is closed even without an admin token.
    let r = s
        .post_json("/v1/topics/t/publishers", json!({ "name": "p" }))
        .await;
    assert_eq!(r.error_code(401), "unauthorized");
    for (method, path, body) in [
        ("POST", "/v1/topics", Some(json!({ "name": "t" }))),
        (
            "POST",
            "/v1/topics/t/publishers",
            Some(json!({ "name": "p" })),
        ),
        (
            "POST",
            "/v1/topics/t/listeners",
            Some(json!({ "name": "l" })),
        ),
        (
            "POST",
            "/v1/topics/t/subscribers",
            Some(json!({ "url": "http://127.0.0.1:9/hook" })),
        ),
        ("POST", "/v1/topics/t/groups", Some(json!({ "name": "g" }))),
        ("GET", "/v1/topics", None),
        ("GET", "/v1/topics/t", None),
        ("GET", "/metrics", None),
    ] {
        let r = call_as(&s, method, path, &admin, body).await;
        assert!(r.status.is_success(), "{method} {path}: {:?}", r.body);
    }
    // Like the admin token, `admin` reads any topic but does not publish.
    let r = call_as(&s, "GET", "/v1/topics/t/messages", &admin, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = publish_as(&s, "t", &admin, "x").await;
    let message = refused(&r, 403, "forbidden", &admin);
    assert!(message.contains("publish:t"), "{message}");
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="publish:t""#
    );
    // Any other scope is not admin: 403, naming what is missing (a
    // topic's `manage:` scope, or `admin` for what only the admin does).
    for scope in ["publish:*", "listen:*", "", "Admin"] {
        let token = jwt(scope);
        let r = call_as(&s, "GET", "/v1/topics/t", &token, None).await;
        let message = refused(&r, 403, "forbidden", &token);
        assert!(message.contains("`manage:t`"), "{message}");
        let r = call_as(&s, "GET", "/metrics", &token, None).await;
        let message = refused(&r, 403, "forbidden", &token);
        assert!(message.contains("`admin`"), "{message}");
        // The topic list shows only what the token may listen to.
        let r = call_as(&s, "GET", "/v1/topics", &token, None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let listed = r.json()["topics"].as_array().unwrap().len();
        assert_eq!(listed, usize::from(scope == "listen:*"), "{scope}");
    }
    // A registered token never manages.
    let publisher = s.broker.register_publisher("t", "q").await.unwrap().item;
    let r = call_as(&s, "GET", "/v1/topics", publisher.token().expose(), None).await;
    refused(&r, 401, "unauthorized", publisher.token().expose());
}

#[tokio::test]
async fn the_admin_token_and_admin_jwts_work_side_by_side() {
    let s = server(Some(ADMIN)).await;
    for token in [ADMIN.to_owned(), jwt("admin")] {
        let r = call_as(&s, "GET", "/v1/topics", &token, None).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = call_as(&s, "GET", "/v1/topics", "not-the-admin-token", None).await;
    refused(&r, 401, "unauthorized", "not-the-admin-token");
    let expired =
        signed(json!({ "iss": ISSUER, "aud": AUDIENCE, "exp": now() - 3600, "scope": "admin" }));
    let r = call_as(&s, "GET", "/v1/topics", &expired, None).await;
    let message = refused(&r, 401, "unauthorized", &expired);
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn publish_scopes_cover_their_topics_single_and_batch() {
    let s = server(None).await;
    for topic in ["orders", "orders.eu", "audit"] {
        s.broker.create_topic(topic).await.unwrap();
    }
    let exact = jwt("publish:orders");
    let prefix = jwt("publish:orders.*");
    for (token, topic, allowed) in [
        (&exact, "orders", true),
        (&exact, "orders.eu", false),
        (&exact, "audit", false),
        (&prefix, "orders.eu", true),
        (&prefix, "orders", false),
    ] {
        let single = publish_as(&s, topic, token, "hello").await;
        let batch = batch_as(&s, topic, token).await;
        if allowed {
            assert_eq!(single.status, StatusCode::ACCEPTED, "{topic}");
            assert_eq!(batch.status, StatusCode::ACCEPTED, "{topic}");
            assert_eq!(batch.json()["messages"].as_array().unwrap().len(), 2);
        } else {
            for r in [&single, &batch] {
                let message = refused(r, 403, "forbidden", token);
                assert!(message.contains(&format!("publish:{topic}")), "{message}");
            }
        }
    }
    // A topic the scope covers but nothing made yet.
    let r = publish_as(&s, "orders.us", &prefix, "x").await;
    refused(&r, 404, "topic_not_found", &prefix);
    // A listen scope never publishes.
    let listen = jwt("listen:*");
    refused(
        &publish_as(&s, "orders", &listen, "x").await,
        403,
        "forbidden",
        &listen,
    );
    // Registered publishers keep working beside JWTs.
    let registered = s.broker.register_publisher("orders", "checkout").await;
    let token = registered.unwrap().item.token().expose().to_owned();
    assert_eq!(
        publish_as(&s, "orders", &token, "x").await.status,
        StatusCode::ACCEPTED
    );
    let (_, end) = s.broker.log_bounds("orders").await.unwrap();
    assert_eq!(
        end, 4,
        "a single and a batch of 2 by JWT, one by the publisher"
    );
}

#[tokio::test]
async fn listen_scopes_fetch_pull_ack_and_listen_live() {
    let s = server(None).await;
    s.broker.create_topic("t").await.unwrap();
    s.broker.create_topic("u").await.unwrap();
    let admin = jwt("admin");
    let r = call_as(
        &s,
        "POST",
        "/v1/topics/t/groups",
        &admin,
        Some(json!({ "name": "g", "start": "earliest" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let publisher = jwt("publish:t");
    assert_eq!(
        publish_as(&s, "t", &publisher, "first").await.status,
        StatusCode::ACCEPTED
    );
    let listener = jwt("listen:t");
    let wildcard = jwt("listen:*");
    let other = jwt("listen:u publish:t");

    // Fetch, by header and by query.
    for token in [&listener, &wildcard] {
        let r = call_as(&s, "GET", "/v1/topics/t/messages", token, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["messages"][0]["payload"], "first");
    }
    let r = s
        .get(&format!("/v1/topics/t/messages?access_token={listener}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call_as(&s, "GET", "/v1/topics/t/messages", &other, None).await;
    let message = refused(&r, 403, "forbidden", &other);
    assert!(message.contains("listen:t"), "{message}");

    // Pull and ack in a consumer group.
    let pull = |token: String| {
        let s = &s;
        async move {
            call_as(
                s,
                "POST",
                "/v1/topics/t/groups/g/pull",
                &token,
                Some(json!({ "max": 10 })),
            )
            .await
        }
    };
    refused(&pull(other.clone()).await, 403, "forbidden", &other);
    let r = pull(listener.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let receipt = r.json()["messages"][0]["receipt"]
        .as_str()
        .unwrap()
        .to_owned();
    let ack = json!({ "receipts": [receipt] });
    let r = call_as(
        &s,
        "POST",
        "/v1/topics/t/groups/g/ack",
        &other,
        Some(ack.clone()),
    )
    .await;
    refused(&r, 403, "forbidden", &other);
    let r = call_as(
        &s,
        "POST",
        "/v1/topics/t/groups/g/ack",
        &listener,
        Some(ack),
    )
    .await;
    assert_eq!(r.json()["acked"], 1);

    // Server-Sent Events: Authorization, X-API-Key, ?access_token=; and
    // `admin`, which listens anywhere.
    let auth = bearer(&listener);
    let mut streams = Vec::new();
    for (path, headers) in [
        (
            "/v1/topics/t/events".to_owned(),
            vec![("x-api-key", admin.as_str())],
        ),
        (
            "/v1/topics/t/events".to_owned(),
            vec![("authorization", auth.as_str())],
        ),
        (
            "/v1/topics/t/events".to_owned(),
            vec![("x-api-key", listener.as_str())],
        ),
        (
            format!("/v1/topics/t/events?access_token={wildcard}"),
            vec![],
        ),
    ] {
        let (status, body, _) = sse(&s, &path, &headers).await;
        assert_eq!(status, StatusCode::OK, "{path} {headers:?}");
        streams.push(body.unwrap());
    }
    let (status, _, body) = sse(&s, "/v1/topics/t/events", &[("x-api-key", &other)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!String::from_utf8_lossy(&body).contains(&other));
    assert_eq!(
        publish_as(&s, "t", &publisher, "second").await.status,
        StatusCode::ACCEPTED
    );
    for stream in &mut streams {
        sse_sees(stream, "second").await;
    }

    // WebSocket: the handshake's token, and each frame's own.
    let mut req = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-api-key", listener.parse().unwrap());
    let (mut ws, _) = timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    let mut frames = Vec::new();
    for frame in [
        json!({ "type": "subscribe", "topic": "t" }),
        json!({ "type": "subscribe", "topic": "u" }),
        json!({ "type": "publish", "topic": "t", "payload": 3, "token": publisher }),
        json!({ "type": "publish", "topic": "u", "payload": 4, "token": publisher }),
    ] {
        ws.send(Message::text(frame.to_string())).await.unwrap();
        loop {
            let msg = timeout(PATIENCE, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(text) = msg {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                if v["type"] != "event" {
                    frames.push(v);
                    break;
                }
            }
        }
    }
    assert_eq!(frames[0]["type"], "ack");
    assert_eq!(frames[1]["type"], "error");
    assert_eq!(frames[1]["code"], "UNAUTHORIZED");
    assert!(
        frames[1]["message"].as_str().unwrap().contains("listen:u"),
        "{}",
        frames[1]
    );
    assert_eq!(frames[2]["type"], "ack");
    assert_eq!(frames[3]["type"], "error");
    assert!(frames[3]["message"].as_str().unwrap().contains("publish:u"));
    assert!(!frames[3].to_string().contains(&publisher));
}

#[tokio::test]
async fn refused_tokens_say_why_and_never_echo_the_token() {
    let s = server(None).await;
    s.broker.create_topic("t").await.unwrap();
    let claims = |extra: Value| {
        let mut c = json!({ "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "scope": "admin publish:t listen:t" });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let rs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(json!({})),
        &EncodingKey::from_rsa_pem(&std::fs::read(key_file("rsa.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"not the secret, though long enough for HS256"),
    )
    .unwrap();
    let cases = [
        (signed(claims(json!({ "exp": now() - 3600 }))), "expired"),
        (
            signed(claims(json!({ "nbf": now() + 3600 }))),
            "not_yet_valid",
        ),
        (other_secret, "bad_signature"),
        (unsigned, "wrong_algorithm"),
        (rs256, "wrong_algorithm"),
        (
            signed(claims(json!({ "iss": "https://elsewhere.test" }))),
            "wrong_issuer",
        ),
        (
            signed(claims(json!({ "aud": "another" }))),
            "wrong_audience",
        ),
        ("e30.e30.e30".to_owned(), "malformed"),
        (signed(claims(json!({ "exp": "soon" }))), "malformed"),
    ];
    let words = |reason: &str| match reason {
        "expired" => "expired",
        "not_yet_valid" => "not yet valid",
        "bad_signature" => "bad signature",
        "wrong_algorithm" => "wrong algorithm",
        "wrong_issuer" => "wrong issuer",
        "wrong_audience" => "wrong audience",
        _ => "malformed",
    };
    for (token, reason) in &cases {
        let description = format!(r#"Bearer error="invalid_token", error_description="{reason}""#);
        for r in [
            publish_as(&s, "t", token, "x").await,
            batch_as(&s, "t", token).await,
            call_as(&s, "GET", "/v1/topics", token, None).await,
            call_as(&s, "GET", "/v1/topics/t/messages", token, None).await,
        ] {
            let message = refused(&r, 401, "unauthorized", token);
            assert!(message.contains(words(reason)), "{reason}: {message}");
            assert_eq!(r.headers["www-authenticate"], description.as_str());
        }
        let (status, _, body) = sse(&s, "/v1/topics/t/events", &[("x-api-key", token)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(words(reason)) && !body.contains(token.as_str()));
    }
    // Nothing got in.
    assert_eq!(s.broker.log_bounds("t").await.unwrap(), (0, 0));
}

#[tokio::test]
async fn an_hs_token_is_not_taken_against_an_rsa_key() {
    let verifier = JwtVerifier::new(JwtConfig {
        public_key: Some(key_file("rsa.pub.pem")),
        ..JwtConfig::default()
    })
    .unwrap();
    let s = TestServer::with_verifier(ApiConfig::default(), verifier).await;
    let claims = json!({ "exp": now() + 600, "scope": "admin" });
    let rs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&std::fs::read(key_file("rsa.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        call_as(&s, "GET", "/v1/topics", &rs256, None).await.status,
        StatusCode::OK
    );
    // The public key, as an HMAC secret.
    let public = std::fs::read(key_file("rsa.pub.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let r = call_as(&s, "GET", "/v1/topics", &confused, None).await;
    let message = refused(&r, 401, "unauthorized", &confused);
    assert!(message.contains("wrong algorithm"), "{message}");
}

#[tokio::test]
async fn x_api_key_carries_any_token_and_must_agree_with_authorization() {
    let s = server(Some(ADMIN)).await;
    let admin = [("x-api-key", ADMIN)];
    let r = s
        .call(
            "POST",
            "/v1/topics/t/publishers",
            &[("x-api-key", ADMIN), ("content-type", "application/json")],
            json!({ "name": "p" }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let publisher = r.json()["token"].as_str().unwrap().to_owned();
    let r = s
        .call(
            "POST",
            "/v1/topics/t/listeners",
            &[("x-api-key", ADMIN), ("content-type", "application/json")],
            json!({ "name": "l" }).to_string(),
        )
        .await;
    let listener = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        s.call("GET", "/v1/topics", &admin, "").await.status,
        StatusCode::OK
    );
    let admin_jwt = jwt("admin");
    assert_eq!(
        s.call("GET", "/v1/topics", &[("x-api-key", &admin_jwt)], "")
            .await
            .status,
        StatusCode::OK
    );

    // Publish: a registered token, and a JWT.
    let publish_jwt = jwt("publish:t");
    for token in [&publisher, &publish_jwt] {
        let r = s
            .call(
                "POST",
                "/v1/topics/t/messages",
                &[("x-api-key", token)],
                "by key",
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    }
    // Live and fetch: a listener token.
    let (status, stream, _) = sse(
        &s,
        "/v1/topics/t/events?last_n=1",
        &[("x-api-key", &listener)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    sse_sees(&mut stream.unwrap(), "by key").await;
    let r = s
        .call(
            "GET",
            "/v1/topics/t/messages",
            &[("x-api-key", &listener)],
            "",
        )
        .await;
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 2);

    // The same token in both is fine; different ones are refused.
    let auth = bearer(&publisher);
    let both = [
        ("authorization", auth.as_str()),
        ("x-api-key", publisher.as_str()),
    ];
    let r = s.call("POST", "/v1/topics/t/messages", &both, "both").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let admin_auth = bearer(ADMIN);
    let differ = [
        ("authorization", admin_auth.as_str()),
        ("x-api-key", publisher.as_str()),
    ];
    for (method, path) in [
        ("POST", "/v1/topics/t/messages"),
        ("GET", "/v1/topics"),
        ("GET", "/v1/topics/t/messages"),
    ] {
        let r = s.call(method, path, &differ, "").await;
        let message = refused(&r, 400, "conflicting_credentials", &publisher);
        assert!(message.contains("X-API-Key"), "{message}");
        assert!(!message.contains(ADMIN));
    }
    let (status, _, body) = sse(&s, "/v1/topics/t/events", &differ).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("conflicting_credentials"));
    // A wrong key is a wrong token.
    let r = s
        .call(
            "POST",
            "/v1/topics/t/messages",
            &[("x-api-key", "nope")],
            "x",
        )
        .await;
    refused(&r, 401, "unauthorized", "nope");
    let r = s
        .call("GET", "/v1/topics", &[("x-api-key", "nope")], "")
        .await;
    refused(&r, 401, "unauthorized", "nope");
}

/// A tenant's `manage:` scope: every management call on its own topics,
/// `403` on anyone else's; the topic list shows only its own; what only
/// the admin does stays the admin's.
#[tokio::test]
async fn a_tenant_manages_its_own_topics_and_no_others() {
    let s = server(Some(ADMIN)).await;
    let tenant = jwt("manage:acme.* listen:acme.*");
    // The admin sets up the same things on a tenant's topic and another's.
    let mut ids = std::collections::HashMap::new();
    for topic in ["acme.orders", "other"] {
        let setup = |path: String, body: Value| {
            let s = &s;
            async move {
                let r = call_as(s, "POST", &path, ADMIN, Some(body)).await;
                assert!(r.status.is_success(), "{path}: {:?}", r.body);
                r.json()
            }
        };
        let p = setup(
            format!("/v1/topics/{topic}/publishers"),
            json!({"name": "p"}),
        )
        .await;
        let l = setup(
            format!("/v1/topics/{topic}/listeners"),
            json!({"name": "l"}),
        )
        .await;
        let sub = setup(
            format!("/v1/topics/{topic}/subscribers"),
            json!({"url": "http://127.0.0.1:9/hook"}),
        )
        .await;
        setup(format!("/v1/topics/{topic}/groups"), json!({"name": "g"})).await;
        ids.insert(
            topic,
            (
                p["id"].as_str().unwrap().to_owned(),
                l["id"].as_str().unwrap().to_owned(),
                sub["id"].as_str().unwrap().to_owned(),
            ),
        );
    }
    let calls = |topic: &str| {
        let (p, l, sub) = &ids[topic];
        vec![
            ("GET", format!("/v1/topics/{topic}"), None),
            (
                "POST",
                format!("/v1/topics/{topic}/publishers"),
                Some(json!({"name": "p2"})),
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/listeners"),
                Some(json!({"name": "l2"})),
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/subscribers"),
                Some(json!({"url": "http://127.0.0.1:9/two"})),
            ),
            ("GET", format!("/v1/topics/{topic}/subscribers/{sub}"), None),
            (
                "PATCH",
                format!("/v1/topics/{topic}/subscribers/{sub}"),
                Some(json!({"ordered": true})),
            ),
            (
                "GET",
                format!("/v1/topics/{topic}/subscribers/{sub}/attempts"),
                None,
            ),
            (
                "GET",
                format!("/v1/topics/{topic}/subscribers/{sub}/dead-letters"),
                None,
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/subscribers/{sub}/redrive"),
                Some(json!({})),
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/subscribers/{sub}/replay"),
                Some(json!({"from_offset": 0})),
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/subscribers/{sub}/enable"),
                Some(json!({})),
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/subscribers/{sub}/rotate-secret"),
                Some(json!({})),
            ),
            (
                "GET",
                format!("/v1/topics/{topic}/groups/g/dead-letters"),
                None,
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/groups/g/redrive"),
                Some(json!({})),
            ),
            (
                "POST",
                format!("/v1/topics/{topic}/groups"),
                Some(json!({"name": "g2"})),
            ),
            ("DELETE", format!("/v1/topics/{topic}/groups/g2"), None),
            ("DELETE", format!("/v1/topics/{topic}/publishers/{p}"), None),
            ("DELETE", format!("/v1/topics/{topic}/listeners/{l}"), None),
            (
                "DELETE",
                format!("/v1/topics/{topic}/subscribers/{sub}"),
                None,
            ),
            ("DELETE", format!("/v1/topics/{topic}"), None),
        ]
    };
    // Another's first: nothing there may change before the check.
    for (method, path, body) in calls("other") {
        let r = call_as(&s, method, &path, &tenant, body).await;
        let message = refused(&r, 403, "forbidden", &tenant);
        assert!(
            message.contains("`manage:other`"),
            "{method} {path}: {message}"
        );
    }
    let listed = call_as(&s, "GET", "/v1/topics", &tenant, None).await.json();
    let names: Vec<_> = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["acme.orders"]);
    for (method, path, body) in calls("acme.orders") {
        let r = call_as(&s, method, &path, &tenant, body).await;
        assert!(r.status.is_success(), "{method} {path}: {:?}", r.body);
    }
    // Creating: its own prefix only. The admin's own calls stay admin's.
    let r = call_as(
        &s,
        "POST",
        "/v1/topics",
        &tenant,
        Some(json!({"name": "acme.new"})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call_as(
        &s,
        "POST",
        "/v1/topics",
        &tenant,
        Some(json!({"name": "rival"})),
    )
    .await;
    assert!(refused(&r, 403, "forbidden", &tenant).contains("`manage:rival`"));
    for path in ["/metrics", "/v1/stats"] {
        let r = call_as(&s, "GET", path, &tenant, None).await;
        assert!(
            refused(&r, 403, "forbidden", &tenant).contains("`admin`"),
            "{path}"
        );
    }
    // The other topic is as the admin left it.
    let other = call_as(&s, "GET", "/v1/topics/other", ADMIN, None).await;
    assert_eq!(other.json()["subscribers"].as_array().unwrap().len(), 1);
}
