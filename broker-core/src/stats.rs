//! Counters shared by the broker, the registry and subscribers (per
//! topic, reachable without the registry lock), and the result of a
//! registration.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{DeliveryCounts, DeliveryStats};

/// A fetch or pull waiting for a publish on a topic, counted while it
/// lives (also when its future is dropped half-way: a client gone).
pub(crate) struct Waiting<'a>(&'a TopicStats);

impl<'a> Waiting<'a> {
    pub(crate) fn on(stats: &'a TopicStats) -> Self {
        stats.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(stats)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A publish appending to a topic, counted while it lives (also when its
/// future is dropped half-way), so that deleting the topic waits for it.
pub(crate) struct Publishing<'a>(&'a TopicStats);

impl<'a> Publishing<'a> {
    /// Counts a publish on the topic, or `None` when the topic is being
    /// deleted (the publish is then refused: its topic is gone).
    pub(crate) fn on(stats: &'a TopicStats) -> Option<Self> {
        // SeqCst with `deleted` in `TopicStats::retire`: either the
        // deleter sees this count, or this publish sees the flag.
        stats.publishing.fetch_add(1, Ordering::SeqCst);
        let guard = Publishing(stats);
        (!stats.deleted.load(Ordering::SeqCst)).then_some(guard)
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if self.0.publishing.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.deleted.load(Ordering::SeqCst)
        {
            self.0.published_all.notify_waiters();
        }
    }
}

/// Per-topic counters, reachable without the registry lock.
#[derive(Debug, Default)]
pub(crate) struct TopicStats {
    pub(crate) published: AtomicU64,
    /// The offset after the last message known to be in the topic's log
    /// (kept as publishes go, for lag without a store call).
    pub(crate) log_end: AtomicU64,
    /// Outcomes of all deliveries on the topic, including those of
    /// subscribers since deregistered.
    pub(crate) deliveries: ShardedStats,
    /// Wakes fetches waiting for the next message ([`Broker::fetch`](crate::Broker::fetch)).
    pub(crate) appended: tokio::sync::Notify,
    /// Fetches waiting: a publish only wakes them when there are some.
    pub(crate) waiting: std::sync::atomic::AtomicUsize,
    /// Publishes appending now ([`Publishing`]).
    publishing: std::sync::atomic::AtomicUsize,
    /// Set when the topic is being deleted: no publish appends any more.
    deleted: std::sync::atomic::AtomicBool,
    /// Wakes a deletion waiting for the last publish to finish.
    published_all: tokio::sync::Notify,
}

impl TopicStats {
    /// Refuses every publish from now on and waits until those appending
    /// have finished (answered), so that nothing is appended to the log
    /// once its deletion starts. Until [`Retired::finish`], dropping the
    /// result (the deletion failed, or its caller went away, even while
    /// this waits) takes publishes again.
    pub(crate) async fn retire(&self) -> Retired<'_> {
        let retired = Retired {
            stats: self,
            finished: false,
        };
        self.deleted.store(true, Ordering::SeqCst);
        loop {
            let done = self.published_all.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.publishing.load(Ordering::SeqCst) == 0 {
                return retired;
            }
            done.await;
        }
    }
}

/// A topic whose publishes are refused while it is deleted
/// ([`TopicStats::retire`]).
pub(crate) struct Retired<'a> {
    stats: &'a TopicStats,
    finished: bool,
}

impl Retired<'_> {
    /// The topic is gone: its publishes stay refused.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Retired<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.stats.deleted.store(false, Ordering::SeqCst);
        }
    }
}

/// Counters written from every thread that delivers for a topic: split into
/// cache-line-sized shards, each thread writing to its own one, so two
/// cores delivering for one topic do not fight over one cache line.
#[derive(Debug, Default)]
pub(crate) struct ShardedStats {
    shards: [Padded; SHARDS],
}

const SHARDS: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(DeliveryStats);

impl ShardedStats {
    /// This thread's shard: threads take shards round robin.
    fn shard() -> usize {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS as u64) as usize;
        }
        SHARD.with(|s| *s)
    }

    pub(crate) fn record(&self, outcome: crate::Outcome, n: u64) {
        self.shards[Self::shard()].0.record(outcome, n);
    }

    pub(crate) fn snapshot(&self) -> DeliveryCounts {
        self.shards
            .iter()
            .map(|s| s.0.snapshot())
            .fold(DeliveryCounts::default(), |mut sum, c| {
                sum.delivered += c.delivered;
                sum.failed += c.failed;
                sum.dropped += c.dropped;
                sum.refused += c.refused;
                sum.retried += c.retried;
                sum.dead_lettered += c.dead_lettered;
                sum.dead_letters_evicted += c.dead_letters_evicted;
                sum.filtered += c.filtered;
                sum
            })
    }
}

/// The result of a registration: the registered item and whether this call
/// created it (`false` when it replayed an earlier registration).
#[derive(Debug, Clone)]
pub struct Registration<T> {
    /// The publisher or subscriber.
    pub item: T,
    /// True if this call created it.
    pub created: bool,
}

impl<T> Registration<T> {
    pub(crate) fn created(item: T) -> Self {
        Registration {
            item,
            created: true,
        }
    }
    pub(crate) fn existing(item: T) -> Self {
        Registration {
            item,
            created: false,
        }
    }
}
