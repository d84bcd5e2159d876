//! One plain function per API call.

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};
use hyper::body::Body;

use crate::{
    json::{self, reply},
    Api, ApiError, ResponseBody,
};
use broker_core::{Endpoint, Role};

type Reply = Result<Response<ResponseBody>, ApiError>;

fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// `GET /healthz`: alive, for how long, and with how many topics and
/// subscribers; with replicas sharing a store, which replica this is and
/// how many subscribers it delivers.
pub(crate) fn health(api: &Api) -> Response<ResponseBody> {
    let (topics, subscribers) = api.broker().census();
    reply(
        StatusCode::OK,
        &json::Health {
            status: "ok",
            uptime_seconds: api.uptime().as_secs(),
            topics,
            subscribers,
            replica: api.broker().cluster().map(|c| c.replica().to_owned()),
            delivering: api.broker().owned_deliveries(),
        },
    )
}

/// The OpenAPI 3.1 document of the API, `docs/openapi.json` in the repo.
pub(crate) const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `GET /v1/openapi.json`
pub(crate) fn openapi() -> Response<ResponseBody> {
    json::response(StatusCode::OK, OPENAPI.as_bytes().to_vec())
}

/// `GET /metrics`, in the Prometheus text format.
pub(crate) fn metrics(api: &Api) -> Reply {
    let metrics = api.config().metrics.as_ref().ok_or(ApiError::NotFound)?;
    let mut response = Response::new(json::body_of(Bytes::from(metrics.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    Ok(response)
}

/// `GET /readyz`: ready to accept publishes; `503` once the broker is
/// closed for draining, or while its store cannot take writes.
pub(crate) async fn ready(api: &Api) -> Response<ResponseBody> {
    if api.broker().is_closed() {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json::Ready { status: "draining" },
        )
    } else if let Err(e) = api.broker().store_ready().await {
        tracing::warn!(error = %e, "not ready: the store cannot take writes");
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json::Ready {
                status: "store_unavailable",
            },
        )
    } else {
        reply(StatusCode::OK, &json::Ready { status: "ready" })
    }
}

/// A JSON body of the API's own calls: `Content-Type: application/json`,
/// at most `max_json_bytes`, within `body_timeout`.
async fn management_json<T, B>(api: &Api, h: &HeaderMap, body: B) -> Result<T, ApiError>
where
    T: for<'de> serde::Deserialize<'de>,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    json::read_json(
        h,
        body,
        api.config().max_json_bytes,
        api.config().body_timeout,
    )
    .await
}

/// `POST /v1/topics/{topic}/publishers` and `POST
/// /v1/topics/{topic}/listeners`: the same call for either role.
pub(crate) async fn register_credential<B>(
    api: &Api,
    role: Role,
    topic: &str,
    h: &HeaderMap,
    body: B,
) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The path is checked before the body is read.
    broker_core::TopicName::validate(topic)?;
    let req: json::CredentialRequest = management_json(api, h, body).await?;
    let reg = match role {
        Role::Publish => api.broker().register_publisher(topic, &req.name).await?,
        Role::Listen => api.broker().register_listener(topic, &req.name).await?,
    };
    let c = &reg.item;
    Ok(reply(
        created_or_ok(reg.created),
        &json::CredentialCreated {
            id: c.id(),
            topic: c.topic().as_str(),
            name: c.name(),
            token: c.token().expose(),
        },
    ))
}

/// `DELETE /v1/topics/{topic}/listeners/{id}`
pub(crate) async fn deregister_listener(api: &Api, topic: &str, id: &str) -> Reply {
    api.broker().deregister_listener(topic, id).await?;
    Ok(no_content())
}

/// `DELETE /v1/topics/{topic}/publishers/{id}`
pub(crate) async fn deregister_publisher(api: &Api, topic: &str, id: &str) -> Reply {
    api.broker().deregister_publisher(topic, id).await?;
    Ok(no_content())
}

