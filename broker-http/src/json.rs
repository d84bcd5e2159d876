//! Request bodies in, JSON out: size limits, media types, and the wire
//! shapes of the v1 API.

use std::{collections::BTreeMap, fmt, time::Duration};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use serde::{
    de::{MapAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};

use crate::{ApiError, ResponseBody};

/// A whole body, boxed as every response body is.
pub(crate) fn body_of(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).boxed()
}

/// A response with a JSON body.
pub(crate) fn response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(body_of(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Serialises `value` as the JSON body of a `status` response.
pub(crate) fn reply<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    // Serialising these plain structs cannot fail.
    response(status, serde_json::to_vec(value).unwrap_or_default())
}

/// Reads a whole body of at most `limit` bytes within `timeout`.
///
/// A `Content-Length` over the limit is refused before anything is read; a
/// body without one (or lying about it) is cut off at the limit; a body
/// that stalls is given up on after `timeout`.
pub(crate) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        // A body that came in one piece is a slice of the connection's read
        // buffer: kept as it is (the log keeps messages), it would pin that
        // whole buffer, kilobytes for a 100-byte message. A copy holds just
        // the payload. (A body of several pieces is already one new buffer
        // of its exact size; the copy is then one more memcpy.)
        Ok(Ok(collected)) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Ok(Err(_)) => Err(ApiError::BadBody),
        Err(_) => Err(ApiError::BodyTimeout),
    }
}

/// Whether the request says its body is JSON (`application/json` or any
/// `application/*+json`, parameters allowed).
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match media.as_deref() {
        Some("application/json") => Ok(()),
        Some(m) if m.starts_with("application/") && m.ends_with("+json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// Reads a JSON body of at most `limit` bytes into `T`.
pub(crate) async fn read_json<T, B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<T, ApiError>
where
    T: for<'de> Deserialize<'de>,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    require_json(headers)?;
    let bytes = read_body(headers, body, limit, timeout).await?;
    // Every request body of the API is an object; serde would also take a
    // struct from an array (`[]` for `{}`).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::InvalidJson(serde::de::Error::custom(
            "the body must be a JSON object, not an array",
        )));
    }
    serde_json::from_slice(&bytes).map_err(ApiError::InvalidJson)
}

// ---- requests ------------------------------------------------------------
// Unknown fields are refused: a misspelt field ("header" for "headers")
// fails loudly instead of registering something the caller did not mean.

/// `POST /v1/topics`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicRequest {
    pub(crate) name: String,
}

#[derive(Serialize)]
pub(crate) struct TopicCreated<'a> {
    pub(crate) name: &'a str,
}

/// `POST /v1/topics/{topic}/publishers` and `…/listeners`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialRequest {
    pub(crate) name: String,
}

/// `POST /v1/topics/{topic}/subscribers`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriberRequest {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) method: Option<String>,
    #[serde(default)]
    pub(crate) headers: Option<HeaderList>,
    #[serde(default)]
    pub(crate) retry: Option<RetryRequest>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) ordered: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) filter: Option<FilterRequest>,
}

/// `PATCH /v1/topics/{topic}/subscribers/{id}`: what to change, each
/// with the rules of registration. `headers` replaces them all; `filter:
/// null` removes the filter.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriberPatch {
    #[serde(default, deserialize_with = "present")]
    pub(crate) url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) method: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) headers: Option<HeaderList>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) retry: Option<RetryRequest>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) ordered: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) filter: Option<Option<FilterRequest>>,
}

/// A subscriber as `GET` and `PATCH` on it show it: what the topic
/// detail shows, its topic, the names of its headers (not their values,
/// which may be credentials) and its filter; never its secret.
#[derive(Serialize)]
pub(crate) struct SubscriberDetail<'a> {
    pub(crate) id: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) url: String,
    pub(crate) method: &'a str,
    pub(crate) header_names: Vec<&'a str>,
    pub(crate) retry: RetryShown,
    pub(crate) ordered: bool,
    /// `null` when it takes every message.
    pub(crate) filter: Option<FilterShown<'a>>,
    /// `active` or `disabled`.
    pub(crate) status: &'static str,
    /// `closed`, `open` or `half_open`.
    pub(crate) circuit: broker_core::Circuit,
    pub(crate) offset: u64,
    pub(crate) lag: u64,
    pub(crate) counters: DeliveryCounters,
    pub(crate) stats: StatsShown,
}

