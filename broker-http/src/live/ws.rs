//! `GET /v1/ws`: a WebSocket speaking JSON text frames.
//!
//! Client → server (`type` says which; `request_id`, any JSON value, is
//! echoed in the answer):
//! - `{"type":"subscribe","topic":…,"last_n":N?,"last_event_id":…?,"token":…?}`
//! - `{"type":"unsubscribe","topic":…}`
//! - `{"type":"publish","topic":…,"payload":<any JSON>,"event_type":…?,"idempotency_key":…?,"token":…?}`
//!   (or seed 003's `"message":{"id":…,"payload":…}`, whose `id` is the
//!   idempotency key)
//! - `{"type":"ping"}`
//!
//! Server → client: `ack`, `event`
//! (`{"type":"event","topic":…,"message":{"id":…,"event_type":…,"payload":…,"encoding":…},"timestamp":…}`),
//! `error` (`{"type":"error","code":…,"message":…,"request_id":…}`, codes
//! `BAD_REQUEST`, `UNAUTHORIZED`, `TOPIC_NOT_FOUND`,
//! `IDEMPOTENCY_KEY_REUSED`, `SLOW_CONSUMER`, `INTERNAL`) and `pong`.
//!
//! A client message is at most `max_frame_bytes`, and
//! [`MAX_CONTROL_FRAME_BYTES`] unless it is a publish; what has been read
//! of it counts in the memory budget until answered ([`super::metered`]).
//!
//! One task per connection reads client frames, writes queued events and
//! sends a ping every heartbeat. A write the client does not take within
//! the write timeout, an overflowing queue, or two heartbeats without a
//! word (a pong counts) from the client end the connection.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use broker_core::{Message, ReplayFrom, TopicName};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::{
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig},
        Message as WsMessage, Utf8Bytes,
    },
    WebSocketStream,
};

use super::{
    metered::{Meter, Metered},
    Connection, LiveEvent, Next, Pager, Transport,
};
use crate::{Api, ApiError, ResponseBody};

/// Events gathered into one flush when many are ready.
const BATCH: usize = 64;

/// The largest client frame other than `publish` (a subscribe frame with
/// a JWT and a filter is a few KiB); larger ones are answered
/// `BAD_REQUEST`. Publish frames may be up to `max_frame_bytes`.
pub(crate) const MAX_CONTROL_FRAME_BYTES: usize = 64 * 1024;

/// `GET /v1/ws`: checks the handshake and the credentials, answers
/// `101 Switching Protocols`, and runs the session on the upgraded
/// connection in its own task.
pub(crate) async fn upgrade(
    api: &Api,
    parts: &http::request::Parts,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Response<ResponseBody>, ApiError> {
    let hub = api.live()?;
    let key = handshake_key(&parts.headers).ok_or(ApiError::UpgradeRequired)?;
    let query = super::Query::parse(parts.uri.query())?;
    let token = super::presented_token(parts, &query)?.map(str::to_owned);
    // Only a credential holder gets a connection: the admin token, or a
    // token the broker issued or accepts (whatever its topic or scope,
    // checked again per frame). A made-up one is refused before the upgrade.
    match token.as_deref() {
        None if hub.config().allow_anonymous => {}
        None => return Err(ApiError::ListenerUnauthorized),
        Some(t) if api.is_admin(t) => {}
        Some(t) => match api.broker().recognize(t).await {
            Err(broker_core::Error::Unauthorized) => return Err(ApiError::ListenerUnauthorized),
            other => other?,
        },
    }
    // HTTP/2 has no upgrade; hyper gives the hook for HTTP/1.1 only.
    let on_upgrade = on_upgrade.ok_or(ApiError::UpgradeRequired)?;
    let accept = derive_accept_key(key.as_bytes());
    let connection = hub.connect(Transport::WebSocket)?;
    let meter = Meter::new(api.broker().memory().clone());
    let session = Session {
        api: api.clone(),
        connection,
        token,
        replays: Default::default(),
        meter: meter.clone(),
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(session.connection.config().max_frame_bytes))
        .max_frame_size(Some(session.connection.config().max_frame_bytes));
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = Metered::new(TokioIo::new(upgraded), meter);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        session.run(ws).await;
    });

    let mut response = Response::new(crate::json::body_of(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// The `Sec-WebSocket-Key` of a valid version-13 upgrade request.
fn handshake_key(h: &HeaderMap) -> Option<&str> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)?.as_bytes() != b"13" {
        return None;
    }
    // The key is the base64 of 16 bytes (RFC 6455, 4.1).
    let key = h.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    (decoded.len() == 16).then_some(key)
}

