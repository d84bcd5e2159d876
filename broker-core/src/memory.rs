//! The default [`Store`]: topic logs in memory, registrations nowhere but
//! the broker's own index. Pure: no I/O, no task, no clock but
//! `SystemTime::now` at append.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::{
    store::{
        message_id, new_id_prefix, Change, DeadLetter, Logs, NewMessage, Progress, Read, Record,
        Registrations,
    },
    Appended, AttemptQuery, AttemptRecord, AttemptRings, Error, IdempotencyLimits, KeyTable,
    MemoryBudget, Message, Store, TopicName,
};

/// How long and how much of each topic's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages older than this go. Default 24 h.
    pub age: Duration,
    /// A topic's log keeps at most this many payload bytes (on disk:
    /// file bytes); the oldest go first. Default 1 GiB.
    pub bytes_per_topic: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            age: Duration::from_secs(24 * 3600),
            bytes_per_topic: 1 << 30,
        }
    }
}

/// Topic logs kept in memory, bounded by [`Retention`] and by one byte
/// budget shared by all topics. Each message counts its payload and a
/// fixed 160 bytes for its bookkeeping.
///
/// Registrations are not kept (the broker's own index is the only copy):
/// [`Registrations::load`] finds nothing and [`Registrations::save`] does nothing but
/// forget a removed subscriber's dead letters, which it keeps, bounded.
///
/// # Examples
///
/// ```
/// use std::time::SystemTime;
/// use broker_core::{Logs, MemoryStore, NewMessage, Retention, TopicName};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new(Retention::default(), 1 << 20);
/// let topic = TopicName::new("t")?;
/// let new = |p: &'static str| NewMessage { content_type: None, payload: p.into(), published_at: SystemTime::now(), event_type: None, idempotency: None, trace: None };
/// let numbered = store.append(&topic, vec![new("a"), new("b")]).await?;
/// assert_eq!((numbered[0].offset(), numbered[1].offset()), (0, 1));
/// let read = store.read(&topic, 1, 10, usize::MAX).await?;
/// assert_eq!(read.messages[0].payload().as_ref(), b"b");
/// assert_eq!((read.first, read.next), (0, 2));
/// # Ok::<_, broker_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    retention: Retention,
    /// Shared with deliveries: the logs evict while it is over.
    budget: MemoryBudget,
    /// Payload bytes held by all logs (also counted in `budget`).
    held: AtomicUsize,
    /// Held for look-ups and inserts only; a log's own lock is taken after
    /// this one is dropped.
    logs: RwLock<HashMap<TopicName, Arc<Mutex<Log>>>>,
    /// The idempotency keys of the logs' messages, checked under each
    /// log's lock.
    keys: KeyTable,
    /// Dead letters by subscriber, by offset: at most the broker's cap a
    /// subscriber, the oldest evicted first.
    dead: Mutex<HashMap<String, BTreeMap<u64, DeadLetter>>>,
    /// The attempt logs.
    attempts: AttemptRings,
}

/// Dead letters kept per subscriber (or consumer group) by default, in
/// every store: [`Limits::max_dead_letters`](crate::Limits::max_dead_letters).
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// What a retained message costs beyond its payload: the `Message`, its
/// id and the reference to it (measured: about 150 bytes with mimalloc),
/// so that small messages are bounded by the budget too.
pub(crate) const MESSAGE_OVERHEAD: usize = 160;

fn cost(message: &Message) -> usize {
    message.held_bytes()
}

#[derive(Debug)]
struct Log {
    prefix: String,
    messages: VecDeque<Arc<Message>>,
    next: u64,
    bytes: u64,
}

impl Log {
    fn first(&self) -> u64 {
        self.next - self.messages.len() as u64
    }

    fn pop(&mut self, held: &AtomicUsize, budget: &MemoryBudget) -> bool {
        let Some(old) = self.messages.pop_front() else {
            return false;
        };
        self.bytes -= cost(&old) as u64;
        held.fetch_sub(cost(&old), Ordering::Relaxed);
        budget.release_cached(cost(&old));
        true
    }
}

impl MemoryStore {
    /// A store keeping each topic's log by `retention`, and at most
    /// `budget` bytes across all topics: past it, the oldest
    /// messages of the topic being appended to go first, then those of
    /// others.
    pub fn new(retention: Retention, budget: usize) -> Self {
        MemoryStore::with_budget(retention, MemoryBudget::new(budget))
    }

