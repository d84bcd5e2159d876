//! The delivery worker: one bounded queue per subscriber, drained by a
//! task that runs only while there is work.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use broker_core::{Message, Outcome, Subscriber};
use futures_util::{stream::FuturesUnordered, StreamExt};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::{
    policy::is_refusal,
    retry::{with_retries, Attempt, Backoff},
    signature::Signer,
    Shared,
};

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("webhook-broker/", env!("CARGO_PKG_VERSION")));

/// A message on its way, with what all its deliveries share.
pub(crate) struct Outgoing {
    message: Arc<Message>,
    /// `webhook-id`.
    id: HeaderValue,
}

impl Outgoing {
    pub(crate) fn new(message: Arc<Message>) -> Option<Arc<Self>> {
        match HeaderValue::from_str(message.id()) {
            Ok(id) => Some(Arc::new(Outgoing { message, id })),
            Err(_) => {
                tracing::error!(id = message.id(), "message id is not a valid header value");
                None
            }
        }
    }
}

/// A subscriber's delivery state, kept in its notifier slot.
pub(crate) struct Queue {
    /// Held to push or pop one item, never across an `.await`.
    state: Mutex<QueueState>,
    signer: Signer,
    /// The subscriber's headers, `Host` and `User-Agent`: every request
    /// starts from a clone of these.
    base_headers: HeaderMap,
    /// Attempt slots shared with every subscriber on the same host.
    host_slots: Arc<Semaphore>,
}

struct QueueState {
    items: VecDeque<Arc<Outgoing>>,
    /// Whether a worker task is draining `items`.
    running: bool,
}

fn queue_of<'s>(subscriber: &'s Subscriber, shared: &Shared) -> Option<&'s Queue> {
    subscriber.notifier_state(|| Queue {
        state: Mutex::new(QueueState {
            items: VecDeque::new(),
            running: false,
        }),
        signer: Signer::new(subscriber.secret().key()),
        base_headers: base_headers(subscriber),
        host_slots: shared.host_slots(subscriber.endpoint().url()),
    })
}

fn base_headers(subscriber: &Subscriber) -> HeaderMap {
    let endpoint = subscriber.endpoint();
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

/// Enqueues `message` for `subscriber`, dropping its oldest queued delivery
/// if the queue is full, and starts a worker if none runs. Never blocks on
/// anything but the queue's own short lock.
pub(crate) fn push(subscriber: &Arc<Subscriber>, outgoing: &Arc<Outgoing>, shared: &Arc<Shared>) {
    if !subscriber.is_active() {
        return;
    }
    let Some(queue) = queue_of(subscriber, shared) else {
        return;
    };
    let (start_worker, dropped) = {
        let mut state = queue.state.lock();
        let dropped = if state.items.len() >= shared.config.queue_capacity {
            state.items.pop_front();
            true
        } else {
            shared
                .pending
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            false
        };
        state.items.push_back(outgoing.clone());
        (!std::mem::replace(&mut state.running, true), dropped)
    };
    if dropped {
        subscriber.record(Outcome::Dropped, 1);
    }
    if start_worker {
        tokio::spawn(run(subscriber.clone(), shared.clone()));
    }
}

/// Drains one subscriber's queue with at most `max_in_flight` deliveries at
/// once, and exits when the queue is empty or the subscriber is gone.
async fn run(subscriber: Arc<Subscriber>, shared: Arc<Shared>) {
    let Some(queue) = queue_of(&subscriber, &shared) else {
        return;
    };
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < shared.config.max_in_flight {
            let message = {
                let mut state = queue.state.lock();
                if !subscriber.is_active() {
                    // Deregistered: what is queued or in flight is dropped.
                    let n = state.items.len() + in_flight.len();
                    state.items = VecDeque::new();
                    state.running = false;
                    drop(state);
                    subscriber.record(Outcome::Dropped, n as u64);
                    shared.finished(n);
                    return;
                }
                match state.items.pop_front() {
                    Some(message) => message,
                    None if in_flight.is_empty() => {
                        state.running = false;
                        // An idle subscriber keeps no queue memory.
                        state.items = VecDeque::new();
                        return;
                    }
                    None => break,
                }
            };
            in_flight.push(deliver(&subscriber, queue, message, &shared));
        }
        in_flight.next().await;
    }
}