type Ws = WebSocketStream<Metered<TokioIo<hyper::upgrade::Upgraded>>>;

/// Why a session ends.
enum Stop {
    /// The client left, broke the protocol, or stopped taking writes.
    Gone,
    /// The queue overflowed.
    Slow,
    /// The hub is closing.
    Closing,
    /// The client answered no ping for two heartbeats.
    Silent,
    /// What clients were sending filled the memory budget.
    Full,
}

struct Session {
    api: Api,
    connection: Connection,
    /// The token of the handshake (header or `access_token`), used by
    /// frames that carry none.
    token: Option<String>,
    /// Replays still to send, one per subscription that asked for one,
    /// read from the log a page at a time; the oldest subscription's first.
    replays: std::collections::VecDeque<Pager>,
    /// What is read of the client's message, counted in the memory budget
    /// until answered.
    meter: Arc<Meter>,
}

impl Session {
    async fn run(mut self, ws: Ws) {
        let (mut sink, mut stream) = ws.split();
        let period = self.connection.config().heartbeat;
        let mut heartbeat = interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // When the client last sent anything (a pong counts): a client
        // silent for two heartbeats is gone, though its socket may not say so.
        let mut heard = Instant::now();
        // Frames to send next: one buffer for the session's life, so a
        // delivery allocates nothing here.
        let mut out: Vec<WsMessage> = Vec::with_capacity(BATCH);
        let stop = loop {
            // How many of `out` are events (counted once written).
            let mut events = 0;
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        heard = Instant::now();
                        out.extend(self.handle(text.as_str()).await);
                        drop(text);
                        self.meter.settle();
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        self.meter.settle();
                        out.push(error("BAD_REQUEST", "frames are JSON text, not binary", None));
                    }
                    // Pings are answered by tungstenite on the next write.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                        self.meter.settle();
                        heard = Instant::now();
                    }
                    Some(Err(_)) if self.meter.was_full() => break Stop::Full,
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break Stop::Gone,
                },
                next = self.connection.queue.next() => match next {
                    Next::Event(first) => events = self.events(first, &mut out),
                    Next::Overflowed => break Stop::Slow,
                    Next::Closed => break Stop::Closing,
                    Next::TopicDeleted(topic) => {
                        self.connection.detach(topic.as_str());
                        self.replays.retain(|pager| pager.topic() != &topic);
                        out.push(error(
                            "TOPIC_DELETED",
                            &format!("topic {topic} was deleted; this connection no longer listens to it"),
                            None,
                        ));
                    }
                },
                page = std::future::poll_fn(|cx| match self.replays.front_mut() {
                    Some(pager) => pager.poll_page(cx),
                    None => std::task::Poll::Pending,
                }), if !self.replays.is_empty() => match page {
                    Ok(page) if page.is_empty() => {
                        self.replays.pop_front();
                    }
                    Ok(page) => {
                        let before = out.len();
                        out.extend(
                            page.iter()
                                .filter(|m| self.connection.wants_replayed(m))
                                .map(|m| WsMessage::Text(encode(m))),
                        );
                        events = out.len() - before;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading a replay from the log failed");
                        let pager = self.replays.pop_front().expect("polled above");
                        self.connection.detach(pager.topic().as_str());
                        out.push(error(
                            "INTERNAL",
                            "the replay could not be read from the log; subscribe again with \
                             last_event_id to resume",
                            None,
                        ));
                    }
                },
                _ = heartbeat.tick() => {
                    if heard.elapsed() > 2 * period {
                        break Stop::Silent;
                    }
                    out.push(WsMessage::Ping(Bytes::new()));
                }
            }
            if out.is_empty() {
                continue;
            }
            if let Err(stop) = self.write(&mut sink, &mut out).await {
                break stop;
            }
            self.connection.queue.sent(events as u64);
        };
        let goodbye = match stop {
            Stop::Gone => {
                // Flushes the reply to a client's close, if any.
                let _ = timeout(Duration::from_secs(1), sink.close()).await;
                return;
            }
            Stop::Slow => {
                vec![
                    error(
                        "SLOW_CONSUMER",
                        "this connection did not keep up with its topics and is closed; \
                         reconnect and subscribe with last_event_id to resume",
                        None,
                    ),
                    close(CloseCode::Policy, "slow consumer"),
                ]
            }
            Stop::Closing => vec![close(CloseCode::Away, "the broker is shutting down")],
            Stop::Silent => vec![close(CloseCode::Away, "no answer to pings")],
            Stop::Full => vec![close(
                CloseCode::Again,
                "the broker's memory is full; try again later",
            )],
        };
        // The last words get the write timeout too; then the socket goes.
        let write_timeout = self.connection.config().write_timeout;
        let _ = timeout(write_timeout, async {
            for frame in goodbye {
                sink.feed(frame).await?;
            }
            sink.flush().await
        })
        .await;
    }

    /// Writes `frames`, giving up when the client does not take them within
    /// the write timeout, or when the queue overflows or closes meanwhile.
    async fn write(
        &self,
        sink: &mut futures_util::stream::SplitSink<Ws, WsMessage>,
        frames: &mut Vec<WsMessage>,
    ) -> Result<(), Stop> {
        let write = async {
            for frame in frames.drain(..) {
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            written = timeout(self.connection.config().write_timeout, write) => match written {
                Ok(Ok(())) => Ok(()),
                _ => Err(Stop::Gone),
            },
            ended = self.connection.queue.ended() => Err(match ended {
                Next::Closed => Stop::Closing,
                _ => Stop::Slow,
            }),
        }
    }

    /// Appends `first` and the events queued behind it (up to a batch) to
    /// `out` as frames; how many.
    fn events(&self, first: Arc<LiveEvent>, out: &mut Vec<WsMessage>) -> usize {
        let mut n = 0;
        let mut next = Some(first);
        while let Some(event) = next {
            if self.connection.wants(&event.message) {
                out.push(WsMessage::Text(shared(&event)));
                n += 1;
            }
            if n >= BATCH {
                break;
            }
            next = self.connection.queue.try_next();
        }
        n
    }

    /// Answers one client frame.
    async fn handle(&mut self, text: &str) -> Vec<WsMessage> {
        let frame: ClientFrame<'_> = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                // The request id is echoed whenever the frame has one,
                // even when the rest of it is refused.
                #[derive(Deserialize)]
                struct Id<'a> {
                    #[serde(default, borrow)]
                    request_id: Option<&'a RawValue>,
                }
                let id = serde_json::from_str::<Id<'_>>(text)
                    .ok()
                    .and_then(|f| f.request_id);
                return vec![error("BAD_REQUEST", &format!("not a valid frame: {e}"), id)];
            }
        };
        if frame.client_id.is_some() || frame.message.is_some() {
            tracing::debug!(
                client_id = frame.client_id.as_deref(),
                message_id = frame.message.as_ref().and_then(|m| m.id.as_deref()),
                kind = %frame.kind,
                "websocket frame"
            );
        }
        let id = frame.request_id;
        if text.len() > MAX_CONTROL_FRAME_BYTES && frame.kind != "publish" {
            return vec![error(
                "BAD_REQUEST",
                &format!("frames other than publish are at most {MAX_CONTROL_FRAME_BYTES} bytes"),
                id,
            )];
        }
        let outcome = match frame.kind.as_str() {
            "subscribe" => self.subscribe(&frame).await,
            "unsubscribe" => self.unsubscribe(&frame),
            "publish" => self.publish(&frame).await,
            "ping" => Ok(vec![reply(&Pong {
                kind: "pong",
                request_id: id,
            })]),
            _ => Err(Refusal::bad(
                "unknown frame type; use subscribe, unsubscribe, publish or ping",
            )),
        };
        match outcome {
            Ok(frames) => frames,
            Err(refusal) => vec![error(refusal.code, &refusal.message, id)],
        }
    }

    async fn subscribe(&mut self, frame: &ClientFrame<'_>) -> Result<Vec<WsMessage>, Refusal> {
        let topic = frame.topic()?;
        // Checked first: a bad filter is refused whatever else holds.
        let filter = frame
            .filter
            .as_ref()
            .map(crate::json::FilterRequest::compile)
            .transpose()
            .map_err(Refusal::from)?;
        let ack = |replayed| Ack {
            kind: "ack",
            status: "ok",
            request_id: frame.request_id,
            topic: Some(topic),
            replayed: Some(replayed),
            id: None,
            subscribers: None,
            idempotent_replayed: false,
        };
        if self.connection.wants_topic(topic) {
            return Ok(vec![reply(&ack(0))]);
        }
        if self.connection.subscriptions() >= self.connection.config().max_subscriptions {
            return Err(Refusal::bad("too many subscriptions on this connection"));
        }
        let hub = self.api.live().map_err(Refusal::from)?;
        let token = frame.token.as_deref().or(self.token.as_deref());
        super::authorize(&self.api, hub, topic, token)
            .await
            .map_err(Refusal::from)?;
        let from = match (&frame.last_event_id, frame.last_n) {
            (Some(id), _) => ReplayFrom::After(id),
            (None, n) => ReplayFrom::Last(n.unwrap_or(0)),
        };
        let name = TopicName::new(topic).map_err(|e| Refusal::from(ApiError::from(e)))?;
        self.connection.attach(name.clone(), filter);
        let range = match self.api.broker().replay_range(topic, from).await {
            Ok(range) => range,
            Err(e) => {
                self.connection.detach(topic);
                return Err(ApiError::from(e).into());
            }
        };
        self.connection.covered(topic, range.up_to());
        if !range.is_empty() {
            // Read and sent a page at a time by the session's loop, after
            // this ack.
            self.replays
                .push_back(Pager::new(self.api.broker().clone(), name, range));
        }
        Ok(vec![reply(&ack(range.len() as usize))])
    }

    fn unsubscribe(&mut self, frame: &ClientFrame<'_>) -> Result<Vec<WsMessage>, Refusal> {
        let topic = frame.topic()?;
        self.replays.retain(|p| p.topic().as_str() != topic);
        if !self.connection.detach(topic) {
            return Err(Refusal::bad(
                "this connection is not subscribed to that topic",
            ));
        }
        Ok(vec![reply(&Ack {
            kind: "ack",
            status: "ok",
            request_id: frame.request_id,
            topic: Some(topic),
            replayed: None,
            id: None,
            subscribers: None,
            idempotent_replayed: false,
        })])
    }

    async fn publish(&self, frame: &ClientFrame<'_>) -> Result<Vec<WsMessage>, Refusal> {
        let topic = frame.topic()?;
        let payload = match (frame.payload, &frame.message) {
            (Some(payload), None) => payload,
            (None, Some(message)) => message.payload,
            (Some(_), Some(_)) => {
                return Err(Refusal::bad(
                    "give either payload or message {id, payload}, not both",
                ))
            }
            (None, None) => {
                return Err(Refusal::bad(
                    "publish needs a payload (any JSON value), or message {id, payload}",
                ))
            }
        };
        let limit = self.api.config().max_body_bytes;
        if payload.get().len() > limit {
            return Err(ApiError::PayloadTooLarge(limit).into());
        }
        let token = frame
            .token
            .as_deref()
            .or(self.token.as_deref())
            .ok_or(ApiError::Broker(broker_core::Error::Unauthorized))?;
        let event_type = frame
            .event_type
            .as_deref()
            .map(broker_core::EventType::new)
            .transpose()
            .map_err(ApiError::from)?;
        // Ours, or seed 003's `message.id`.
        let key = match (
            frame.idempotency_key.as_deref(),
            frame.message.as_ref().and_then(|m| m.id.as_deref()),
        ) {
            (Some(_), Some(_)) => {
                return Err(Refusal::bad(
                    "give either idempotency_key or message.id, not both",
                ))
            }
            (key, id) => key
                .or(id)
                .map(broker_core::IdempotencyKey::new)
                .transpose()
                .map_err(ApiError::from)?,
        };
        let draft = broker_core::Draft::new(
            Some(HeaderValue::from_static("application/json")),
            Bytes::copy_from_slice(payload.get().as_bytes()),
        )
        .with_event_type(event_type)
        .with_idempotency_key(key);
        let outcome = self
            .api
            .broker()
            .publish_draft(topic, token, draft)
            .await
            .map_err(ApiError::from);
        if let Some(metrics) = &self.api.config().metrics {
            metrics.publish(&outcome);
        }
        let receipt = outcome?;
        Ok(vec![reply(&Ack {
            kind: "ack",
            status: "ok",
            request_id: frame.request_id,
            topic: Some(topic),
            replayed: None,
            id: Some(&receipt.id),
            subscribers: Some(receipt.subscribers),
            idempotent_replayed: receipt.replayed,
        })])
    }
}