/// `POST /v1/topics/{topic}/subscribers`
pub(crate) async fn register_subscriber<B>(api: &Api, topic: &str, h: &HeaderMap, body: B) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    broker_core::TopicName::validate(topic)?;
    let req: json::SubscriberRequest = management_json(api, h, body).await?;
    let broker = api.broker();
    let mut endpoint = Endpoint::new(
        &req.url,
        req.method.as_deref(),
        req.headers.unwrap_or_default().0,
        broker.limits(),
    )?;
    let retry = match &req.retry {
        Some(retry) => Some(retry.policy()?),
        None => api.config().default_retry.clone(),
    };
    if let Some(retry) = retry {
        endpoint = endpoint.with_retry(retry, broker.limits())?;
    }
    endpoint = endpoint.with_ordered(req.ordered.unwrap_or(false));
    if let Some(filter) = req.filter {
        endpoint = endpoint.with_filter(Some(filter.compile()?));
    }
    let reg = broker.register_subscriber(topic, endpoint).await?;
    let s = &reg.item;
    let e = s.endpoint();
    Ok(reply(
        created_or_ok(reg.created),
        &json::SubscriberCreated {
            id: s.id(),
            topic: s.topic().as_str(),
            url: e.url().to_string(),
            method: e.method().as_str(),
            headers: e
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or_default()))
                .collect(),
            retry: e.retry().into(),
            ordered: e.ordered(),
            filter: json::FilterShown::of(e.filter()),
            secret: s.secret().expose(),
        },
    ))
}

/// `GET /v1/topics/{topic}/subscribers/{id}`: never its secret.
pub(crate) async fn subscriber_detail(api: &Api, topic: &str, id: &str) -> Reply {
    let subscriber = api.broker().subscriber(topic, id)?;
    show_subscriber(api, &subscriber).await
}

/// `200` with [`json::SubscriberDetail`].
async fn show_subscriber(api: &Api, s: &broker_core::Subscriber) -> Reply {
    let (_, end) = api.broker().log_bounds(s.topic().as_str()).await?;
    let e = s.endpoint();
    Ok(reply(
        StatusCode::OK,
        &json::SubscriberDetail {
            id: s.id(),
            topic: s.topic().as_str(),
            url: e.url().to_string(),
            method: e.method().as_str(),
            header_names: e.headers().keys().map(|k| k.as_str()).collect(),
            retry: e.retry().into(),
            ordered: e.ordered(),
            filter: json::FilterShown::of(e.filter()),
            status: json::status(s),
            circuit: api.broker().circuit(s),
            offset: s.cursor(),
            lag: end.saturating_sub(s.cursor()),
            counters: s.stats().snapshot().into(),
            stats: s.endpoint_stats().into(),
        },
    ))
}

/// `PATCH /v1/topics/{topic}/subscribers/{id}`: any of `url`, `method`,
/// `headers`, `retry`, `ordered`, `filter`, checked as at registration;
/// the rest as it was. Keeps the id, secret, cursor, dead letters and
/// counters.
pub(crate) async fn update_subscriber<B>(
    api: &Api,
    topic: &str,
    id: &str,
    h: &HeaderMap,
    body: B,
) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    broker_core::TopicName::validate(topic)?;
    let patch: json::SubscriberPatch = management_json(api, h, body).await?;
    let broker = api.broker();
    let subscriber = broker.subscriber(topic, id)?;
    let now = subscriber.endpoint();
    let url = patch.url.unwrap_or_else(|| now.url().to_string());
    let method = patch.method.unwrap_or_else(|| now.method().to_string());
    let headers = match patch.headers {
        Some(headers) => headers.0,
        None => now.header_pairs(),
    };
    let retry = match &patch.retry {
        Some(retry) => retry.policy()?,
        None => now.retry().clone(),
    };
    let filter = match patch.filter {
        Some(Some(filter)) => Some(filter.compile()?),
        Some(None) => None,
        None => now.filter().cloned(),
    };
    let endpoint = Endpoint::new(&url, Some(&method), headers, broker.limits())?
        .with_retry(retry, broker.limits())?
        .with_ordered(patch.ordered.unwrap_or(now.ordered()))
        .with_filter(filter);
    let subscriber = broker.update_subscriber(topic, id, endpoint).await?;
    show_subscriber(api, &subscriber).await
}

/// `DELETE /v1/topics/{topic}/subscribers/{id}`
pub(crate) async fn deregister_subscriber(api: &Api, topic: &str, id: &str) -> Reply {
    api.broker().deregister_subscriber(topic, id).await?;
    Ok(no_content())
}

/// The `Event-Type` header of a publish, checked.
fn event_type(h: &HeaderMap) -> Result<Option<broker_core::EventType>, ApiError> {
    let Some(value) = h.get(EVENT_TYPE) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| broker_core::Error::InvalidEventType {
            reason: "it may only hold the characters A-Z, a-z, 0-9, '.', '_', ':' and '-'",
        })?;
    Ok(Some(broker_core::EventType::new(value)?))
}

