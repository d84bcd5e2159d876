//! `GET /v1/topics/{topic}/events`: a topic's messages as Server-Sent
//! Events, on a hyper streaming body.
//!
//! Each message is an event with `id:` the message id, and
//! `event_type:` its event type when it has one (a field `EventSource`
//! ignores). A UTF-8 payload
//! without a carriage return is sent as `data:` lines (one per payload
//! line) of the default event type `message`; any other payload is sent
//! base64-encoded as event type `binary`. A comment goes out every
//! heartbeat when nothing else does. When the connection cannot keep up,
//! it gets a `broker.error` event with `{"code":"SLOW_CONSUMER",…}` and
//! the stream ends; `Last-Event-ID` on the reconnect resumes from the
//! topic's log, which the stream reads a page at a time before it goes
//! live.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use base64::Engine as _;
use broker_core::{Message, ReplayFrom};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use super::{Connection, LiveEvent, Next, Pager, Transport};
use crate::{Api, ApiError, ResponseBody};

/// Bytes gathered into one body frame when many events are ready.
const BATCH_BYTES: usize = 64 * 1024;

/// `GET /v1/topics/{topic}/events`
pub(crate) async fn events(
    api: &Api,
    topic: &str,
    parts: &http::request::Parts,
) -> Result<Response<ResponseBody>, ApiError> {
    let hub = api.live()?;
    broker_core::TopicName::validate(topic)?;
    let query = super::Query::parse(parts.uri.query())?;
    super::authorize(api, hub, topic, super::presented_token(parts, &query)?).await?;
    let last_event_id = parts
        .headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::InvalidQuery("Last-Event-ID is not text"))
        })
        .transpose()?;
    let from = match last_event_id {
        Some(id) => ReplayFrom::After(id),
        None => ReplayFrom::Last(query.last_n.unwrap_or(0)),
    };
    let topic_name = broker_core::TopicName::new(topic)?;
    let mut connection = hub.connect(Transport::Sse)?;
    // Attach first, then take the replay's range: nothing published in
    // between is lost, and what the range covers is skipped when it comes
    // live.
    connection.attach(topic_name.clone(), query.filter);
    let range = api.broker().replay_range(topic, from).await?;
    connection.covered(topic, range.up_to());
    let period = connection.config().heartbeat;
    let mut heartbeat = interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let body = SseBody {
        connection,
        replay: (!range.is_empty()).then(|| Pager::new(api.broker().clone(), topic_name, range)),
        page: VecDeque::new(),
        heartbeat,
        started: false,
        done: false,
    };
    let mut response = Response::new(body.boxed());
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // Browsers may read the stream from pages of any origin: access is by
    // token, never by cookie, so there is no ambient credential to guard.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Ok(response)
}