    /// A store keeping each topic's log by `retention` within `budget`,
    /// shared with others: while the budget is over (whoever charged it),
    /// the oldest messages of the topic being appended to go first, then
    /// those of others.
    pub fn with_budget(retention: Retention, budget: MemoryBudget) -> Self {
        MemoryStore {
            retention,
            keys: KeyTable::new(IdempotencyLimits::default(), budget.clone()),
            attempts: AttemptRings::new(budget.clone()),
            budget,
            held: AtomicUsize::new(0),
            logs: RwLock::default(),
            dead: Mutex::default(),
        }
    }

    /// The same, remembering idempotency keys within `limits` (default:
    /// [`IdempotencyLimits::default`]).
    pub fn with_idempotency(mut self, limits: IdempotencyLimits) -> Self {
        self.keys = KeyTable::new(limits, self.budget.clone());
        self
    }

    /// Bytes held by all logs (payloads and bookkeeping).
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn log(&self, topic: &TopicName) -> Option<Arc<Mutex<Log>>> {
        self.logs.read().get(topic).cloned()
    }

    fn log_or_create(&self, topic: &TopicName) -> Arc<Mutex<Log>> {
        if let Some(log) = self.log(topic) {
            return log;
        }
        self.logs
            .write()
            .entry(topic.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Log {
                    prefix: new_id_prefix(),
                    messages: VecDeque::new(),
                    next: 0,
                    bytes: 0,
                }))
            })
            .clone()
    }

    /// Evicts the oldest messages of other topics while the budget is
    /// passed. Their locks are only tried: a log busy appending is skipped
    /// (it evicts for itself), so two logs never wait on each other.
    fn evict_elsewhere(&self, except: &TopicName) {
        let logs: Vec<_> = self
            .logs
            .read()
            .iter()
            .filter(|(name, _)| *name != except)
            .map(|(_, log)| log.clone())
            .collect();
        while self.budget.is_over() {
            let mut freed = false;
            for log in &logs {
                if let Some(mut log) = log.try_lock() {
                    freed |= log.pop(&self.held, &self.budget);
                }
                if !self.budget.is_over() {
                    return;
                }
            }
            if !freed {
                return;
            }
        }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        // The budget may outlive the store (shared with others).
        self.budget.release_cached(self.held_bytes());
    }
}

impl Default for MemoryStore {
    /// Default retention and a 512 MiB budget.
    fn default() -> Self {
        MemoryStore::new(Retention::default(), 512 << 20)
    }
}

#[async_trait]
impl Registrations for MemoryStore {
    async fn load(&self) -> Result<Vec<Record>, Error> {
        Ok(Vec::new())
    }

    async fn save(&self, change: Change<'_>) -> Result<(), Error> {
        if let Change::Remove { id } = change {
            self.dead.lock().remove(id);
            self.attempts.forget(id);
        }
        Ok(())
    }
}

#[async_trait]
impl Logs for MemoryStore {
    async fn delete_topic(&self, topic: &TopicName) -> Result<(), Error> {
        let removed = self.logs.write().remove(topic);
        if let Some(log) = removed {
            let mut log = log.lock();
            while log.pop(&self.held, &self.budget) {}
            self.keys.forget_topic(topic);
        }
        Ok(())
    }

    async fn append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, Error> {
        let log = self.log_or_create(topic);
        let out = {
            let mut log = log.lock();
            let expired = SystemTime::now()
                .checked_sub(self.retention.age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            while log
                .messages
                .front()
                .is_some_and(|m| m.published_at() < expired)
            {
                log.pop(&self.held, &self.budget);
            }
            // Keys are checked and remembered under the log's lock: two
            // appends with one key are ordered by it.
            self.keys.append_with(topic, messages, |messages| {
                let mut out = Vec::with_capacity(messages.len());
                for new in messages {
                    let offset = log.next;
                    let message = Arc::new(
                        Message::new(
                            message_id(&log.prefix, offset),
                            offset,
                            topic.clone(),
                            new.content_type,
                            new.payload,
                            new.published_at,
                        )
                        .with_event_type(new.event_type)
                        .with_trace(new.trace),
                    );
                    log.next += 1;
                    let size = cost(&message);
                    log.bytes += size as u64;
                    self.held.fetch_add(size, Ordering::Relaxed);
                    self.budget.add_cached(size);
                    log.messages.push_back(message.clone());
                    out.push(message);
                }
                // Keep what was just appended: a message larger than the
                // budgets is still handed out, and goes at the next append.
                let keep = out.len();
                while log.messages.len() > keep
                    && (log.bytes > self.retention.bytes_per_topic || self.budget.is_over())
                {
                    log.pop(&self.held, &self.budget);
                }
                Ok::<_, Error>(out)
            })?
        };
        if self.budget.is_over() {
            self.evict_elsewhere(topic);
        }
        Ok(out)
    }

    async fn read(
        &self,
        topic: &TopicName,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, Error> {
        let Some(log) = self.log(topic) else {
            return Ok(Read::default());
        };
        let log = log.lock();
        let first = log.first();
        let start = from.max(first);
        let mut read = Read {
            messages: Vec::new(),
            first,
            next: log.next,
        };
        let mut bytes = 0usize;
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        for message in log.messages.iter().skip(skip).take(max_messages) {
            bytes += message.payload().len();
            if bytes > max_bytes && !read.messages.is_empty() {
                break;
            }
            read.messages.push(message.clone());
        }
        Ok(read)
    }

    async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64), Error> {
        Ok(self.log(topic).map_or((0, 0), |log| {
            let log = log.lock();
            (log.first(), log.next)
        }))
    }
}

#[async_trait]
impl Progress for MemoryStore {
    async fn put_dead_letter(
        &self,
        subscriber: &str,
        dead: &DeadLetter,
        keep: usize,
    ) -> Result<u64, Error> {
        let mut all = self.dead.lock();
        let mine = all.entry(subscriber.to_owned()).or_default();
        mine.insert(dead.offset, dead.clone());
        let mut evicted = 0;
        while mine.len() > keep.max(1) {
            mine.pop_first();
            evicted += 1;
        }
        Ok(evicted)
    }

