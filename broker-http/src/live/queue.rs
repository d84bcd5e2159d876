//! The bounded queue of one live connection.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Poll, Waker},
};

use broker_core::Message;
use bytes::Bytes;
use parking_lot::Mutex;

use super::Overflow;

/// One published message on its way to live connections, with each
/// transport's encoding made once and shared by all of them.
#[derive(Debug)]
pub(crate) struct LiveEvent {
    pub(crate) message: Arc<Message>,
    pub(crate) sse: OnceLock<Bytes>,
    pub(crate) ws: OnceLock<tokio_tungstenite::tungstenite::Utf8Bytes>,
}

impl LiveEvent {
    pub(crate) fn new(message: Arc<Message>) -> Self {
        LiveEvent {
            message,
            sse: OnceLock::new(),
            ws: OnceLock::new(),
        }
    }
}

/// What a connection does next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Send this.
    Event(Arc<LiveEvent>),
    /// The queue overflowed (with [`Overflow::Disconnect`]): say
    /// `SLOW_CONSUMER` and hang up.
    Overflowed,
    /// The hub is closing: say goodbye.
    Closed,
    /// This topic was deleted: stop listening to it, and say so.
    TopicDeleted(broker_core::TopicName),
}

/// A connection's queue: bounded by `capacity`; the publisher side
/// ([`LiveQueue::push`]) never waits.
#[derive(Debug)]
pub(crate) struct LiveQueue {
    /// Held to push or pop one item, never across an `.await`; the waker is
    /// woken after the guard is dropped.
    state: Mutex<State>,
    capacity: usize,
    overflow: Overflow,
    sent: AtomicU64,
    dropped: AtomicU64,
    /// The hub's count of queues that overflowed, bumped at the moment it
    /// happens (an SSE stream only notices when its client reads again).
    slow_consumers: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Arc<LiveEvent>>,
    overflowed: bool,
    closed: bool,
    /// Topics deleted since the connection last looked.
    deleted: Vec<broker_core::TopicName>,
    waker: Option<Waker>,
}

impl LiveQueue {
    pub(crate) fn new(capacity: usize, overflow: Overflow, slow_consumers: Arc<AtomicU64>) -> Self {
        LiveQueue {
            state: Mutex::default(),
            capacity: capacity.max(1),
            overflow,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slow_consumers,
        }
    }

    /// Queues `event`, or applies the overflow rule when the queue is full.
    pub(crate) fn push(&self, event: &Arc<LiveEvent>) {
        let waker = {
            let mut state = self.state.lock();
            if state.overflowed || state.closed {
                return;
            }
            if state.items.len() >= self.capacity {
                match self.overflow {
                    Overflow::Disconnect => {
                        // What is queued will not be sent: count it.
                        let lost = state.items.len() as u64 + 1;
                        self.dropped.fetch_add(lost, Ordering::Relaxed);
                        state.items = VecDeque::new();
                        state.overflowed = true;
                        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        return wake(state.waker.take());
                    }
                    Overflow::DropOldest => {
                        state.items.pop_front();
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            state.items.push_back(event.clone());
            state.waker.take()
        };
        wake(waker);
    }

    /// Ends the queue: the connection's next [`Next`] is `Closed`.
    pub(crate) fn close(&self) {
        let waker = {
            let mut state = self.state.lock();
            state.closed = true;
            state.waker.take()
        };
        wake(waker);
    }

    /// Tells the connection `topic` was deleted (before anything queued:
    /// what is queued for it is then not wanted).
    pub(crate) fn topic_deleted(&self, topic: broker_core::TopicName) {
        let waker = {
            let mut state = self.state.lock();
            state.deleted.push(topic);
            state.waker.take()
        };
        wake(waker);
    }

    /// The next thing to do, registering `cx` to be woken when there is one.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut state = self.state.lock();
        if state.closed {
            return Poll::Ready(Next::Closed);
        }
        if state.overflowed {
            return Poll::Ready(Next::Overflowed);
        }
        if let Some(topic) = state.deleted.pop() {
            return Poll::Ready(Next::TopicDeleted(topic));
        }
        match state.items.pop_front() {
            Some(event) => Poll::Ready(Next::Event(event)),
            None => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// Waits for the next thing to do.
    pub(crate) async fn next(&self) -> Next {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// An event already queued, without waiting (for batching writes).
    pub(crate) fn try_next(&self) -> Option<Arc<LiveEvent>> {
        let mut state = self.state.lock();
        if state.closed || state.overflowed {
            return None;
        }
        state.items.pop_front()
    }

    /// Waits until the queue overflows or closes (to give up a write the
    /// client is not reading).
    pub(crate) async fn ended(&self) -> Next {
        poll_fn(|cx| {
            let mut state = self.state.lock();
            if state.closed {
                return Poll::Ready(Next::Closed);
            }
            if state.overflowed {
                return Poll::Ready(Next::Overflowed);
            }
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Counts `n` events sent.
    pub(crate) fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// (sent, dropped) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// Events with one-byte payloads `0..n`.
    fn events(n: u8) -> Vec<Arc<LiveEvent>> {
        let payloads: Vec<[u8; 1]> = (0..n).map(|i| [i]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        super::super::published(&refs)
            .into_iter()
            .map(|m| Arc::new(LiveEvent::new(m)))
            .collect()
    }

    fn next(q: &LiveQueue) -> Poll<Next> {
        q.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn disconnect_overflow_ends_the_queue_and_counts_what_was_lost() {
        let q = LiveQueue::new(2, Overflow::Disconnect, Arc::default());
        let events = events(4);
        for e in &events[..3] {
            q.push(e);
        }
        assert!(matches!(next(&q), Poll::Ready(Next::Overflowed)));
        assert_eq!(q.counts(), (0, 3));
        // Later pushes are ignored.
        q.push(&events[3]);
        assert!(matches!(next(&q), Poll::Ready(Next::Overflowed)));
    }

    #[test]
    fn drop_oldest_overflow_keeps_the_newest() {
        let q = LiveQueue::new(2, Overflow::DropOldest, Arc::default());
        for e in &events(5) {
            q.push(e);
        }
        let mut kept = Vec::new();
        while let Poll::Ready(Next::Event(e)) = next(&q) {
            kept.push(e.message.payload()[0]);
        }
        assert_eq!(kept, [3, 4]);
        assert_eq!(q.counts().1, 3);
    }

    #[test]
    fn close_wins_over_queued_events() {
        let q = LiveQueue::new(4, Overflow::Disconnect, Arc::default());
        q.push(&events(1)[0]);
        q.close();
        assert!(matches!(next(&q), Poll::Ready(Next::Closed)));
    }
}