/// A subscriber's endpoint stats over three windows.
#[derive(Serialize)]
pub(crate) struct StatsShown {
    pub(crate) last_5m: WindowShown,
    pub(crate) last_1h: WindowShown,
    pub(crate) last_24h: WindowShown,
}

#[derive(Serialize)]
pub(crate) struct WindowShown {
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: Option<u64>,
    pub(crate) p99_ms: Option<u64>,
}

impl From<broker_core::Window> for WindowShown {
    fn from(w: broker_core::Window) -> Self {
        WindowShown {
            succeeded: w.succeeded,
            failed: w.failed,
            p50_ms: w.p50_ms,
            p99_ms: w.p99_ms,
        }
    }
}

impl From<broker_core::StatsWindows> for StatsShown {
    fn from(w: broker_core::StatsWindows) -> Self {
        StatsShown {
            last_5m: w.last_5m.into(),
            last_1h: w.last_1h.into(),
            last_24h: w.last_24h.into(),
        }
    }
}

/// `"filter": {"event_types": [...], "expression": "<CEL>"}`: both
/// optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterRequest {
    #[serde(default, deserialize_with = "present")]
    pub(crate) event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) expression: Option<String>,
}

impl FilterRequest {
    pub(crate) fn compile(&self) -> Result<broker_core::Filter, ApiError> {
        Ok(broker_core::Filter::new(
            self.event_types.clone(),
            self.expression.clone(),
        )?)
    }
}

/// A filter as shown: what was written.
#[derive(Serialize)]
pub(crate) struct FilterShown<'a> {
    pub(crate) event_types: Option<&'a [String]>,
    pub(crate) expression: Option<&'a str>,
}

impl<'a> FilterShown<'a> {
    pub(crate) fn of(filter: Option<&'a broker_core::Filter>) -> Option<Self> {
        filter.map(|f| FilterShown {
            event_types: f.event_types(),
            expression: f.expression(),
        })
    }
}

/// A retry policy: `{"max_attempts": N}` (attempts in all, exponential
/// backoff) or `{"schedule": ["5s", "5m", …]}` (the waits between
/// attempts).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryRequest {
    #[serde(default, deserialize_with = "present")]
    pub(crate) max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) schedule: Option<Vec<String>>,
}

impl RetryRequest {
    pub(crate) fn policy(&self) -> Result<broker_core::Retry, ApiError> {
        let invalid =
            |reason: String| ApiError::Broker(broker_core::Error::InvalidEndpoint { reason });
        match (&self.max_attempts, &self.schedule) {
            (Some(n), None) => Ok(broker_core::Retry::Attempts(*n)),
            (None, Some(waits)) => {
                let waits = waits
                    .iter()
                    .map(|w| {
                        broker_core::parse_duration(w)
                            .map_err(|e| invalid(format!("retry.schedule: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(broker_core::Retry::Schedule(waits.into()))
            }
            _ => Err(invalid(
                "retry takes either max_attempts or schedule".to_owned(),
            )),
        }
    }
}

/// A retry policy as answered: always `max_attempts`, and the schedule
/// when there is one.
#[derive(Serialize)]
pub(crate) struct RetryShown {
    pub(crate) max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) schedule: Option<Vec<String>>,
}

impl From<&broker_core::Retry> for RetryShown {
    fn from(retry: &broker_core::Retry) -> Self {
        RetryShown {
            max_attempts: retry.max_attempts(),
            schedule: match retry {
                broker_core::Retry::Schedule(waits) => Some(
                    waits
                        .iter()
                        .map(|w| broker_core::format_duration(*w))
                        .collect(),
                ),
                broker_core::Retry::Attempts(_) => None,
            },
        }
    }
}

/// A JSON object of header names to string values, kept in order and with
/// repeated keys intact, so that `{"X-A":"1","x-a":"2"}` can be refused
/// rather than silently collapsed.
#[derive(Default)]
pub(crate) struct HeaderList(pub(crate) Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut list = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    list.push(entry);
                }
                Ok(HeaderList(list))
            }
        }
        d.deserialize_map(V)
    }
}