/// One delivery: its attempts (more than one only if the subscriber opted
/// in to retries), each bounded by the request timeout; counts the outcome.
async fn deliver(subscriber: &Subscriber, queue: &Queue, message: Arc<Outgoing>, shared: &Shared) {
    let backoff = Backoff {
        base: shared.config.retry_base_delay,
        max: shared.config.retry_max_delay,
    };
    let finished = with_retries(
        subscriber.endpoint().max_attempts(),
        backoff,
        || subscriber.is_active(),
        || attempt(subscriber, queue, &message, shared),
    )
    .await;
    if finished.retries > 0 {
        subscriber.record(Outcome::Retried, u64::from(finished.retries));
    }
    let outcome = match finished.last {
        Attempt::Delivered => Outcome::Delivered,
        Attempt::Refused => {
            let refused = subscriber.stats().snapshot().refused;
            // Log the first refusal and then ever more rarely, so a hostile
            // subscriber cannot flood the log.
            if refused.is_power_of_two() || refused == 0 {
                tracing::warn!(
                    subscriber = subscriber.id(),
                    topic = %subscriber.topic(),
                    // The host only: a URL's path or query may carry a
                    // credential of the subscriber's.
                    host = subscriber.endpoint().url().host().unwrap_or_default(),
                    refused_so_far = refused + 1,
                    "delivery refused by the destination policy"
                );
            }
            Outcome::Refused
        }
        Attempt::Failed { .. } => Outcome::Failed,
    };
    subscriber.record(outcome, 1);
    shared.finished(1);
}

/// One attempt, bounded by the request timeout once its host has a free
/// slot (waiting for one is queueing, not attempting).
async fn attempt(
    subscriber: &Subscriber,
    queue: &Queue,
    message: &Outgoing,
    shared: &Shared,
) -> Attempt {
    // The semaphore is never closed; `ok()` only avoids a panic path.
    let _slot = queue.host_slots.acquire().await.ok();
    let send = async {
        let request = build_request(queue, subscriber.endpoint(), message)?;
        let response = shared.client.request(request).await?;
        let attempt = Attempt::from_response(response.status(), response.headers());
        // Read a bounded amount so the connection can go back to the pool;
        // a longer body is abandoned with its connection.
        let _ = Limited::new(response.into_body(), shared.config.max_response_bytes)
            .collect()
            .await;
        Ok::<_, BoxError>(attempt)
    };
    let metrics = &shared.metrics;
    metrics.in_flight.inc();
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(shared.config.request_timeout, send).await;
    metrics.latency.observe(started.elapsed().as_secs_f64());
    metrics.in_flight.dec();
    match outcome {
        Ok(Ok(attempt)) => {
            if let Attempt::Failed { .. } = attempt {
                tracing::debug!(
                    subscriber = subscriber.id(),
                    ?attempt,
                    "delivery attempt failed"
                );
            }
            attempt
        }
        Ok(Err(error)) if is_refusal(&*error) => Attempt::Refused,
        Ok(Err(error)) => {
            tracing::debug!(subscriber = subscriber.id(), %error, "delivery attempt failed");
            Attempt::Failed {
                retryable: true,
                retry_after: None,
            }
        }
        Err(_) => {
            tracing::debug!(subscriber = subscriber.id(), "delivery attempt timed out");
            Attempt::Failed {
                retryable: true,
                retry_after: None,
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request of one attempt: a fresh timestamp and signature each time,
/// the same `webhook-id` always.
fn build_request(
    queue: &Queue,
    endpoint: &broker_core::Endpoint,
    outgoing: &Outgoing,
) -> Result<Request<Full<bytes::Bytes>>, BoxError> {
    let message = &outgoing.message;
    let timestamp = timestamp_header();
    let signature = queue.signer.sign_raw(
        outgoing.id.as_bytes(),
        timestamp.as_bytes(),
        message.payload(),
    );

    let mut request = Request::new(Full::new(message.payload().clone()));
    *request.method_mut() = endpoint.method().clone();
    *request.uri_mut() = endpoint.url().clone();
    let headers = request.headers_mut();
    *headers = queue.base_headers.clone();
    if let Some(content_type) = message.content_type() {
        headers.insert(header::CONTENT_TYPE, content_type.clone());
    }
    headers.insert(WEBHOOK_ID.clone(), outgoing.id.clone());
    headers.insert(WEBHOOK_TIMESTAMP.clone(), timestamp);
    headers.insert(
        WEBHOOK_SIGNATURE.clone(),
        HeaderValue::from_bytes(&signature)?,
    );
    Ok(request)
}
