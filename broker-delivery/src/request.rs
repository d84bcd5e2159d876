//! The request of one attempt: the subscriber's URL, method and headers,
//! and the Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`), signed with the current secret and, while a
//! rotation's overlap lasts, the previous one; and `webhook-event-type`
//! when the message has one (not signed: the signature covers id,
//! timestamp and payload, as Standard Webhooks defines it).

use std::time::{SystemTime, UNIX_EPOCH};

use broker_core::{Message, Subscriber};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::Full;

use crate::signature::Signer;

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// The message's event type, when it has one.
pub(crate) static WEBHOOK_EVENT_TYPE: HeaderName = HeaderName::from_static("webhook-event-type");
/// W3C trace context: the attempt's span.
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C trace context: the publisher's vendor state, passed on.
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("webhook-broker/", env!("CARGO_PKG_VERSION")));

/// The signers of a subscriber's current secret and, while its overlap
/// lasts, the one it replaced.
pub(crate) struct Signers {
    pub(crate) version: u64,
    current: Signer,
    previous: Option<(Signer, SystemTime)>,
}

impl Signers {
    pub(crate) fn of(subscriber: &Subscriber) -> Self {
        Signers {
            version: subscriber.secrets_version(),
            current: Signer::new(subscriber.secret().key()),
            previous: subscriber
                .previous_secret()
                .map(|(secret, until)| (Signer::new(secret.key()), until)),
        }
    }
}

/// The subscriber's headers, `Host` and `User-Agent`: every request of
/// its starts from a clone of these.
pub(crate) fn base_headers(endpoint: &broker_core::Endpoint) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(endpoint.headers().len() + 6);
    if let Some(host) = endpoint
        .url()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::USER_AGENT, USER_AGENT);
    headers.extend(
        endpoint
            .headers()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    headers
}

/// The current unix time in seconds as a header value, rebuilt at most
/// once a second per thread.
fn timestamp_header() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static("0"))) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != now {
            *cache = (now, HeaderValue::from(now));
        }
        cache.1.clone()
    })
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request of one attempt: a fresh timestamp and signature each time,
/// the same `webhook-id` always (also after a restart: the id is the
/// log's).
pub(crate) fn build_request(
    base_headers: &HeaderMap,
    signers: &Signers,
    endpoint: &broker_core::Endpoint,
    message: &Message,
    span: Option<&broker_core::TraceContext>,
) -> Result<Request<Full<bytes::Bytes>>, BoxError> {
    let id = HeaderValue::from_str(message.id())?;
    let timestamp = timestamp_header();
    let sign =
        |signer: &Signer| signer.sign_raw(id.as_bytes(), timestamp.as_bytes(), message.payload());
    let current = sign(&signers.current);
    // While a rotated-out secret's overlap lasts, both signatures, space
    // separated, as Standard Webhooks allows: a receiver verifies with
    // either secret.
    let signature = match &signers.previous {
        Some((previous, until)) if *until > SystemTime::now() => {
            let mut both = Vec::with_capacity(2 * current.len() + 1);
            both.extend_from_slice(&current);
            both.push(b' ');
            both.extend_from_slice(&sign(previous));
            HeaderValue::from_bytes(&both)?
        }
        _ => HeaderValue::from_bytes(&current)?,
    };

    let mut request = Request::new(Full::new(message.payload().clone()));
    *request.method_mut() = endpoint.method().clone();
    *request.uri_mut() = endpoint.url().clone();
    let headers = request.headers_mut();
    *headers = base_headers.clone();
    if let Some(content_type) = message.content_type() {
        headers.insert(header::CONTENT_TYPE, content_type.clone());
    }
    headers.insert(WEBHOOK_ID.clone(), id);
    headers.insert(WEBHOOK_TIMESTAMP.clone(), timestamp);
    headers.insert(WEBHOOK_SIGNATURE.clone(), signature);
    if let Some(event_type) = message.event_type() {
        // Checked at publish: a valid header value.
        headers.insert(
            WEBHOOK_EVENT_TYPE.clone(),
            HeaderValue::from_str(event_type.as_str())?,
        );
    }
    if let Some(span) = span {
        // The attempt's span, a child of the publish's (W3C trace
        // context; it replaces any the subscriber's headers set).
        headers.insert(
            TRACEPARENT.clone(),
            HeaderValue::from_str(&span.traceparent())?,
        );
        match span.state.as_deref().map(HeaderValue::from_str) {
            Some(Ok(state)) => {
                headers.insert(TRACESTATE.clone(), state);
            }
            _ => {
                headers.remove(&TRACESTATE);
            }
        }
    }
    Ok(request)
}