// ---- responses -----------------------------------------------------------

#[derive(Serialize)]
pub(crate) struct CredentialCreated<'a> {
    pub(crate) id: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) name: &'a str,
    pub(crate) token: &'a str,
}

#[derive(Serialize)]
pub(crate) struct SubscriberCreated<'a> {
    pub(crate) id: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) url: String,
    pub(crate) method: &'a str,
    pub(crate) headers: BTreeMap<&'a str, &'a str>,
    pub(crate) retry: RetryShown,
    pub(crate) ordered: bool,
    /// `null` when it takes every message.
    pub(crate) filter: Option<FilterShown<'a>>,
    pub(crate) secret: &'a str,
}

#[derive(Serialize)]
pub(crate) struct Published<'a> {
    pub(crate) id: &'a str,
    pub(crate) offset: u64,
    pub(crate) subscribers: usize,
}

/// `GET /v1/stats`
#[derive(Serialize)]
pub(crate) struct Stats<'a> {
    pub(crate) topics: BTreeMap<&'a str, TopicStats>,
}

#[derive(Serialize)]
pub(crate) struct TopicStats {
    /// Messages published on it since it was created.
    pub(crate) messages: u64,
    pub(crate) subscribers: usize,
}

#[derive(Serialize)]
pub(crate) struct TopicList<'a> {
    pub(crate) topics: Vec<TopicListItem<'a>>,
}

#[derive(Serialize)]
pub(crate) struct TopicListItem<'a> {
    pub(crate) name: &'a str,
    pub(crate) publishers: usize,
    pub(crate) listeners: usize,
    pub(crate) subscribers: usize,
    pub(crate) groups: usize,
    pub(crate) published: u64,
    pub(crate) lag: u64,
    pub(crate) failing: usize,
    pub(crate) disabled: usize,
}

/// `GET /v1/whoami`
#[derive(Serialize)]
pub(crate) struct WhoAmI {
    pub(crate) role: &'static str,
}

/// `POST /v1/tokens`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    pub(crate) scope: String,
    #[serde(default)]
    pub(crate) ttl: Option<Ttl>,
    #[serde(default)]
    pub(crate) subject: Option<String>,
}

/// A lifetime: `"1h"`, `"30d"`, or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Ttl {
    Seconds(u64),
    Text(String),
}

/// `201` of `POST /v1/tokens`
#[derive(Serialize)]
pub(crate) struct Minted<'a> {
    pub(crate) token: &'a str,
    pub(crate) expires_at: String,
    pub(crate) scope: &'a str,
    pub(crate) subject: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct TopicDetail<'a> {
    pub(crate) name: &'a str,
    pub(crate) publishers: Vec<CredentialItem<'a>>,
    pub(crate) listeners: Vec<CredentialItem<'a>>,
    pub(crate) live: Live,
    pub(crate) subscribers: Vec<SubscriberItem<'a>>,
    pub(crate) groups: Vec<GroupItem<'a>>,
    pub(crate) counters: TopicCounters,
}

/// A consumer group in a topic's detail.
#[derive(Serialize)]
pub(crate) struct GroupItem<'a> {
    pub(crate) name: &'a str,
    pub(crate) ack_timeout: String,
    pub(crate) max_deliveries: u32,
    /// Messages leased to its consumers right now.
    pub(crate) leased: usize,
    /// Every offset below is done.
    pub(crate) offset: u64,
    /// Messages from `offset` to the log's end.
    pub(crate) lag: u64,
}