/// A publish's W3C trace context (`traceparent`, `tracestate`); an
/// invalid one is ignored, as the W3C recommendation says.
fn trace_context(h: &HeaderMap) -> Option<broker_core::TraceContext> {
    let parent = h.get("traceparent")?.to_str().ok()?;
    let state = h.get("tracestate").and_then(|v| v.to_str().ok());
    broker_core::TraceContext::parse(parent, state)
}

/// The request header naming a published message's event type.
pub(crate) const EVENT_TYPE: &str = "event-type";

/// The request header carrying a publish's idempotency key (the IETF
/// draft "The Idempotency-Key HTTP Header Field").
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The response header saying a publish was answered from its key:
/// nothing was appended (as Stripe names it).
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The `Idempotency-Key` header of a publish, checked.
fn idempotency_key(h: &HeaderMap) -> Result<Option<broker_core::IdempotencyKey>, ApiError> {
    let Some(value) = h.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| broker_core::Error::InvalidIdempotencyKey {
            reason: "it holds characters other than printable ASCII",
        })?;
    Ok(Some(broker_core::IdempotencyKey::new(value)?))
}

/// A publish's answer: `202`, or `200` with [`IDEMPOTENT_REPLAYED`] when
/// nothing new was appended.
fn published<T: serde::Serialize>(replayed: bool, body: &T) -> Response<ResponseBody> {
    if !replayed {
        return reply(StatusCode::ACCEPTED, body);
    }
    let mut response = reply(StatusCode::OK, body);
    response.headers_mut().insert(
        http::HeaderName::from_static(IDEMPOTENT_REPLAYED),
        http::HeaderValue::from_static("true"),
    );
    response
}

/// `POST /v1/topics/{topic}/messages`
pub(crate) async fn publish<B>(api: &Api, topic: &str, h: &HeaderMap, body: B) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let token = credential(h)?.ok_or(broker_core::Error::Unauthorized)?;
    // Refuse a bad topic or token before reading a byte of the body: a
    // client without a credential holds no buffer.
    api.broker().authorize_publisher(topic, token).await?;
    let event_type = event_type(h)?;
    let key = idempotency_key(h)?;
    let payload = json::read_body(
        h,
        body,
        api.config().max_body_bytes,
        api.config().body_timeout,
    )
    .await?;
    // A copy: a header value parsed by hyper is a slice of the request's
    // read buffer, which the log would otherwise keep whole.
    let content_type = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok());
    let draft = broker_core::Draft::new(content_type, payload)
        .with_event_type(event_type)
        .with_idempotency_key(key)
        .with_trace(trace_context(h));
    let receipt = api.broker().publish_draft(topic, token, draft).await?;
    Ok(published(
        receipt.replayed,
        &json::Published {
            id: &receipt.id,
            offset: receipt.offset,
            subscribers: receipt.subscribers,
        },
    ))
}

/// `GET /v1/topics/{topic}/messages?offset=N&limit=M&wait=D`: reads the
/// log by offset, long-polling up to `wait` when nothing is there yet. A
/// listener token of the topic or the admin token, in `Authorization:
/// Bearer` or `?access_token=`.
pub(crate) async fn fetch(api: &Api, topic: &str, parts: &http::request::Parts) -> Reply {
    broker_core::TopicName::validate(topic)?;
    let mut offset = 0;
    let mut limit = 100;
    let mut wait = std::time::Duration::ZERO;
    for pair in parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| ApiError::InvalidQuery("offset must be a whole number"))?;
            }
            "limit" => {
                limit = listing_limit(value)?;
            }
            "wait" => {
                wait = broker_core::parse_duration(value)
                    .ok()
                    .filter(|d| *d <= MAX_WAIT)
                    .ok_or(ApiError::InvalidQuery(
                        "wait must be a duration of at most 30s, e.g. 5s or 500ms",
                    ))?;
            }
            _ => {}
        }
    }
    authorize_reader_fresh(api, topic, token_of(parts)?).await?;
    let max_bytes = api.broker().limits().replay_bytes;
    let read = api
        .broker()
        .fetch(topic, offset, limit, max_bytes, wait)
        .await?;
    let next_offset = read.messages.last().map_or(read.next, |m| m.offset() + 1);
    Ok(reply(
        StatusCode::OK,
        &json::Fetched {
            messages: read
                .messages
                .iter()
                .map(|m| json::FetchedMessage::of(m))
                .collect(),
            next_offset,
            first_offset: read.first,
        },
    ))
}

