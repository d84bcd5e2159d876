//! The delivery worker: each subscriber is a cursor over its topic's log.
//!
//! A subscriber's worker task runs only while it has work. It reads the
//! log from its position a page at a time, keeps up to `max_in_flight`
//! attempts going, and puts a failed attempt aside until its retry is due
//! (so a retry holds up neither the subscriber's later messages nor anyone
//! else). Its cursor, the offset below which every message is done with
//! (delivered, failed for good, or dropped), is committed to the broker,
//! which keeps it in the store: after a restart delivery resumes there, at
//! least once.
//!
//! A publish only wakes the workers of the topic's subscribers: the
//! message is in the log. A slow or dead subscriber lags behind, costing
//! the memory of one page and its retries' offsets, and loses nothing
//! while the log retains its messages; what retention removes before it is
//! delivered is counted as dropped.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use broker_core::{
    AttemptRecord, Broker, Circuit, DeadLetter, DisableReason, MemoryBudget, Message, OpEvent,
    Outcome, PendingRetry, Subscriber, RESPONSE_KEPT,
};
use futures_util::{stream::FuturesUnordered, StreamExt};
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use parking_lot::Mutex;
use tokio::{
    sync::{Notify, Semaphore},
    time::Instant,
};

use super::{
    health::{CircuitCell, Health},
    policy::is_refusal,
    request::{base_headers, build_request, BoxError, Signers},
    retry::{next_wait, Attempt, Backoff},
    Shared,
};

/// Messages read from the log at once.
const PAGE: usize = 256;
/// Payload bytes read from the log at once.
const PAGE_BYTES: usize = 4 << 20;
/// A worker commits its cursor at most this often while it works (and
/// always when it stops).
const COMMIT_EVERY: Duration = Duration::from_millis(50);

/// A subscriber's delivery state, kept in its notifier slot.
pub(crate) struct Cursor {
    /// Held to flip the flags, never across an `.await`.
    flags: Mutex<Flags>,
    /// Wakes a running worker: a publish on the topic, a deregistration.
    wake: Notify,
    /// The circuit's state, for the topic detail and metrics. Only the
    /// worker writes it.
    circuit: CircuitCell,
    /// The endpoint's health when the last worker run stopped.
    health: Mutex<Option<Health>>,
    /// Signers of the subscriber's secrets, rebuilt when a rotation
    /// changes its `secrets_version`. Held only to clone them out.
    signers: Mutex<Arc<Signers>>,
    /// What attempts take from the subscriber's endpoint, rebuilt when a
    /// change moves its `endpoint_version`. Held only to clone it out.
    prepared: Mutex<Arc<Prepared>>,
    /// Whether a worker took up the retries the store kept from before a
    /// restart (once per process: later runs start with none pending).
    retries_loaded: std::sync::atomic::AtomicBool,
    /// The `seq` of the subscriber's last attempt recorded here: the next
    /// is later (held only to bump it).
    last_attempt: Mutex<u64>,
}

/// What every attempt takes from the subscriber's endpoint, built once
/// per endpoint (an endpoint is replaced whole when the subscriber is
/// changed).
struct Prepared {
    /// The subscriber's `endpoint_version` it was built at.
    version: u64,
    endpoint: Arc<broker_core::Endpoint>,
    /// The subscriber's headers, `Host` and `User-Agent`: every request
    /// starts from a clone of these.
    base_headers: HeaderMap,
    /// Attempt slots shared with every subscriber on the same host.
    host_slots: Arc<Semaphore>,
}

impl Prepared {
    fn of(subscriber: &Subscriber, shared: &Shared) -> Self {
        // The version first: read with an endpoint at least as new, so a
        // change racing this makes the next attempt build again.
        let version = subscriber.endpoint_version();
        let endpoint = subscriber.endpoint();
        Prepared {
            version,
            base_headers: base_headers(&endpoint),
            host_slots: shared.host_slots(endpoint.url()),
            endpoint,
        }
    }

    /// The current one of `subscriber`'s: one reference count; rebuilt
    /// only after a change.
    fn current(subscriber: &Subscriber, cursor: &Cursor, shared: &Shared) -> Arc<Prepared> {
        let mut prepared = cursor.prepared.lock();
        if prepared.version != subscriber.endpoint_version() {
            *prepared = Arc::new(Prepared::of(subscriber, shared));
        }
        prepared.clone()
    }
}

#[derive(Default)]
struct Flags {
    /// Whether a worker task runs.
    running: bool,
    /// Whether something happened since the worker last looked.
    woken: bool,
    /// Dead letters to deliver again (`Broker::redrive`).
    redrive: Vec<DeadLetter>,
    /// Deliver again from this offset (`Broker::replay_subscriber`).
    rewind: Option<u64>,
    /// A person asked for deliveries (redrive, replay, enable): close the
    /// circuit and send at once.
    close_circuit: bool,
}