#[derive(Serialize)]
pub(crate) struct CredentialItem<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: &'a str,
}

/// Live connections listening on a topic now.
#[derive(Serialize)]
pub(crate) struct Live {
    pub(crate) connections: usize,
}

#[derive(Serialize)]
pub(crate) struct SubscriberItem<'a> {
    pub(crate) id: &'a str,
    pub(crate) url: String,
    pub(crate) method: String,
    pub(crate) retry: RetryShown,
    pub(crate) ordered: bool,
    /// `active` or `disabled`.
    pub(crate) status: &'static str,
    /// `closed`, `open` or `half_open`.
    pub(crate) circuit: broker_core::Circuit,
    /// The offset of the next message not yet done with.
    pub(crate) offset: u64,
    /// Messages of the log it has not yet done with.
    pub(crate) lag: u64,
    pub(crate) counters: DeliveryCounters,
}

#[derive(Serialize)]
pub(crate) struct TopicCounters {
    pub(crate) published: u64,
    #[serde(flatten)]
    pub(crate) deliveries: DeliveryCounters,
}

#[derive(Serialize)]
pub(crate) struct DeliveryCounters {
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
    pub(crate) dropped: u64,
    pub(crate) refused: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) dead_letters_evicted: u64,
    pub(crate) filtered: u64,
}

impl From<broker_core::DeliveryCounts> for DeliveryCounters {
    fn from(c: broker_core::DeliveryCounts) -> Self {
        DeliveryCounters {
            delivered: c.delivered,
            failed: c.failed,
            dropped: c.dropped,
            refused: c.refused,
            retried: c.retried,
            dead_lettered: c.dead_lettered,
            dead_letters_evicted: c.dead_letters_evicted,
            filtered: c.filtered,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct Ready {
    pub(crate) status: &'static str,
}

#[derive(Serialize)]
pub(crate) struct Health {
    pub(crate) status: &'static str,
    pub(crate) uptime_seconds: u64,
    pub(crate) topics: usize,
    pub(crate) subscribers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replica: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivering: Option<usize>,
}

// ---- messages read back (fetch; the WebSocket events share the rules) ----

/// A message's payload as JSON: the JSON value itself when its content
/// type is JSON (`application/json`, `application/*+json`) and it parses,
/// other UTF-8 as a string, anything else as a base64 string.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Payload<'a> {
    Json(&'a serde_json::value::RawValue),
    Text(&'a str),
    Base64(String),
}

/// `(payload, encoding, content type)` of `message`: `encoding` is `json`,
/// `text` or `base64`.
pub(crate) fn encode_payload(
    message: &broker_core::Message,
) -> (Payload<'_>, &'static str, Option<&str>) {
    use base64::Engine as _;
    let bytes = message.payload();
    let content_type = message.content_type().and_then(|v| v.to_str().ok());
    let is_json = content_type.is_some_and(broker_core::is_json_type);
    let text = std::str::from_utf8(bytes).ok();
    let (payload, encoding) = match text {
        Some(t) if is_json => match serde_json::from_str::<&serde_json::value::RawValue>(t) {
            Ok(raw) => (Payload::Json(raw), "json"),
            Err(_) => (Payload::Text(t), "text"),
        },
        Some(t) => (Payload::Text(t), "text"),
        None => (
            Payload::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
            "base64",
        ),
    };
    (payload, encoding, content_type)
}

/// Milliseconds since the Unix epoch of when the broker accepted it.
pub(crate) fn timestamp_ms(message: &broker_core::Message) -> u64 {
    message
        .published_at()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `GET /v1/topics/{topic}/messages`
#[derive(Serialize)]
pub(crate) struct Fetched<'a> {
    pub(crate) messages: Vec<FetchedMessage<'a>>,
    pub(crate) next_offset: u64,
    pub(crate) first_offset: u64,
}

#[derive(Serialize)]
pub(crate) struct FetchedMessage<'a> {
    pub(crate) offset: u64,
    pub(crate) id: &'a str,
    /// Its event type; `null` when the publisher named none.
    pub(crate) event_type: Option<&'a str>,
    pub(crate) timestamp: u64,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) payload: Payload<'a>,
    pub(crate) encoding: &'static str,
}

impl<'a> FetchedMessage<'a> {
    pub(crate) fn of(message: &'a broker_core::Message) -> Self {
        let (payload, encoding, content_type) = encode_payload(message);
        FetchedMessage {
            offset: message.offset(),
            id: message.id(),
            event_type: message.event_type().map(|t| t.as_str()),
            timestamp: timestamp_ms(message),
            content_type,
            payload,
            encoding,
        }
    }
}

/// `POST /v1/topics/{topic}/messages/batch`: the items are read one by one,
/// so that a bad one is named by its index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest<'a> {
    #[serde(borrow)]
    pub(crate) messages: Vec<&'a serde_json::value::RawValue>,
}

/// One item of a batch: a JSON `payload`, or base64 `data` with an
/// optional `content_type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchItem<'a> {
    #[serde(borrow, default)]
    pub(crate) payload: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    pub(crate) data: Option<String>,
    #[serde(default)]
    pub(crate) content_type: Option<String>,
    /// Its event type (as the `Event-Type` header of a single publish).
    #[serde(default)]
    pub(crate) event_type: Option<String>,
    /// Its idempotency key (as the `Idempotency-Key` header).
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct BatchPublished<'a> {
    pub(crate) messages: Vec<BatchPublishedItem<'a>>,
    pub(crate) subscribers: usize,
}