/// `GET /v1/topics/{topic}/messages/{id}`: the message, with each
/// subscriber's delivery of it; for a listener of the topic or the admin.
pub(crate) async fn lookup(
    api: &Api,
    topic: &str,
    id: &str,
    parts: &http::request::Parts,
) -> Reply {
    broker_core::TopicName::validate(topic)?;
    authorize_reader_fresh(api, topic, token_of(parts)?).await?;
    let found = api.broker().lookup(topic, id).await?;
    Ok(reply(StatusCode::OK, &json::LookedUp::of(&found)))
}

/// [`authorize_reader`], and once more after learning a token another
/// replica issued a moment ago ([`broker_core::Broker::learn_token`]).
pub(crate) async fn authorize_reader_fresh(
    api: &Api,
    topic: &str,
    token: Option<&str>,
) -> Result<(), ApiError> {
    match authorize_reader(api, topic, token) {
        Err(ApiError::ListenerUnauthorized)
            if api.broker().learn_token(token.unwrap_or_default()).await =>
        {
            authorize_reader(api, topic, token)
        }
        result => result,
    }
}

/// Whether `token` may read `topic` (fetch, pull, ack): a listener token
/// of the topic, the admin token, or a JWT with `listen:` that topic or
/// `admin`; never anonymous.
pub(crate) fn authorize_reader(
    api: &Api,
    topic: &str,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let token = token.ok_or(ApiError::ListenerUnauthorized)?;
    if api.is_admin(token) {
        return Ok(());
    }
    match api.broker().authorize_listener(topic, token) {
        Ok(()) => Ok(()),
        Err(broker_core::Error::Unauthorized) => Err(ApiError::ListenerUnauthorized),
        Err(broker_core::Error::Forbidden) => Err(ApiError::ListenerForbidden),
        Err(e) => Err(e.into()),
    }
}

/// The token of a request: its [`credential`], or `?access_token=`.
fn token_of(parts: &http::request::Parts) -> Result<Option<&str>, ApiError> {
    Ok(credential(&parts.headers)?.or_else(|| {
        parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
            .filter(|t| !t.is_empty())
    }))
}

/// A wait given as a duration, at most [`MAX_WAIT`].
fn parse_wait(value: &str) -> Result<std::time::Duration, ApiError> {
    broker_core::parse_duration(value)
        .ok()
        .filter(|d| *d <= MAX_WAIT)
        .ok_or(ApiError::InvalidRequest(
            "wait must be a duration of at most 30s, e.g. 5s or 500ms".into(),
        ))
}

/// `POST /v1/topics/{topic}/groups`
pub(crate) async fn create_group<B>(api: &Api, topic: &str, h: &HeaderMap, body: B) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    broker_core::TopicName::validate(topic)?;
    let req: json::GroupRequest = management_json(api, h, body).await?;
    let mut config = broker_core::GroupConfig::default();
    if let Some(timeout) = &req.ack_timeout {
        config.ack_timeout = broker_core::parse_duration(timeout).map_err(|_| {
            ApiError::InvalidRequest("ack_timeout must be a duration, e.g. 30s".into())
        })?;
    }
    if let Some(max) = req.max_deliveries {
        config.max_deliveries = max;
    }
    if let Some(filter) = &req.filter {
        config.filter = Some(std::sync::Arc::new(filter.compile()?));
    }
    let start = match req.start.as_deref() {
        None | Some("latest") => broker_core::GroupStart::Latest,
        Some("earliest") => broker_core::GroupStart::Earliest,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "start is \"earliest\" or \"latest\"".into(),
            ))
        }
    };
    let registration = api
        .broker()
        .create_group(topic, &req.name, config, start)
        .await?;
    let group = &registration.item;
    Ok(reply(
        created_or_ok(registration.created),
        &json::GroupShown {
            name: group.name(),
            topic: group.topic().as_str(),
            ack_timeout: broker_core::format_duration(group.config().ack_timeout),
            max_deliveries: group.config().max_deliveries,
            filter: json::FilterShown::of(group.config().filter.as_deref()),
        },
    ))
}

/// `DELETE /v1/topics/{topic}/groups/{group}`
pub(crate) async fn delete_group(api: &Api, topic: &str, group: &str) -> Reply {
    api.broker().delete_group(topic, group).await?;
    Ok(no_content())
}

/// The JSON body of a reader's call (pull, ack), once its token may read
/// `topic`.
async fn reader_json<T, B>(
    api: &Api,
    topic: &str,
    parts: &http::request::Parts,
    body: B,
    limit: usize,
) -> Result<T, ApiError>
where
    T: for<'de> serde::Deserialize<'de>,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    broker_core::TopicName::validate(topic)?;
    authorize_reader_fresh(api, topic, token_of(parts)?).await?;
    json::read_json(&parts.headers, body, limit, api.config().body_timeout).await
}