fn cursor_of<'s>(subscriber: &'s Subscriber, shared: &Shared) -> Option<&'s Cursor> {
    subscriber.notifier_state(|| Cursor {
        flags: Mutex::default(),
        wake: Notify::new(),
        circuit: CircuitCell::default(),
        health: Mutex::new(None),
        signers: Mutex::new(Arc::new(Signers::of(subscriber))),
        prepared: Mutex::new(Arc::new(Prepared::of(subscriber, shared))),
        retries_loaded: std::sync::atomic::AtomicBool::new(false),
        last_attempt: Mutex::new(0),
    })
}

/// Tells `subscriber`'s worker there is something to do, starting it if
/// none runs. Never blocks on anything but the flags' short lock.
pub(crate) fn wake(subscriber: &Arc<Subscriber>, shared: &Arc<Shared>) {
    wake_with(subscriber, shared, |_| {});
}

/// Hands `subscriber`'s worker dead letters to deliver again.
pub(crate) fn redrive(subscriber: &Arc<Subscriber>, shared: &Arc<Shared>, dead: Vec<DeadLetter>) {
    wake_with(subscriber, shared, |flags| {
        flags.redrive.extend(dead);
        flags.close_circuit = true;
    });
}

/// `subscriber` was enabled: its worker starts with its circuit closed.
pub(crate) fn enabled(subscriber: &Arc<Subscriber>, shared: &Arc<Shared>) {
    wake_with(subscriber, shared, |flags| flags.close_circuit = true);
}

/// Has `subscriber`'s worker deliver again from `from` on.
pub(crate) fn rewind(subscriber: &Arc<Subscriber>, shared: &Arc<Shared>, from: u64) {
    wake_with(subscriber, shared, |flags| {
        flags.rewind = Some(flags.rewind.map_or(from, |r| r.min(from)));
        flags.close_circuit = true;
    });
}

fn wake_with(subscriber: &Arc<Subscriber>, shared: &Arc<Shared>, change: impl FnOnce(&mut Flags)) {
    if !subscriber.is_active()
        || !subscriber.is_enabled()
        || !super::lease::may_deliver(subscriber, shared)
    {
        return;
    }
    let Some(cursor) = cursor_of(subscriber, shared) else {
        return;
    };
    let start = {
        let mut flags = cursor.flags.lock();
        change(&mut flags);
        flags.woken = true;
        !std::mem::replace(&mut flags.running, true)
    };
    if start {
        shared.running.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(run(subscriber.clone(), shared.clone()));
    } else {
        cursor.wake.notify_one();
    }
}

/// Wakes `subscriber`'s worker if one runs, so it looks again at whether
/// it may go on (a lease handed to another replica); starts none.
pub(crate) fn nudge(subscriber: &Subscriber, shared: &Shared) {
    if let Some(cursor) = cursor_of(subscriber, shared) {
        cursor.flags.lock().woken = true;
        cursor.wake.notify_one();
    }
}

/// Whether `subscriber`'s worker runs.
pub(crate) fn is_running(subscriber: &Subscriber, shared: &Shared) -> bool {
    cursor_of(subscriber, shared).is_some_and(|cursor| cursor.flags.lock().running)
}

/// This replica delivers `subscriber` again after another did: its next
/// run takes up the retries the store keeps (the other's included).
pub(crate) fn taken_over(subscriber: &Subscriber, shared: &Shared) {
    if let Some(cursor) = cursor_of(subscriber, shared) {
        cursor.retries_loaded.store(false, Ordering::Release);
    }
}

/// One message's deliveries: which attempt comes next.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    offset: u64,
    /// Attempts made so far.
    attempts: u32,
}

/// What one attempt came to.
struct Tried {
    offset: u64,
    /// The message (a reference count): its id names a dead letter.
    message: Arc<Message>,
    attempts: u32,
    /// Whether it went out as the half-open circuit's probe.
    probe: bool,
    result: Attempt,
    /// What the attempt log keeps of it.
    seen: Seen,
}

/// What an attempt showed beyond its [`Attempt`]: for the attempt log.
#[derive(Debug, Default)]
struct Seen {
    /// When it started.
    at: Option<SystemTime>,
    duration: Duration,
    /// The response's status.
    status: Option<u16>,
    /// The start of the response body.
    response: Option<bytes::Bytes>,
    /// Why no response came.
    error: Option<String>,
    /// The attempt's span, when its message joined a trace.
    span: Option<broker_core::TraceContext>,
}