#[derive(Serialize)]
pub(crate) struct BatchPublishedItem<'a> {
    pub(crate) id: &'a str,
    pub(crate) offset: u64,
    /// Answered from its idempotency key: nothing appended.
    pub(crate) replayed: bool,
}

/// `GET …/dead-letters`
#[derive(Serialize)]
pub(crate) struct DeadLetters {
    pub(crate) dead_letters: Vec<DeadLetterItem>,
}

#[derive(Serialize)]
pub(crate) struct DeadLetterItem {
    pub(crate) message_id: String,
    pub(crate) offset: u64,
    pub(crate) attempts: u32,
    pub(crate) last_status: Option<u16>,
    pub(crate) last_error: String,
    pub(crate) failed_at: String,
}

/// `GET /v1/topics/{topic}/messages/{id}`
#[derive(Serialize)]
pub(crate) struct LookedUp<'a> {
    #[serde(flatten)]
    pub(crate) message: FetchedMessage<'a>,
    pub(crate) deliveries: Vec<DeliveryShown<'a>>,
}

#[derive(Serialize)]
pub(crate) struct DeliveryShown<'a> {
    pub(crate) subscriber_id: &'a str,
    pub(crate) state: &'static str,
    pub(crate) attempts: u32,
    pub(crate) last_status: Option<u16>,
    pub(crate) last_attempt_at: Option<String>,
}

impl<'a> LookedUp<'a> {
    pub(crate) fn of(found: &'a broker_core::Lookup) -> Self {
        LookedUp {
            message: FetchedMessage::of(&found.message),
            deliveries: found
                .deliveries
                .iter()
                .map(|d| DeliveryShown {
                    subscriber_id: &d.subscriber_id,
                    state: d.state.as_str(),
                    attempts: d.attempts,
                    last_status: d.last_status,
                    last_attempt_at: d.last_attempt_at.map(broker_core::time::format_rfc3339),
                })
                .collect(),
        }
    }
}