/// `POST /v1/topics/{topic}/groups/{group}/pull`: a listener or the admin.
pub(crate) async fn pull<B>(
    api: &Api,
    topic: &str,
    group: &str,
    parts: &http::request::Parts,
    body: B,
) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let req: json::PullRequest =
        reader_json(api, topic, parts, body, api.config().max_json_bytes).await?;
    let max = match req.max {
        None => 10,
        Some(n) if (1..=1_000).contains(&n) => n,
        Some(_) => return Err(ApiError::InvalidRequest("max must be 1 to 1000".into())),
    };
    let wait = match &req.wait {
        None => std::time::Duration::ZERO,
        Some(w) => parse_wait(w)?,
    };
    let pulled = api.broker().pull(topic, group, max, wait).await?;
    Ok(reply(
        StatusCode::OK,
        &json::PulledMessages {
            messages: pulled
                .iter()
                .map(|p| json::PulledMessage {
                    message: json::FetchedMessage::of(&p.message),
                    receipt: &p.receipt,
                    deliveries: p.deliveries,
                })
                .collect(),
        },
    ))
}

/// `POST /v1/topics/{topic}/groups/{group}/ack`: a listener or the admin.
pub(crate) async fn ack<B>(
    api: &Api,
    topic: &str,
    group: &str,
    parts: &http::request::Parts,
    body: B,
) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Up to 1,000 receipts: more than the API's other bodies may hold, so
    // a list too long is told so (400), not cut at the byte limit.
    let limit = api.config().max_body_bytes.max(api.config().max_json_bytes);
    let req: json::AckRequest = reader_json(api, topic, parts, body, limit).await?;
    if req.receipts.len() > 1_000 {
        return Err(ApiError::InvalidRequest(
            "at most 1000 receipts at once".into(),
        ));
    }
    let (acked, stale) = api.broker().ack(topic, group, &req.receipts).await?;
    Ok(reply(StatusCode::OK, &json::Acked { acked, stale }))
}

/// The longest a fetch waits for a message.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `POST /v1/topics/{topic}/messages/batch`: all or nothing.
pub(crate) async fn publish_batch<B>(api: &Api, topic: &str, h: &HeaderMap, body: B) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use base64::Engine as _;
    let token = credential(h)?.ok_or(broker_core::Error::Unauthorized)?;
    json::require_json(h)?;
    // As for a single publish: no body is read for a wrong token.
    api.broker().authorize_publisher(topic, token).await?;
    let trace = trace_context(h);
    let bytes = json::read_body(
        h,
        body,
        api.config().max_body_bytes,
        api.config().body_timeout,
    )
    .await?;
    let request: json::BatchRequest<'_> =
        serde_json::from_slice(&bytes).map_err(ApiError::InvalidJson)?;
    if request.messages.is_empty() || request.messages.len() > MAX_BATCH {
        return Err(ApiError::InvalidRequest(
            format!(
                "messages must hold 1 to {MAX_BATCH} items, not {}",
                request.messages.len()
            )
            .into(),
        ));
    }
    let json_type = http::HeaderValue::from_static("application/json");
    let mut messages = Vec::with_capacity(request.messages.len());
    for (index, raw) in request.messages.iter().enumerate() {
        let bad =
            |why: String| ApiError::InvalidRequest(format!("messages[{index}]: {why}").into());
        let item: json::BatchItem<'_> =
            serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
        let message = match (item.payload, item.data) {
            (Some(payload), None) => {
                if item.content_type.is_some() {
                    return Err(bad(
                        "a JSON payload is application/json; content_type goes with data".into(),
                    ));
                }
                (
                    Some(json_type.clone()),
                    Bytes::copy_from_slice(payload.get().as_bytes()),
                )
            }
            (None, Some(data)) => {
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(data.as_bytes())
                    .map_err(|e| bad(format!("data is not base64: {e}")))?;
                let content_type = item
                    .content_type
                    .map(|ct| http::HeaderValue::from_str(&ct))
                    .transpose()
                    .map_err(|_| bad("content_type is not a valid header value".into()))?;
                (content_type, Bytes::from(payload))
            }
            _ => return Err(bad("give either payload (JSON) or data (base64)".into())),
        };
        let event_type = item
            .event_type
            .as_deref()
            .map(broker_core::EventType::new)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let key = item
            .idempotency_key
            .as_deref()
            .map(broker_core::IdempotencyKey::new)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        messages.push(
            broker_core::Draft::from(message)
                .with_event_type(event_type)
                .with_idempotency_key(key)
                .with_trace(trace.clone()),
        );
    }
    drop(request);
    let receipt = api.broker().publish_batch(topic, token, messages).await?;
    Ok(published(
        receipt.messages.iter().all(|r| r.replayed),
        &json::BatchPublished {
            messages: receipt
                .messages
                .iter()
                .map(|r| json::BatchPublishedItem {
                    id: &r.id,
                    offset: r.offset,
                    replayed: r.replayed,
                })
                .collect(),
            subscribers: receipt.subscribers,
        },
    ))
}