/// A client frame: one flat shape for every `type`, so unknown fields are
/// refused and `payload` and `request_id` are kept as the client wrote them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFrame<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    last_n: Option<usize>,
    #[serde(default)]
    last_event_id: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    /// Seed 003's publish: `{"id": …, "payload": …}` instead of `payload`.
    #[serde(default, borrow)]
    message: Option<SeedMessage<'a>>,
    /// Seed 003's name for the client, shown in logs.
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    /// Publish: the idempotency key (as the `Idempotency-Key` header).
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    filter: Option<crate::json::FilterRequest>,
    #[serde(default, borrow)]
    request_id: Option<&'a RawValue>,
}

/// The `message` of seed 003's publish frame.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedMessage<'a> {
    /// The publisher's id for the message: its idempotency key.
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

impl ClientFrame<'_> {
    fn topic(&self) -> Result<&str, Refusal> {
        self.topic
            .as_deref()
            .ok_or_else(|| Refusal::bad("this frame needs a topic"))
    }
}

/// An error frame's code and message.
struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    fn bad(message: &str) -> Self {
        Refusal {
            code: "BAD_REQUEST",
            message: message.to_owned(),
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal {
            code: e.live_code(),
            // Only a real 500 hides its cause; shutting down says so.
            message: if e.status() == StatusCode::INTERNAL_SERVER_ERROR {
                "internal error".to_owned()
            } else {
                e.to_string()
            },
        }
    }
}