/// The event stream: replayed messages (read from the log a page at a
/// time) first, then live ones from the
/// connection's queue, with heartbeats in the silences. Dropping it (the
/// client went away) detaches the connection from the hub.
struct SseBody {
    connection: Connection,
    replay: Option<Pager>,
    page: VecDeque<Arc<Message>>,
    heartbeat: Interval,
    started: bool,
    done: bool,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut batch = Batch::default();
        if !this.started {
            // Sent at once, so the client sees the stream open before the
            // first message.
            this.started = true;
            batch.push(Bytes::from_static(b": connected\n\n"));
        }
        let mut sent = 0;
        while batch.size < BATCH_BYTES {
            let event = if let Some(message) = this.page.pop_front() {
                encode(&message)
            } else if let Some(pager) = &mut this.replay {
                match pager.poll_page(cx) {
                    Poll::Ready(Ok(page)) if page.is_empty() => this.replay = None,
                    Poll::Ready(Ok(page)) => {
                        this.page = page
                            .into_iter()
                            .filter(|m| this.connection.wants_replayed(m))
                            .collect()
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::error!(error = %e, "reading a replay from the log failed");
                        this.done = true;
                        batch.push(replay_failed());
                        break;
                    }
                    Poll::Pending => break,
                }
                continue;
            } else {
                match this.connection.queue.poll_next(cx) {
                    Poll::Ready(Next::Event(e)) => {
                        if !this.connection.wants(&e.message) {
                            continue;
                        }
                        shared(&e)
                    }
                    Poll::Ready(Next::Overflowed) => {
                        this.done = true;
                        batch.push(slow_consumer());
                        break;
                    }
                    Poll::Ready(Next::Closed) => {
                        this.done = true;
                        break;
                    }
                    Poll::Ready(Next::TopicDeleted(_)) => {
                        this.done = true;
                        batch.push(topic_deleted());
                        break;
                    }
                    Poll::Pending => break,
                }
            };
            sent += 1;
            batch.push(event);
        }
        this.connection.queue.sent(sent);
        let frame = match batch.take() {
            Some(frame) => frame,
            None if this.done => return Poll::Ready(None),
            None => match this.heartbeat.poll_tick(cx) {
                Poll::Ready(_) => Bytes::from_static(b": heartbeat\n\n"),
                Poll::Pending => return Poll::Pending,
            },
        };
        this.heartbeat.reset();
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// What one body frame carries: the first chunk as it is (a shared event
/// is not copied, and one event, the usual case, allocates nothing), later
/// ones copied after it into one buffer.
#[derive(Default)]
struct Batch {
    first: Option<Bytes>,
    more: Option<BytesMut>,
    size: usize,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        self.size += chunk.len();
        match (&self.first, &mut self.more) {
            (None, _) => self.first = Some(chunk),
            (Some(first), None) => {
                let mut buf = BytesMut::with_capacity(2 * (first.len() + chunk.len()));
                buf.extend_from_slice(first);
                buf.extend_from_slice(&chunk);
                self.more = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }

    fn take(self) -> Option<Bytes> {
        match self.more {
            Some(buf) => Some(buf.freeze()),
            None => self.first,
        }
    }
}

/// The event of a live message, encoded once for all SSE connections.
fn shared(event: &LiveEvent) -> Bytes {
    event.sse.get_or_init(|| encode(&event.message)).clone()
}

/// One message as an event.
pub(crate) fn encode(message: &Message) -> Bytes {
    let payload = message.payload();
    let mut out = BytesMut::with_capacity(payload.len() + message.id().len() + 32);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(message.id().as_bytes());
    out.extend_from_slice(b"\n");
    // A field `EventSource` ignores (the spec skips unknown fields), for
    // readers that parse the stream themselves.
    if let Some(event_type) = message.event_type() {
        out.extend_from_slice(b"event_type: ");
        out.extend_from_slice(event_type.as_str().as_bytes());
        out.extend_from_slice(b"\n");
    }
    match std::str::from_utf8(payload) {
        Ok(text) if !text.contains('\r') => {
            for line in text.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\n");
            }
        }
        // SSE carries text lines only: a `\r` would be read as a line
        // break, and other bytes are not text at all.
        _ => {
            out.extend_from_slice(b"event: binary\ndata: ");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(payload)
                    .as_bytes(),
            );
            out.extend_from_slice(b"\n");
        }
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

fn replay_failed() -> Bytes {
    Bytes::from_static(
        b"event: broker.error\ndata: {\"code\":\"INTERNAL\",\"message\":\"the replay could not be \
          read from the log; reconnect with Last-Event-ID to resume\"}\n\n",
    )
}

fn topic_deleted() -> Bytes {
    Bytes::from_static(
        b"event: broker.error\ndata: {\"code\":\"TOPIC_DELETED\",\"message\":\"this topic was \
          deleted; the stream ends\"}\n\n",
    )
}

fn slow_consumer() -> Bytes {
    Bytes::from_static(
        b"event: broker.error\ndata: {\"code\":\"SLOW_CONSUMER\",\"message\":\"this connection \
          did not keep up with the topic and is closed; reconnect with Last-Event-ID to \
          resume\"}\n\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_payloads_are_data_lines_and_others_base64() {
        let messages = crate::live::published(&[b"a\nb", b"x\r\ny", &[0xff, 0], b""]);
        let out: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8(encode(m)[m.id().len() + 5..].to_vec()).unwrap())
            .collect();
        assert_eq!(out[0], "data: a\ndata: b\n\n");
        assert_eq!(out[1], "event: binary\ndata: eA0KeQ==\n\n");
        assert_eq!(out[2], "event: binary\ndata: /wA=\n\n");
        assert_eq!(out[3], "data: \n\n");
    }
}