/// Messages in one batch publish at most.
const MAX_BATCH: usize = 1_000;

/// `POST /v1/topics` `{"name"}`: `201`, or `409` when it exists.
pub(crate) async fn create_topic<B>(
    api: &Api,
    h: &HeaderMap,
    body: B,
    who: &crate::Manager,
) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let req: json::TopicRequest = management_json(api, h, body).await?;
    // A tenant creates only topics it may manage.
    who.require(&req.name)?;
    api.broker().create_topic(&req.name).await?;
    Ok(reply(
        StatusCode::CREATED,
        &json::TopicCreated { name: &req.name },
    ))
}

/// `DELETE /v1/topics/{topic}`: everything on it goes, its live
/// connections end.
pub(crate) async fn delete_topic(api: &Api, topic: &str) -> Reply {
    api.broker().delete_topic(topic).await?;
    Ok(no_content())
}

/// `GET /v1/topics`: for a tenant, the topics it may manage or listen to.
pub(crate) fn list_topics(api: &Api, who: &crate::Manager) -> Response<ResponseBody> {
    let topics = api.broker().topics();
    reply(
        StatusCode::OK,
        &json::TopicList {
            topics: topics
                .iter()
                .filter(|t| who.sees(t.name.as_str()))
                .map(|t| json::TopicListItem {
                    name: t.name.as_str(),
                    publishers: t.publishers,
                    listeners: t.listeners,
                    subscribers: t.subscribers,
                    groups: t.groups,
                    published: t.published,
                    lag: t.lag,
                    failing: t.failing,
                    disabled: t.disabled,
                })
                .collect(),
        },
    )
}

/// `GET /v1/whoami`: whether the caller is the admin or a tenant (what
/// the console shows, and which calls it makes).
pub(crate) fn whoami(who: &crate::Manager) -> Response<ResponseBody> {
    reply(
        StatusCode::OK,
        &json::WhoAmI {
            role: match who {
                crate::Manager::Admin => "admin",
                crate::Manager::Tenant(_) => "tenant",
            },
        },
    )
}

/// The lifetime of a minted token that asks for none.
const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// `POST /v1/tokens`: the admin mints a token (a tenant's portal token,
/// a publisher's JWT) signed with the broker's key.
pub(crate) async fn mint_token<B>(api: &Api, h: &HeaderMap, body: B) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let minter = api
        .config()
        .minter
        .as_ref()
        .ok_or(ApiError::MintingDisabled)?;
    let req: json::TokenRequest = management_json(api, h, body).await?;
    let ttl = match req.ttl {
        None => DEFAULT_TOKEN_TTL.min(minter.max_ttl()),
        Some(json::Ttl::Seconds(seconds)) => std::time::Duration::from_secs(seconds),
        // As the OpenAPI says: digits and a unit, nothing around them.
        Some(json::Ttl::Text(text)) if !text.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            return Err(broker_core::Error::InvalidTtl {
                reason: format!("{text:?} is not a duration like 1h, 30m or 7d"),
            }
            .into())
        }
        Some(json::Ttl::Text(text)) => broker_core::parse_duration(&text)
            .map_err(|reason| broker_core::Error::InvalidTtl { reason })?,
    };
    let request =
        broker_core::TokenRequest::new(&req.scope, ttl, req.subject.as_deref(), minter.max_ttl())?;
    let minted = minter.mint(&request)?;
    let mut response = reply(
        StatusCode::CREATED,
        &json::Minted {
            token: &minted.token,
            expires_at: broker_core::time::format_rfc3339(minted.expires_at),
            scope: request.scope(),
            subject: request.subject(),
        },
    );
    // A credential: not for any cache.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `GET /v1/stats`: messages published and subscribers per topic (seed
/// 003's shape).
pub(crate) fn stats(api: &Api) -> Response<ResponseBody> {
    let topics = api.broker().topics();
    reply(
        StatusCode::OK,
        &json::Stats {
            topics: topics
                .iter()
                .map(|t| {
                    (
                        t.name.as_str(),
                        json::TopicStats {
                            messages: t.published,
                            subscribers: t.subscribers,
                        },
                    )
                })
                .collect(),
        },
    )
}