    async fn remove_dead_letter(&self, subscriber: &str, offset: u64) -> Result<(), Error> {
        if let Some(mine) = self.dead.lock().get_mut(subscriber) {
            mine.remove(&offset);
        }
        Ok(())
    }

    async fn record_attempts(
        &self,
        _topic: &TopicName,
        subscriber: &str,
        attempts: Vec<AttemptRecord>,
        keep: usize,
    ) -> Result<(), Error> {
        let not_before = crate::not_before(self.retention.age, SystemTime::now());
        self.attempts.record(subscriber, attempts, keep, not_before);
        Ok(())
    }

    async fn attempts(
        &self,
        _topic: &TopicName,
        subscriber: &str,
        query: &AttemptQuery,
    ) -> Result<Vec<AttemptRecord>, Error> {
        let not_before = crate::not_before(self.retention.age, SystemTime::now());
        Ok(self.attempts.list(subscriber, query, not_before))
    }

    async fn dead_letters(&self, subscriber: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        Ok(self
            .dead
            .lock()
            .get(subscriber)
            .map(|mine| mine.values().take(limit).cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn memory(&self) -> MemoryBudget {
        self.budget.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: usize = MESSAGE_OVERHEAD;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn new(size: usize) -> NewMessage {
        NewMessage {
            content_type: None,
            payload: vec![b'x'; size].into(),
            published_at: SystemTime::now(),
            event_type: None,
            trace: None,
            idempotency: None,
        }
    }

    #[test]
    fn offsets_are_dense_and_survive_eviction() {
        block_on(async {
            let store = MemoryStore::new(
                Retention {
                    age: Duration::from_secs(3600),
                    // Two 4-byte messages fit, not three.
                    bytes_per_topic: (2 * (4 + O) + 1) as u64,
                },
                1 << 20,
            );
            let t = TopicName::new("t").unwrap();
            for i in 0..5 {
                let m = store.append(&t, vec![new(4)]).await.unwrap();
                assert_eq!(m[0].offset(), i);
            }
            let read = store.read(&t, 0, 100, usize::MAX).await.unwrap();
            assert_eq!((read.first, read.next), (3, 5));
            let offsets: Vec<_> = read.messages.iter().map(|m| m.offset()).collect();
            assert_eq!(offsets, [3, 4]);
            assert_eq!(store.held_bytes(), 2 * (4 + O));
            // Ids carry the offset and one prefix per log.
            assert!(read.messages[0].id().ends_with("000000000003"));
            assert!(crate::store::same_log(
                read.messages[0].id(),
                read.messages[1].id()
            ));
            let u = TopicName::new("u").unwrap();
            let other = store.append(&u, vec![new(1)]).await.unwrap();
            assert!(!crate::store::same_log(
                other[0].id(),
                read.messages[0].id()
            ));
        });
    }

    #[test]
    fn the_budget_is_shared_and_evicts_others_when_needed() {
        block_on(async {
            let budget = 100 + 2 * O;
            let store = MemoryStore::new(Retention::default(), budget);
            let (a, b) = (TopicName::new("a").unwrap(), TopicName::new("b").unwrap());
            store.append(&a, vec![new(60)]).await.unwrap();
            store.append(&b, vec![new(30)]).await.unwrap();
            assert_eq!(store.held_bytes(), 90 + 2 * O);
            // b's new message pushes past the budget: b's own older one
            // goes first, which is enough.
            store.append(&b, vec![new(30)]).await.unwrap();
            assert_eq!(store.held_bytes(), 90 + 2 * O);
            assert_eq!(store.bounds(&a).await.unwrap(), (0, 1));
            assert_eq!(store.bounds(&b).await.unwrap(), (1, 2));
            // A message b cannot make room for by itself: a's go.
            store.append(&b, vec![new(80 + O)]).await.unwrap();
            assert!(store.held_bytes() <= budget, "{}", store.held_bytes());
            assert_eq!(store.bounds(&a).await.unwrap(), (1, 1));
            // Larger than the whole budget: handed out, not kept past the
            // next append.
            let huge = store.append(&a, vec![new(5 * budget)]).await.unwrap();
            assert_eq!(huge[0].offset(), 1);
            store.append(&a, vec![new(1)]).await.unwrap();
            assert!(store.held_bytes() <= budget);
        });
    }

    #[test]
    fn what_others_charge_to_a_shared_budget_makes_the_logs_evict() {
        block_on(async {
            let budget = MemoryBudget::new(100 + 2 * O);
            let store = MemoryStore::with_budget(Retention::default(), budget.clone());
            let a = TopicName::new("a").unwrap();
            store.append(&a, vec![new(40), new(40)]).await.unwrap();
            assert_eq!(budget.used(), 80 + 2 * O);
            // Deliveries hold 50 bytes the log does not know of: the next
            // append evicts until the whole is within the budget.
            let in_flight = budget.charge(50);
            store.append(&a, vec![new(10)]).await.unwrap();
            assert!(!budget.is_over(), "{}", budget.used());
            assert_eq!(store.bounds(&a).await.unwrap(), (1, 3));
            assert_eq!(budget.pinned(), 50, "only the log's bytes can be evicted");
            drop(in_flight);
            drop(store);
            assert_eq!(budget.used(), 0, "a dropped store gives its bytes back");
        });
    }

    #[test]
    fn dead_letters_are_bounded_and_evictions_told() {
        block_on(async {
            let store = MemoryStore::default();
            let dead = |offset: u64| DeadLetter {
                message_id: format!("msg_{offset}"),
                offset,
                attempts: 1,
                last_status: Some(500),
                last_error: "the endpoint answered with an error status".into(),
                failed_at: SystemTime::UNIX_EPOCH,
            };
            let mut evicted = 0;
            for offset in 0..MAX_DEAD_LETTERS as u64 + 2 {
                evicted += store
                    .put_dead_letter("s", &dead(offset), MAX_DEAD_LETTERS)
                    .await
                    .unwrap();
            }
            assert_eq!(evicted, 2);
            let kept = store.dead_letters("s", 1).await.unwrap();
            assert_eq!(kept[0].offset, 2, "the oldest went first");
        });
    }

    #[test]
    fn reads_are_bounded_and_start_at_the_oldest_retained() {
        block_on(async {
            let store = MemoryStore::default();
            let t = TopicName::new("t").unwrap();
            store
                .append(&t, (0..10).map(|_| new(10)).collect())
                .await
                .unwrap();
            let r = store.read(&t, 2, 3, usize::MAX).await.unwrap();
            assert_eq!(r.messages.len(), 3);
            assert_eq!(r.messages[0].offset(), 2);
            // Bytes: 25 fits two of 10; one is always read.
            assert_eq!(store.read(&t, 0, 10, 25).await.unwrap().messages.len(), 2);
            assert_eq!(store.read(&t, 0, 10, 1).await.unwrap().messages.len(), 1);
            // Past the end: nothing, and where the end is.
            let past = store.read(&t, 99, 10, usize::MAX).await.unwrap();
            assert!(past.messages.is_empty());
            assert_eq!(past.next, 10);
            let unknown = TopicName::new("nope").unwrap();
            assert_eq!(store.bounds(&unknown).await.unwrap(), (0, 0));
        });
    }

    #[test]
    fn messages_past_their_age_go() {
        block_on(async {
            let store = MemoryStore::new(
                Retention {
                    age: Duration::from_secs(60),
                    ..Retention::default()
                },
                1 << 20,
            );
            let t = TopicName::new("t").unwrap();
            let old = NewMessage {
                published_at: SystemTime::now() - Duration::from_secs(120),
                event_type: None,
                trace: None,
                ..new(5)
            };
            store.append(&t, vec![old]).await.unwrap();
            store.append(&t, vec![new(5)]).await.unwrap();
            assert_eq!(store.bounds(&t).await.unwrap(), (1, 2));
        });
    }
}