#[derive(Serialize)]
struct Ack<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// Always `ok` (seed 003's clients read it).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    /// Subscribe: how many retained messages follow the ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<usize>,
    /// Publish: the message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    /// Publish: how many webhook subscribers it goes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribers: Option<usize>,
    /// Publish: `true` when answered from its idempotency key (nothing
    /// appended; the first publish's id).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    idempotent_replayed: bool,
}

#[derive(Serialize)]
struct Pong<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RawValue>,
    /// The same, as seed 003's clients read it.
    error: ErrorBody<'a>,
    /// When, RFC 3339 (seed 003).
    timestamp: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a str,
    message: EventMessage<'a>,
    /// When the broker accepted it, in milliseconds since the Unix epoch.
    timestamp: u64,
}

#[derive(Serialize)]
struct EventMessage<'a> {
    id: &'a str,
    /// `null` when the publisher named none.
    event_type: Option<&'a str>,
    payload: crate::json::Payload<'a>,
    /// `json` (the payload is the JSON value published), `text` (a string)
    /// or `base64` (a string of the base64 of the bytes).
    encoding: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
}

fn reply<T: Serialize>(value: &T) -> WsMessage {
    // These plain structs always serialise.
    WsMessage::Text(serde_json::to_string(value).unwrap_or_default().into())
}

fn error(code: &str, message: &str, request_id: Option<&RawValue>) -> WsMessage {
    reply(&ErrorFrame {
        kind: "error",
        code,
        message,
        request_id,
        error: ErrorBody { code, message },
        timestamp: broker_core::time::format_rfc3339(std::time::SystemTime::now()),
    })
}

fn close(code: CloseCode, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// The event frame of a live message, encoded once for all connections.
fn shared(event: &LiveEvent) -> Utf8Bytes {
    event.ws.get_or_init(|| encode(&event.message)).clone()
}

/// One message as an event frame. A JSON payload (by its content type)
/// is embedded as JSON; other UTF-8 as a string; anything else as base64.
pub(crate) fn encode(message: &Message) -> Utf8Bytes {
    let (payload, encoding, content_type) = crate::json::encode_payload(message);
    let timestamp = crate::json::timestamp_ms(message);
    let frame = EventFrame {
        kind: "event",
        topic: message.topic().as_str(),
        message: EventMessage {
            id: message.id(),
            event_type: message.event_type().map(|t| t.as_str()),
            payload,
            encoding,
            content_type,
        },
        timestamp,
    };
    serde_json::to_string(&frame).unwrap_or_default().into()
}