/// `GET /v1/topics/{topic}`: never shows tokens or secrets.
pub(crate) async fn topic_detail(api: &Api, topic: &str) -> Reply {
    let t = api.broker().topic(topic)?;
    let (_, end) = api.broker().log_bounds(topic).await?;
    let subscribers = t
        .subscribers
        .iter()
        .map(|s| json::SubscriberItem {
            id: s.id(),
            url: s.endpoint().url().to_string(),
            method: s.endpoint().method().to_string(),
            retry: s.endpoint().retry().into(),
            ordered: s.endpoint().ordered(),
            status: json::status(s),
            circuit: api.broker().circuit(s),
            offset: s.cursor(),
            lag: end.saturating_sub(s.cursor()),
            counters: s.stats().snapshot().into(),
        })
        .collect();
    Ok(reply(
        StatusCode::OK,
        &json::TopicDetail {
            name: t.name.as_str(),
            publishers: t
                .publishers
                .iter()
                .map(|p| json::CredentialItem {
                    id: p.id(),
                    name: p.name(),
                })
                .collect(),
            listeners: t
                .listeners
                .iter()
                .map(|l| json::CredentialItem {
                    id: l.id(),
                    name: l.name(),
                })
                .collect(),
            live: json::Live {
                connections: api
                    .config()
                    .live
                    .as_ref()
                    .map_or(0, |hub| hub.listening(topic)),
            },
            subscribers,
            groups: t
                .groups
                .iter()
                .map(|g| {
                    let (leased, floor) = g.outstanding();
                    json::GroupItem {
                        name: g.name(),
                        ack_timeout: broker_core::format_duration(g.config().ack_timeout),
                        max_deliveries: g.config().max_deliveries,
                        leased,
                        offset: floor,
                        lag: end.saturating_sub(floor),
                    }
                })
                .collect(),
            counters: json::TopicCounters {
                published: t.published,
                deliveries: t.deliveries.into(),
            },
        },
    ))
}

/// `GET /v1/topics/{topic}/subscribers/{id}/dead-letters?limit=N`
/// (default 100, at most 1,000), oldest first.
pub(crate) async fn dead_letters(
    api: &Api,
    topic: &str,
    owner: Owner<'_>,
    query: Option<&str>,
) -> Reply {
    let limit = dead_letter_limit(query)?;
    let dead = match owner {
        Owner::Subscriber(id) => api.broker().dead_letters(topic, id, limit).await?,
        Owner::Group(name) => api.broker().group_dead_letters(topic, name, limit).await?,
    };
    Ok(dead_letters_reply(dead))
}

/// `GET /v1/topics/{topic}/subscribers/{id}/attempts?limit=&status=&message_id=&before=`:
/// the attempt log, newest first, a page at a time.
pub(crate) async fn attempts(api: &Api, topic: &str, id: &str, query: Option<&str>) -> Reply {
    let mut wanted = broker_core::AttemptQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                wanted.limit = listing_limit(value)?;
            }
            "status" => {
                wanted.succeeded = Some(match value {
                    "succeeded" => true,
                    "failed" => false,
                    _ => return Err(ApiError::InvalidQuery("status must be succeeded or failed")),
                });
            }
            "message_id" if !value.is_empty() => wanted.message_id = Some(value.to_owned()),
            "before" => {
                wanted.before = Some(broker_core::AttemptRecord::seq_of(value).ok_or(
                    ApiError::InvalidQuery("before must be the next of an earlier page"),
                )?);
            }
            _ => {}
        }
    }
    // One more than asked: whether there is a next page.
    let limit = wanted.limit;
    wanted.limit += 1;
    let mut found = api.broker().attempts(topic, id, &wanted).await?;
    let next = (found.len() > limit).then(|| {
        found.truncate(limit);
        found.last().map(broker_core::AttemptRecord::id)
    });
    Ok(reply(
        StatusCode::OK,
        &json::Attempts {
            attempts: found.into_iter().map(json::AttemptItem::from).collect(),
            next: next.flatten(),
        },
    ))
}

/// Whose dead letters: a subscriber's (by id) or a consumer group's (by
/// name).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Owner<'a> {
    Subscriber(&'a str),
    Group(&'a str),
}

/// A listing's `limit` (fetch, dead letters, attempts): 1–1000.
fn listing_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=1_000).contains(n))
        .ok_or(ApiError::InvalidQuery(
            "limit must be a whole number from 1 to 1000",
        ))
}

