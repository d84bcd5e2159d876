//! The fuzz harnesses, shared by the `cargo fuzz` targets and by the
//! workspace test that replays the corpus (`tests/fuzz_corpus.rs`).
//!
//! Inputs are text, so seeds are readable:
//! - `api_request`: `METHOD PATH`, then `name: value` header lines, a blank
//!   line, and the body. Each request goes to two APIs: one open (no admin
//!   token), and one whose broker takes JWTs signed HS256 with
//!   [`FUZZ_JWT_SECRET`] (which closes management to all but `admin`
//!   JWTs), so the JWT verification path is fuzzed too; seeds carry JWTs
//!   minted with that secret, expiring in 2100;
//! - `endpoint`: the URL, the method, then `name: value` header lines.

use std::sync::OnceLock;

use broker_core::{Broker, Endpoint, Limits, Notifier, Publish};
use broker_http::{Api, ApiConfig, LiveConfig, LiveHub};
use bytes::Bytes;
use http_body_util::Full;

/// Takes every publish and sends nothing: fuzzing must never make network
/// requests, whatever URLs it registers.
struct Discard;

#[async_trait::async_trait]
impl Notifier for Discard {
    async fn notify(&self, _: Publish) {}
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

/// The HS256 secret of the JWT-taking API's broker.
pub const FUZZ_JWT_SECRET: &str = "the fuzzing secret, thirty-two bytes or more";

/// An API over a new broker, with `jwt` its token verifier.
fn new_api(jwt: Option<broker_jwt::JwtVerifier>) -> Api {
    // Live listening on, anonymous, so the event stream's query and
    // `Last-Event-ID` handling is reached (an answered stream is
    // dropped at once, which detaches it).
    let live = LiveHub::new(LiveConfig {
        allow_anonymous: true,
        ..LiveConfig::default()
    });
    let mut broker = Broker::new((Discard, live.clone()));
    if let Some(verifier) = jwt {
        broker = broker.with_token_verifier(verifier);
    }
    // A publisher and a subscriber to hit, so publishes get past auth
    // when the input carries this token.
    let rt = runtime();
    rt.block_on(broker.register_publisher("t", "fuzz"))
        .expect("registers");
    let none: [(&str, &str); 0] = [];
    let endpoint =
        Endpoint::new("http://127.0.0.1:9/", None, none, broker.limits()).expect("valid endpoint");
    rt.block_on(broker.register_subscriber("t", endpoint))
        .expect("registers");
    Api::new(
        broker,
        ApiConfig {
            admin_token: None,
            live: Some(live),
            ..ApiConfig::default()
        },
    )
}

/// The open API, and the one that takes JWTs.
fn apis() -> &'static [Api; 2] {
    static APIS: OnceLock<[Api; 2]> = OnceLock::new();
    APIS.get_or_init(|| {
        let verifier = broker_jwt::JwtVerifier::new(broker_jwt::JwtConfig {
            secret: Some(FUZZ_JWT_SECRET.as_bytes().to_vec()),
            ..broker_jwt::JwtConfig::default()
        })
        .expect("a valid secret");
        [new_api(None), new_api(Some(verifier))]
    })
}

/// Sends one request built from `data` through the whole API, open and
/// taking JWTs. Panics (a finding) if the API panics or answers 5xx,
/// answers an error without the JSON error shape, or echoes a presented
/// token in an error.
pub fn api_request(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(2, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or(b"/");
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(path) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    // Tokens presented in headers, long enough that finding one in an
    // answer is no coincidence, and not also in the path or the body
    // (which errors may quote).
    let elsewhere = format!("{uri} {}", String::from_utf8_lossy(body));
    let tokens: Vec<&str> = ["authorization", "x-api-key"]
        .iter()
        .flat_map(|name| headers.get_all(*name))
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
        .filter(|t| t.len() >= 16 && !elsewhere.contains(t))
        .collect();
    let body = Bytes::copy_from_slice(body);
    for api in apis() {
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(uri.clone());
        if let Some(h) = builder.headers_mut() {
            *h = headers.clone();
        }
        let Ok(request) = builder.body(Full::new(body.clone())) else {
            return;
        };
        let response = runtime().block_on(api.handle(request));
        let status = response.status();
        assert!(
            !status.is_server_error(),
            "{status} for {:?}",
            String::from_utf8_lossy(data)
        );
        if status.is_client_error() {
            let body = runtime()
                .block_on(http_body_util::BodyExt::collect(response.into_body()))
                .expect("a full body")
                .to_bytes();
            let text = String::from_utf8_lossy(&body);
            assert!(
                text.starts_with(r#"{"error":{"code":""#) && text.contains(r#""message":""#),
                "{status} without a JSON error: {text}"
            );
            for token in &tokens {
                assert!(!text.contains(token), "{status} echoes a token: {text}");
            }
        }
    }
}

/// Validates an endpoint built from `data`. Panics (a finding) if
/// validation panics, or if an accepted URL does not come back unchanged
/// when validated again (the canonical form is a fixed point).
pub fn endpoint(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let url = lines.next().unwrap_or_default();
    let method = lines.next().filter(|m| !m.is_empty());
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n, v.trim()))
        .collect();
    let limits = Limits::default();
    if let Ok(endpoint) = Endpoint::new(url, method, headers.clone(), &limits) {
        let canonical = endpoint.url().to_string();
        let again = Endpoint::new(&canonical, method, headers, &limits)
            .unwrap_or_else(|e| panic!("canonical {canonical:?} of {url:?} refused: {e}"));
        assert_eq!(
            again.url().to_string(),
            canonical,
            "not a fixed point: {url:?}"
        );
        assert_eq!(again, endpoint);
    }
    let _ = broker_core::TopicName::new(url);
}