/// The message bytes a worker holds, read ahead or in flight, charged to
/// the broker's [`MemoryBudget`] (so that what a hanging endpoint holds
/// after the log evicted it is counted); released when dropped.
struct Held {
    memory: MemoryBudget,
    bytes: usize,
}

impl Held {
    fn add(&mut self, message: &Message) {
        self.bytes += message.held_bytes();
        self.memory.add(message.held_bytes());
    }

    fn release(&mut self, message: &Message) {
        self.bytes -= message.held_bytes();
        self.memory.release(message.held_bytes());
    }

    /// Whether this worker should wait for what it holds to finish before
    /// reading more (when it has an attempt in flight to wait for): it
    /// holds something, and deliveries as a whole hold over half the
    /// budget (the other half is the log's, or the cache's). A worker
    /// holding nothing may always read one message, so that no subscriber
    /// waits on the others.
    fn pressed(&self) -> bool {
        self.bytes > 0 && self.memory.pinned() > self.memory.limit() / 2
    }

    /// How many payload bytes the next read may take: what is left of
    /// the deliveries' half of the budget, at most `page`, and 1 (one
    /// message) when nothing is left.
    fn room(&self, page: usize) -> usize {
        (self.memory.limit() / 2)
            .saturating_sub(self.memory.pinned())
            .clamp(1, page)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.memory.release(self.bytes);
    }
}

/// The worker's own state; only its task touches it.
struct Work {
    /// The next offset to read from the log.
    next: u64,
    /// Read, not yet attempted.
    page: VecDeque<Arc<Message>>,
    /// Offsets attempted and not done with (in flight or waiting for a
    /// retry): the cursor cannot pass the lowest.
    open: BTreeSet<u64>,
    /// Failed attempts waiting for their retry, soonest first. Offsets
    /// only: the message is read again from the log when due.
    retries: BinaryHeap<Reverse<Due>>,
    /// Dead letters being delivered again, by offset: below the cursor,
    /// so not in `open`.
    redriven: std::collections::HashSet<u64>,
    /// Whether the last read found the end of the log.
    caught_up: bool,
    /// The endpoint's health, kept in the cursor between worker runs.
    health: Health,
    /// The cursor last committed.
    committed: u64,
    committed_at: Instant,
    /// What `page` and the attempts in flight hold.
    held: Held,
    /// Messages behind the log's end at the last read.
    behind: u64,
    /// When an attempt was last delivered.
    delivered_at: Option<Instant>,
    /// What this worker counts for in the publishers' pace.
    paced: u64,
}

impl Work {
    /// Where the cursor stands: below every open offset and every message
    /// read but not attempted.
    fn cursor(&self) -> u64 {
        let mut cursor = self.next;
        if let Some(&open) = self.open.first() {
            cursor = cursor.min(open);
        }
        if let Some(m) = self.page.front() {
            cursor = cursor.min(m.offset());
        }
        cursor
    }

    /// Reports this worker's backlog to the publishers' pace: counted
    /// (at most `PER_SUBSCRIBER`) only while it delivers, `0` otherwise.
    fn pace(&mut self, shared: &Shared, stopping: bool) {
        let delivering = !stopping
            && self.health.circuit(Instant::now()) == Circuit::Closed
            && self
                .delivered_at
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        let counted = if delivering {
            self.behind.min(super::pace::PER_SUBSCRIBER)
        } else {
            0
        };
        if counted != self.paced {
            shared.pace.moved(self.paced, counted);
            self.paced = counted;
        }
    }

    /// Forgets what was read and not attempted.
    /// Drops what was read and not started; it is read again from the
    /// log (the cursor stays before it).
    fn clear_page(&mut self) {
        if let Some(first) = self.page.front() {
            self.next = self.next.min(first.offset());
        }
        for message in std::mem::take(&mut self.page) {
            self.held.release(&message);
        }
    }

    /// Whether anything is left to do without new messages.
    fn idle(&self) -> bool {
        self.page.is_empty() && self.open.is_empty() && self.caught_up
    }
}