/// `GET …/subscribers/{id}/attempts`
#[derive(Serialize)]
pub(crate) struct Attempts {
    pub(crate) attempts: Vec<AttemptItem>,
    /// Pass back as `before` for the next page; `null` on the last.
    pub(crate) next: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct AttemptItem {
    pub(crate) id: String,
    pub(crate) message_id: String,
    pub(crate) offset: u64,
    pub(crate) attempt: u32,
    pub(crate) at: String,
    pub(crate) duration_ms: u32,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<String>,
    pub(crate) response: Option<ResponseShown>,
}

/// The start of an endpoint's response body: `text` when it is UTF-8,
/// else `base64`.
#[derive(Serialize)]
pub(crate) struct ResponseShown {
    pub(crate) body: String,
    pub(crate) encoding: &'static str,
}

impl From<broker_core::AttemptRecord> for AttemptItem {
    fn from(r: broker_core::AttemptRecord) -> Self {
        use base64::Engine as _;
        AttemptItem {
            id: r.id(),
            at: broker_core::time::format_rfc3339(r.at()),
            message_id: r.message_id,
            offset: r.offset,
            attempt: r.attempt,
            duration_ms: r.duration_ms,
            status: r.status,
            error: r.error,
            response: r.response.map(|body| match std::str::from_utf8(&body) {
                Ok(text) => ResponseShown {
                    body: text.to_owned(),
                    encoding: "text",
                },
                Err(_) => ResponseShown {
                    body: base64::engine::general_purpose::STANDARD.encode(&body),
                    encoding: "base64",
                },
            }),
        }
    }
}

/// `POST /v1/topics/{topic}/groups`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupRequest {
    pub(crate) name: String,
    #[serde(default, deserialize_with = "present")]
    pub(crate) ack_timeout: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) max_deliveries: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) start: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) filter: Option<FilterRequest>,
}

#[derive(Serialize)]
pub(crate) struct GroupShown<'a> {
    pub(crate) name: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) ack_timeout: String,
    pub(crate) max_deliveries: u32,
    /// `null` when it takes every message.
    pub(crate) filter: Option<FilterShown<'a>>,
}

/// `POST …/groups/{group}/pull`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullRequest {
    #[serde(default, deserialize_with = "present")]
    pub(crate) max: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) wait: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct PulledMessages<'a> {
    pub(crate) messages: Vec<PulledMessage<'a>>,
}

#[derive(Serialize)]
pub(crate) struct PulledMessage<'a> {
    #[serde(flatten)]
    pub(crate) message: FetchedMessage<'a>,
    pub(crate) receipt: &'a str,
    pub(crate) deliveries: u32,
}

/// `POST …/groups/{group}/ack`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckRequest {
    pub(crate) receipts: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct Acked {
    pub(crate) acked: usize,
    pub(crate) stale: usize,
}

/// `POST …/redrive`: `{}` for all, or some message ids.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveRequest {
    #[serde(default, deserialize_with = "present")]
    pub(crate) message_ids: Option<Vec<String>>,
}

#[derive(Serialize)]
pub(crate) struct Redriven {
    pub(crate) redriven: usize,
}

/// `POST …/replay`: from an offset, or from a time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    #[serde(default, deserialize_with = "present")]
    pub(crate) from_offset: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) since: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct Replayed {
    pub(crate) replayed: u64,
    pub(crate) from_offset: u64,
}

/// `POST …/enable`
#[derive(Serialize)]
pub(crate) struct Enabled<'a> {
    pub(crate) id: &'a str,
    pub(crate) status: &'static str,
    pub(crate) offset: u64,
}

/// A subscriber's status as the API names it.
pub(crate) fn status(subscriber: &broker_core::Subscriber) -> &'static str {
    if subscriber.is_enabled() {
        "active"
    } else {
        "disabled"
    }
}

/// `POST …/rotate-secret`
#[derive(Serialize)]
pub(crate) struct Rotated<'a> {
    pub(crate) secret: &'a str,
}

/// An optional field that may be `null`: absent is `None` (through
/// `#[serde(default)]`), `null` is `Some(None)`.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An optional field that, when present, must hold a value: `null` is
/// refused (absent is `None` through `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}