/// The `limit` of a dead-letter listing: 1–1000, default 100.
fn dead_letter_limit(query: Option<&str>) -> Result<usize, ApiError> {
    let mut limit = 100;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if let Some(value) = pair.strip_prefix("limit=") {
            limit = listing_limit(value)?;
        }
    }
    Ok(limit)
}

fn dead_letters_reply(dead: Vec<broker_core::DeadLetter>) -> Response<ResponseBody> {
    reply(
        StatusCode::OK,
        &json::DeadLetters {
            dead_letters: dead
                .into_iter()
                .map(|d| json::DeadLetterItem {
                    message_id: d.message_id,
                    offset: d.offset,
                    attempts: d.attempts,
                    last_status: d.last_status,
                    last_error: d.last_error,
                    failed_at: broker_core::time::format_rfc3339(d.failed_at),
                })
                .collect(),
        },
    )
}

/// `POST /v1/topics/{topic}/subscribers/{id}/redrive` and
/// `…/groups/{group}/redrive`
pub(crate) async fn redrive<B>(
    api: &Api,
    topic: &str,
    owner: Owner<'_>,
    h: &HeaderMap,
    body: B,
) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    broker_core::TopicName::validate(topic)?;
    let req: json::RedriveRequest = management_json(api, h, body).await?;
    let ids = req.message_ids.as_deref();
    let redriven = match owner {
        Owner::Subscriber(id) => api.broker().redrive(topic, id, ids).await?,
        Owner::Group(name) => api.broker().redrive_group(topic, name, ids).await?,
    };
    Ok(reply(StatusCode::ACCEPTED, &json::Redriven { redriven }))
}

/// `POST /v1/topics/{topic}/subscribers/{id}/replay`
pub(crate) async fn replay_subscriber<B>(
    api: &Api,
    topic: &str,
    id: &str,
    h: &HeaderMap,
    body: B,
) -> Reply
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    broker_core::TopicName::validate(topic)?;
    let req: json::ReplayRequest = management_json(api, h, body).await?;
    let broker = api.broker();
    let from = match (req.from_offset, req.since.as_deref()) {
        (Some(offset), None) => offset,
        (None, Some(since)) => {
            let since = broker_core::time::parse_rfc3339(since).ok_or(ApiError::InvalidRequest(
                "since must be an RFC 3339 time, like 2026-11-23T12:00:00Z".into(),
            ))?;
            broker.offset_at(topic, since).await?
        }
        _ => {
            return Err(ApiError::InvalidRequest(
                "replay takes either from_offset or since".into(),
            ))
        }
    };
    let (from_offset, replayed) = broker.replay_subscriber(topic, id, from).await?;
    Ok(reply(
        StatusCode::ACCEPTED,
        &json::Replayed {
            replayed,
            from_offset,
        },
    ))
}

/// `POST /v1/topics/{topic}/subscribers/{id}/enable`: resumes a disabled
/// subscriber from its cursor.
pub(crate) async fn enable(api: &Api, topic: &str, id: &str) -> Reply {
    let s = api.broker().set_enabled(topic, id, true).await?;
    Ok(reply(
        StatusCode::OK,
        &json::Enabled {
            id: s.id(),
            status: json::status(&s),
            offset: s.cursor(),
        },
    ))
}

/// `POST /v1/topics/{topic}/subscribers/{id}/rotate-secret`
pub(crate) async fn rotate_secret(api: &Api, topic: &str, id: &str) -> Reply {
    let fresh = api
        .broker()
        .rotate_secret(topic, id, api.config().secret_overlap)
        .await?;
    Ok(reply(
        StatusCode::OK,
        &json::Rotated {
            secret: fresh.expose(),
        },
    ))
}

fn no_content() -> Response<ResponseBody> {
    let mut r = Response::new(json::body_of(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// The token a request presents in its headers: `Authorization: Bearer
/// <token>` or `X-API-Key: <token>`, which carry the same tokens.
///
/// # Errors
///
/// [`ApiError::ConflictingCredentials`] when both are sent and differ.
pub(crate) fn credential(h: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match (bearer(h), api_key(h)) {
        (Some(a), Some(b)) if a != b => Err(ApiError::ConflictingCredentials),
        (a, b) => Ok(a.or(b)),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(h: &HeaderMap) -> Option<&str> {
    let value = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The token of an `X-API-Key: <token>` header.
fn api_key(h: &HeaderMap) -> Option<&str> {
    let token = h.get("x-api-key")?.to_str().ok()?.trim();
    (!token.is_empty()).then_some(token)
}