/// Delivers `subscriber`'s messages from its cursor on until it has caught
/// up with the log and nothing is in flight or waiting for a retry.
async fn run(subscriber: Arc<Subscriber>, shared: Arc<Shared>) {
    let Some(broker) = shared.broker() else {
        stopped(&subscriber, &shared);
        return;
    };
    let Some(cursor) = cursor_of(&subscriber, &shared) else {
        stopped(&subscriber, &shared);
        return;
    };
    let start = subscriber.cursor();
    let mut work = Work {
        next: start,
        page: VecDeque::new(),
        open: BTreeSet::new(),
        retries: BinaryHeap::new(),
        redriven: Default::default(),
        health: cursor
            .health
            .lock()
            .unwrap_or_else(|| Health::new(shared.config.circuit_open_for)),
        caught_up: false,
        committed: start,
        committed_at: Instant::now(),
        held: Held {
            memory: broker.memory().clone(),
            bytes: 0,
        },
        behind: 0,
        delivered_at: None,
        paced: 0,
    };

    if !cursor.retries_loaded.swap(true, Ordering::AcqRel) {
        // Retries pending before a restart go on with their schedule.
        match broker.pending_retries(&subscriber).await {
            Ok(pending) => {
                let now = (Instant::now(), SystemTime::now());
                for retry in pending {
                    let wait = retry.due.duration_since(now.1).unwrap_or_default();
                    if work.open.insert(retry.offset) {
                        shared.pending.fetch_add(1, Ordering::AcqRel);
                        work.retries.push(Reverse(Due {
                            at: now.0 + wait,
                            offset: retry.offset,
                            attempts: retry.attempts,
                        }));
                    }
                }
            }
            Err(e) => {
                tracing::error!(subscriber = subscriber.id(), error = %e, "reading pending retries failed");
            }
        }
    }
    let mut in_flight = FuturesUnordered::new();
    loop {
        // An ordered subscriber gets one message at a time, and a failing
        // one holds back the rest until it is delivered or given up on.
        // Read each turn: a change of the subscriber applies at once.
        let ordered = subscriber.endpoint().ordered();
        let max_in_flight = if ordered {
            1
        } else {
            shared.config.max_in_flight
        };
        if !subscriber.is_active() {
            // Deregistered: what is read, open or waiting, and what it had
            // not read yet, is dropped.
            let held = work.page.len() + work.open.len();
            let unread = match broker.log_bounds(subscriber.topic().as_str()).await {
                Ok((_, end)) => end.saturating_sub(work.next),
                Err(_) => 0,
            };
            subscriber.record(Outcome::Dropped, held as u64 + unread);
            shared.finished(held + work.redriven.len());
            break;
        }
        // Handed to another replica: the attempts in flight finish (their
        // outcome is kept, so the new owner does not make them again),
        // nothing new starts.
        let handed = !super::lease::may_deliver(&subscriber, &shared);
        if !subscriber.is_enabled() || (handed && in_flight.is_empty()) {
            // Disabled, or handed over: nothing more goes out here; what is
            // open stays below the cursor, to go out once it is enabled
            // again (or from the new owner, whose attempts carry the same
            // webhook-id).
            shared.finished(work.page.len() + work.open.len() + work.redriven.len());
            work.clear_page();
            commit(&broker, &subscriber, &mut work, true).await;
            break;
        }
        if take_requests(cursor, &shared, &mut work) {
            settle(&broker, &subscriber, vec![circuit_closed(&subscriber)]).await;
        }
        // Fill the in-flight slots: due retries first, then new messages.
        // The circuit: open, nothing is attempted (a paused attempt is not
        // a failed one); half open, one probe at a time.
        let now = Instant::now();
        let circuit = work.health.circuit(now);
        cursor.circuit.set(circuit);
        let probe = circuit == Circuit::HalfOpen;
        let limit = if handed {
            0
        } else {
            work.health.limit(now, max_in_flight)
        };
        // Over the memory budget's half for deliveries, a worker waits for
        // what it holds to finish before reading more.
        let mut pressed = false;
        while in_flight.len() < limit {
            let now = Instant::now();
            if let Some(Reverse(due)) = work.retries.peek().copied() {
                if due.at <= now && (in_flight.is_empty() || !work.held.pressed()) {
                    work.retries.pop();
                    match read_one(&broker, &subscriber, due.offset).await {
                        Some(message) => {
                            work.held.add(&message);
                            in_flight.push(attempt(
                                &subscriber,
                                cursor,
                                message,
                                due.attempts,
                                probe,
                                &shared,
                            ));
                        }
                        None => {
                            // Retention removed it before it was delivered.
                            work.open.remove(&due.offset);
                            subscriber.record(Outcome::Dropped, 1);
                            shared.finished(1);
                            if due.attempts > 0 {
                                settle(&broker, &subscriber, vec![Settled::Forget(due.offset)])
                                    .await;
                            }
                        }
                    }
                    continue;
                }
                // Due but pressed: after an attempt in flight ends.
                pressed |= due.at <= now;
            }
            if ordered && !work.open.is_empty() {
                // The one open message is in flight or waits for its retry.
                break;
            }
            if let Some(message) = work.page.pop_front() {
                if !work.open.insert(message.offset()) {
                    // Already under way: a retry kept from before a restart
                    // (or in flight when a replay read it again).
                    work.held.release(&message);
                    shared.finished(1);
                    continue;
                }
                in_flight.push(attempt(&subscriber, cursor, message, 0, probe, &shared));
                continue;
            }
            if work.caught_up {
                break;
            }
            if work.held.pressed() && !in_flight.is_empty() {
                pressed = true;
                break;
            }
            let end = subscriber.log_end();
            if work.next >= end {
                // Nothing appended past it (an append moves the end before
                // it wakes this worker): no read needed to know.
                work.behind = end.saturating_sub(work.cursor());
                work.caught_up = true;
                break;
            }
            match broker
                .read(
                    subscriber.topic().as_str(),
                    work.next,
                    PAGE,
                    work.held.room(PAGE_BYTES),
                )
                .await
            {
                Ok(read) => {
                    work.behind = read.next.saturating_sub(work.cursor());
                    if read.first > work.next {
                        // Retention passed the cursor: those are gone.
                        let lost = read.first - work.next;
                        subscriber.record(Outcome::Dropped, lost);
                        work.next = read.first;
                    }
                    match read.messages.last() {
                        Some(last) => {
                            work.next = last.offset() + 1;
                            let mut messages = read.messages;
                            // What its filter skips is done with here: the
                            // cursor passes it, it is never attempted.
                            let endpoint = subscriber.endpoint();
                            if endpoint.filter().is_some() {
                                let before = messages.len();
                                messages.retain(|m| endpoint.wants(m));
                                let skipped = (before - messages.len()) as u64;
                                if skipped > 0 {
                                    subscriber.record(Outcome::Filtered, skipped);
                                }
                            }
                            shared.pending.fetch_add(messages.len(), Ordering::AcqRel);
                            for message in &messages {
                                work.held.add(message);
                            }
                            work.page.extend(messages);
                        }
                        None => work.caught_up = true,
                    }
                }
                Err(e) => {
                    tracing::error!(subscriber = subscriber.id(), error = %e, "reading the log failed");
                    work.caught_up = true;
                }
            }
        }
        commit(&broker, &subscriber, &mut work, false).await;
        work.pace(&shared, false);
        if in_flight.is_empty() && work.retries.is_empty() && work.idle() {
            // Nothing left: commit (before another worker could start
            // from the cursor), then stop, unless woken meanwhile.
            commit(&broker, &subscriber, &mut work, true).await;
            *cursor.health.lock() = Some(work.health);
            work.pace(&shared, true);
            let stop = {
                let mut flags = cursor.flags.lock();
                let woken = std::mem::take(&mut flags.woken);
                if !woken {
                    flags.running = false;
                }
                !woken
            };
            if stop {
                shared.stopped();
                return;
            }
            work.caught_up = false;
            continue;
        }
        let retry_at = match (
            work.retries.peek().map(|Reverse(d)| d.at),
            work.health.open_until(Instant::now()),
        ) {
            // Handed over: only the attempts in flight are waited for.
            _ if handed => None,
            // Pressed, a due retry waits for an attempt in flight to end
            // (there is one: nothing waits on pressure otherwise).
            _ if pressed && !in_flight.is_empty() => None,
            // Open: the next thing to do is the probe.
            (_, Some(until)) => Some(until),
            (at, _) => at,
        };
        tokio::select! {
            Some(tried) = in_flight.next(), if !in_flight.is_empty() => {
                record(&broker, &subscriber, cursor, &tried).await;
                let settled = finish(&subscriber, &shared, &mut work, tried);
                settle(&broker, &subscriber, settled).await;
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {}
            _ = cursor.wake.notified() => {
                cursor.flags.lock().woken = false;
                work.caught_up = false;
            }
        }
    }
    *cursor.health.lock() = Some(work.health);
    work.pace(&shared, true);
    cursor.flags.lock().running = false;
    shared.stopped();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The worker of a subscriber that cannot run (no broker, no state).
fn stopped(subscriber: &Subscriber, shared: &Shared) {
    if let Some(cursor) = cursor_of(subscriber, shared) {
        cursor.flags.lock().running = false;
    }
    shared.stopped();
}

/// Commits the cursor if it moved, at most every [`COMMIT_EVERY`] unless
/// `now`.
async fn commit(broker: &Broker, subscriber: &Subscriber, work: &mut Work, now: bool) {
    let cursor = work.cursor();
    if cursor <= work.committed || (!now && work.committed_at.elapsed() < COMMIT_EVERY) {
        return;
    }
    work.committed = cursor;
    work.committed_at = Instant::now();
    if let Err(e) = broker.commit_cursor(subscriber, cursor).await {
        tracing::error!(subscriber = subscriber.id(), error = %e, "committing the cursor failed");
    }
}

/// Takes what `redrive` and `rewind` asked for.
/// Returns whether this closed an open circuit.
fn take_requests(cursor: &Cursor, shared: &Shared, work: &mut Work) -> bool {
    let (redrive, rewind, close_circuit) = {
        let mut flags = cursor.flags.lock();
        (
            std::mem::take(&mut flags.redrive),
            flags.rewind.take(),
            std::mem::take(&mut flags.close_circuit),
        )
    };
    let closed = close_circuit && !work.health.is_closed();
    if close_circuit {
        work.health.close();
    }
    let now = Instant::now();
    for dead in redrive {
        if work.redriven.insert(dead.offset) {
            shared.pending.fetch_add(1, Ordering::AcqRel);
            work.retries.push(Reverse(Due {
                at: now,
                offset: dead.offset,
                attempts: 0,
            }));
        }
    }
    if let Some(from) = rewind {
        if from < work.next {
            // What was read past `from` is read again.
            shared.finished(work.page.len());
            work.clear_page();
            work.next = work.next.min(from);
        }
        work.caught_up = false;
    }
    closed
}

/// The event of `subscriber`'s circuit closing.
fn circuit_closed(subscriber: &Subscriber) -> Settled {
    Settled::Event(OpEvent::CircuitClosed {
        topic: subscriber.topic().to_string(),
        subscriber_id: subscriber.id().to_owned(),
    })
}

/// Keeps `tried` in the subscriber's attempt log.
async fn record(broker: &Broker, subscriber: &Subscriber, cursor: &Cursor, tried: &Tried) {
    let Some(at) = tried.seen.at else { return };
    let seq = {
        let mut last = cursor.last_attempt.lock();
        *last = broker_core::next_seq(*last, at);
        *last
    };
    let record = AttemptRecord {
        seq,
        message_id: tried.message.id().to_owned(),
        offset: tried.offset,
        attempt: tried.attempts + 1,
        duration_ms: u32::try_from(tried.seen.duration.as_millis()).unwrap_or(u32::MAX),
        status: tried.seen.status,
        error: tried.seen.error.clone(),
        response: tried.seen.response.clone(),
    };
    // Built only when someone takes spans.
    if let (Some(span), Some(parent), true) =
        (&tried.seen.span, tried.message.trace(), broker.is_tracing())
    {
        broker.span(attempt_span(subscriber, tried, &record, span, parent, at));
    }
    if let Err(e) = broker.record_attempt(subscriber, record).await {
        tracing::warn!(subscriber = subscriber.id(), error = %e, "recording an attempt failed");
    }
}

/// The span of an attempt, a child of its message's publish span.
fn attempt_span(
    subscriber: &Subscriber,
    tried: &Tried,
    record: &AttemptRecord,
    span: &broker_core::TraceContext,
    parent: &broker_core::TraceContext,
    at: SystemTime,
) -> broker_core::SpanRecord {
    use broker_core::SpanValue::{Int, Str};
    let mut attributes = vec![
        (
            "messaging.destination.name",
            Str(subscriber.topic().to_string()),
        ),
        ("messaging.message.id", Str(record.message_id.clone())),
        ("broker.subscriber.id", Str(subscriber.id().to_owned())),
        ("broker.attempt", Int(i64::from(record.attempt))),
    ];
    if let Some(status) = record.status {
        attributes.push(("http.response.status_code", Int(i64::from(status))));
    }
    if let Some(error) = &record.error {
        attributes.push(("error.type", Str(error.clone())));
    }
    broker_core::SpanRecord {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: parent.span_id,
        name: "deliver",
        kind: broker_core::SpanKind::Client,
        start: at,
        end: at + tried.seen.duration,
        ok: matches!(tried.result, Attempt::Delivered),
        attributes,
    }
}

/// Counts what an attempt came to, and puts a retry aside. Returns the
/// dead letter to keep when the delivery is given up on, and whether a
/// redriven one was delivered (its dead letter is then forgotten).
fn finish(subscriber: &Subscriber, shared: &Shared, work: &mut Work, tried: Tried) -> Vec<Settled> {
    work.held.release(&tried.message);
    let attempts = tried.attempts + 1;
    let mut settled = Vec::new();
    match tried.result {
        Attempt::Delivered => {
            work.delivered_at = Some(Instant::now());
            if !work.health.is_closed() {
                settled.push(circuit_closed(subscriber));
            }
            work.health.delivered();
        }
        Attempt::Failed { status, .. } => {
            let now = Instant::now();
            if work
                .health
                .failed(tried.probe, shared.config.circuit_after, now)
            {
                tracing::info!(
                    subscriber = subscriber.id(),
                    failures = work.health.failures(),
                    "circuit open"
                );
                settled.push(Settled::Event(OpEvent::CircuitOpened {
                    topic: subscriber.topic().to_string(),
                    subscriber_id: subscriber.id().to_owned(),
                    failures: work.health.failures(),
                }));
            }
            let since = work.health.failing_since.unwrap_or(now);
            if status == Some(410) {
                tracing::info!(
                    subscriber = subscriber.id(),
                    "the endpoint answered 410 Gone: disabling it"
                );
                settled.push(Settled::Disable(DisableReason::Gone));
            } else if since.elapsed() >= shared.config.disable_after {
                tracing::warn!(
                    subscriber = subscriber.id(),
                    failing_for = ?since.elapsed(),
                    "every attempt failed for the disable-after time: disabling it"
                );
                let since = SystemTime::now() - since.elapsed();
                settled.push(Settled::Disable(DisableReason::FailingSince(since)));
            }
        }
        Attempt::Refused => {}
    }
    let backoff = Backoff {
        base: shared.config.retry_base_delay,
        max: shared.config.retry_max_delay,
    };
    let wait = next_wait(
        tried.result,
        attempts,
        subscriber.endpoint().retry(),
        backoff,
        fastrand::f64(),
    );
    let outcome = match tried.result {
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
        Attempt::Failed { .. } if wait.is_some() => {
            let wait = wait.expect("checked");
            subscriber.record(Outcome::Retried, 1);
            work.retries.push(Reverse(Due {
                at: Instant::now() + wait,
                offset: tried.offset,
                attempts,
            }));
            // A redelivered dead letter is below the cursor: a restart
            // leaves it a dead letter, so its retries are not kept.
            if !work.redriven.contains(&tried.offset) {
                settled.push(Settled::Retry(PendingRetry {
                    offset: tried.offset,
                    attempts,
                    due: SystemTime::now() + wait,
                }));
            }
            return settled;
        }
        Attempt::Failed { .. } => Outcome::Failed,
    };
    work.open.remove(&tried.offset);
    let redriven = work.redriven.remove(&tried.offset);
    subscriber.record(outcome, 1);
    shared.finished(1);
    if tried.attempts > 0 && !redriven {
        // It had a retry kept: done with now.
        settled.push(Settled::Forget(tried.offset));
    }
    match (outcome, tried.result) {
        (Outcome::Delivered, _) if redriven => settled.push(Settled::Undead(tried.offset)),
        (Outcome::Failed, Attempt::Failed { status, error, .. }) => {
            subscriber.record(Outcome::DeadLettered, 1);
            // Written before a `Disable`, so a 410's message is kept.
            settled.insert(
                0,
                Settled::Dead(DeadLetter {
                    message_id: tried.message.id().to_owned(),
                    offset: tried.offset,
                    attempts,
                    last_status: status,
                    last_error: error.to_owned(),
                    failed_at: SystemTime::now(),
                }),
            );
        }
        _ => {}
    }
    settled
}

/// What `finish` leaves for the broker to write.
enum Settled {
    /// Keep this dead letter.
    Dead(DeadLetter),
    /// A redriven dead letter at this offset was delivered.
    Undead(u64),
    /// Keep this pending retry (so that a restart goes on with it).
    Retry(PendingRetry),
    /// The delivery at this offset, which had a retry kept, is done with.
    Forget(u64),
    /// Disable the subscriber (`410 Gone`, or failing for too long).
    Disable(DisableReason),
    /// Say this on `broker.events`.
    Event(OpEvent),
}

/// Writes what `finish` settled.
async fn settle(broker: &Broker, subscriber: &Subscriber, settled: Vec<Settled>) {
    for one in settled {
        let written = match one {
            Settled::Dead(dead) => broker.dead_letter(subscriber, &dead).await,
            Settled::Undead(offset) => broker.forget_dead_letter(subscriber, offset).await,
            Settled::Retry(retry) => broker.keep_retry(subscriber, retry).await,
            Settled::Forget(offset) => broker.forget_retry(subscriber, offset).await,
            Settled::Disable(reason) => broker.disable_subscriber(subscriber, reason).await,
            Settled::Event(event) => {
                broker.emit(event).await;
                Ok(())
            }
        };
        if let Err(e) = written {
            tracing::error!(subscriber = subscriber.id(), error = %e, "settling a delivery failed");
        }
    }
}

/// The message at `offset`, if the log still has it.
async fn read_one(broker: &Broker, subscriber: &Subscriber, offset: u64) -> Option<Arc<Message>> {
    let read = broker
        .read(subscriber.topic().as_str(), offset, 1, usize::MAX)
        .await
        .ok()?;
    read.messages.into_iter().find(|m| m.offset() == offset)
}

/// One attempt, bounded by the request timeout once its host has a free
/// slot (waiting for one is queueing, not attempting).
async fn attempt(
    subscriber: &Subscriber,
    cursor: &Cursor,
    message: Arc<Message>,
    attempts: u32,
    probe: bool,
    shared: &Shared,
) -> Tried {
    let offset = message.offset();
    let (result, seen) = attempt_once(subscriber, cursor, &message, shared).await;
    Tried {
        offset,
        message,
        attempts,
        probe,
        result,
        seen,
    }
}

async fn attempt_once(
    subscriber: &Subscriber,
    cursor: &Cursor,
    message: &Message,
    shared: &Shared,
) -> (Attempt, Seen) {
    let prepared = Prepared::current(subscriber, cursor, shared);
    // The attempt's span: a child of the message's publish span.
    let span = message.trace().map(broker_core::TraceContext::child);
    // The semaphore is never closed; `ok()` only avoids a panic path.
    let _slot = prepared.host_slots.acquire().await.ok();
    let send = async {
        // One reference count per attempt; rebuilt only after a rotation.
        let signers = {
            let mut signers = cursor.signers.lock();
            if signers.version != subscriber.secrets_version() {
                *signers = Arc::new(Signers::of(subscriber));
            }
            signers.clone()
        };
        let request = build_request(
            &prepared.base_headers,
            &signers,
            &prepared.endpoint,
            message,
            span.as_ref(),
        )?;
        let response = shared.client.request(request).await?;
        let attempt = Attempt::from_response(response.status(), response.headers());
        let status = response.status().as_u16();
        // Read a bounded amount so the connection can go back to the pool
        // (a longer body is abandoned with its connection), keeping its
        // start for the attempt log.
        let mut body = Limited::new(response.into_body(), shared.config.max_response_bytes);
        let mut kept = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                let room = RESPONSE_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok::<_, BoxError>((attempt, status, bytes::Bytes::from(kept)))
    };
    let metrics = &shared.metrics;
    metrics.in_flight.inc();
    let at = SystemTime::now();
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(shared.config.request_timeout, send).await;
    let duration = started.elapsed();
    metrics.latency.observe(duration.as_secs_f64());
    metrics.in_flight.dec();
    let mut seen = Seen {
        at: Some(at),
        duration,
        span: span.clone(),
        ..Seen::default()
    };
    let attempt = match outcome {
        Ok(Ok((attempt, status, response))) => {
            if let Attempt::Failed { .. } = attempt {
                tracing::debug!(
                    subscriber = subscriber.id(),
                    ?attempt,
                    "delivery attempt failed"
                );
            }
            seen.status = Some(status);
            seen.response = Some(response);
            attempt
        }
        Ok(Err(error)) if is_refusal(&*error) => {
            seen.error = Some(format!("refused by the destination policy: {error}"));
            Attempt::Refused
        }
        Ok(Err(error)) => {
            tracing::debug!(subscriber = subscriber.id(), %error, "delivery attempt failed");
            seen.error = Some(describe(&*error));
            Attempt::Failed {
                retryable: true,
                retry_after: None,
                status: None,
                error: "the connection failed or broke",
            }
        }
        Err(_) => {
            tracing::debug!(subscriber = subscriber.id(), "delivery attempt timed out");
            seen.error = Some(format!(
                "timeout: no answer within {} ms",
                shared.config.request_timeout.as_millis()
            ));
            Attempt::Failed {
                retryable: true,
                retry_after: None,
                status: None,
                error: "no answer within the request timeout",
            }
        }
    };
    (attempt, seen)
}

/// Why a request got no response, for the attempt log: the kind first
/// (connection refused, TLS, DNS, the connection broke), then the
/// innermost cause.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut kind = None;
    let mut innermost = error;
    let mut next = Some(error);
    while let Some(e) = next {
        innermost = e;
        if kind.is_none() {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                kind = match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => Some("connection refused"),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                        Some("the connection broke")
                    }
                    std::io::ErrorKind::TimedOut => Some("connect timeout"),
                    _ => None,
                };
            } else if e.downcast_ref::<rustls::Error>().is_some() {
                kind = Some("TLS");
            }
        }
        next = e.source();
    }
    let kind = kind.unwrap_or("the connection failed");
    format!("{kind}: {innermost}")
}

/// Stops `subscriber`'s worker at once (it was deregistered): what is in
/// flight is abandoned, what waits is dropped and counted.
pub(crate) fn stop(subscriber: &Arc<Subscriber>, shared: &Arc<Shared>) {
    if let Some(cursor) = cursor_of(subscriber, shared) {
        cursor.wake.notify_one();
    }
}

/// A subscriber's circuit (closed when no worker ever ran).
pub(crate) fn circuit(subscriber: &Subscriber) -> Circuit {
    subscriber
        .notifier_state_if::<Cursor>()
        .map_or(Circuit::Closed, |c| c.circuit.get())
}
