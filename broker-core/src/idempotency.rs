//! Idempotent publishing: a publisher's key for a message, the
//! fingerprint of what the key was first used for, and the table of keys
//! a store keeps for its window.
//!
//! The key is checked where the log numbers messages, under the same lock,
//! so that two publishes with one key make one message: a store calls
//! [`KeyTable::append_with`] from inside its append (or, on Redis, does
//! the same inside its append script). A key is remembered with the id,
//! offset and subscriber count its message got, and answered with them
//! while it is remembered: for [`IdempotencyLimits::window`], and at most
//! [`IdempotencyLimits::max_keys`] keys at once (the oldest go first).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;

use crate::{store::NewMessage, Error, EventType, MemoryBudget, Message, TopicName};

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A publisher's idempotency key: 1–255 printable ASCII characters
/// (space to `~`), as the `Idempotency-Key` header carries it.
///
/// # Examples
///
/// ```
/// use broker_core::IdempotencyKey;
///
/// assert!(IdempotencyKey::new("order-42/attempt 1").is_ok());
/// assert!(IdempotencyKey::new("").is_err());
/// assert!(IdempotencyKey::new("tab\there").is_err());
/// assert!(IdempotencyKey::new(&"k".repeat(256)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// The key `key`, if it is one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdempotencyKey`] saying why not.
    pub fn new(key: &str) -> Result<Self, Error> {
        let reason = if key.is_empty() {
            "it is empty"
        } else if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            "it is longer than 255 characters"
        } else if !key.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            "it holds characters other than printable ASCII"
        } else {
            return Ok(IdempotencyKey(key.into()));
        };
        Err(Error::InvalidIdempotencyKey { reason })
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a keyed message brings to the log: its key, the
/// [`fingerprint`] of its event type and payload, and the subscribers it
/// goes to (answered again on a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// The publisher's key.
    pub key: IdempotencyKey,
    /// [`fingerprint`] of the message's event type and payload.
    pub fingerprint: u64,
    /// How many subscribers the message went to when first published.
    pub subscribers: u32,
}

/// The fingerprint of a message's event type and payload: what a reused
/// key is compared by. XXH3 (64 bits), whose output is fixed by its
/// specification, so a data dir or another replica computes the same.
pub fn fingerprint(event_type: Option<&EventType>, payload: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let et = event_type.map_or("", EventType::as_str);
    h.update(&[et.len() as u8]);
    h.update(et.as_bytes());
    h.update(payload);
    h.digest()
}

/// What a key was first answered: the message it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// The message's id.
    pub id: String,
    /// Its offset.
    pub offset: u64,
    /// How many subscribers it went to.
    pub subscribers: u32,
}

/// What one message of an append became.
#[derive(Debug, Clone)]
pub enum Appended {
    /// Appended now.
    New(Arc<Message>),
    /// Its key was seen within the window: nothing appended, the first
    /// message's answer.
    Replayed(Original),
}

impl Appended {
    /// The message appended now, unless a replay.
    pub fn new_message(&self) -> Option<&Arc<Message>> {
        match self {
            Appended::New(m) => Some(m),
            Appended::Replayed(_) => None,
        }
    }

    /// The message appended now, unless a replay, owned.
    pub fn into_new(self) -> Option<Arc<Message>> {
        match self {
            Appended::New(m) => Some(m),
            Appended::Replayed(_) => None,
        }
    }

    /// The message's id.
    pub fn id(&self) -> &str {
        match self {
            Appended::New(m) => m.id(),
            Appended::Replayed(o) => &o.id,
        }
    }

    /// Its offset.
    pub fn offset(&self) -> u64 {
        match self {
            Appended::New(m) => m.offset(),
            Appended::Replayed(o) => o.offset,
        }
    }
}

/// How long, and how many, keys are remembered (`--idempotency-window`,
/// `--idempotency-keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyLimits {
    /// A key is remembered this long after its message was published.
    pub window: Duration,
    /// Keys remembered at most, over all topics; past it the oldest go.
    pub max_keys: usize,
}

impl Default for IdempotencyLimits {
    /// 24 hours, 100,000 keys.
    fn default() -> Self {
        IdempotencyLimits {
            window: Duration::from_secs(24 * 3600),
            max_keys: 100_000,
        }
    }
}

/// The bytes one remembered key is charged besides its key and id: the
/// map's and the queue's entries.
const ENTRY_OVERHEAD: usize = 128;

/// The keys a store remembers, over all its topics: a map for lookups,
/// and a queue in remembering order for forgetting the oldest. Every key
/// is charged to the [`MemoryBudget`] (not evictable) while remembered.
///
/// Its lock is short and never held across an await: a store takes it
/// under its own per-topic lock, which orders the appends of a topic.
#[derive(Debug)]
pub struct KeyTable {
    limits: IdempotencyLimits,
    budget: MemoryBudget,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    keys: HashMap<(TopicName, IdempotencyKey), Entry>,
    order: VecDeque<(u64, TopicName, IdempotencyKey)>,
    seq: u64,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    fingerprint: u64,
    at_ms: u64,
    original: Original,
}

impl Entry {
    fn size(key: &IdempotencyKey, original: &Original) -> usize {
        ENTRY_OVERHEAD + key.as_str().len() + original.id.len()
    }
}

/// What an append decided about one message, before numbering.
enum Verdict {
    New,
    Replay(Original),
    /// The same key as the earlier new message at this index of the same
    /// append.
    SameAs(usize),
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl KeyTable {
    /// An empty table, charging `budget`.
    pub fn new(limits: IdempotencyLimits, budget: MemoryBudget) -> Self {
        KeyTable {
            limits,
            budget,
            table: Mutex::default(),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> IdempotencyLimits {
        self.limits
    }

    /// How many keys it remembers now.
    pub fn len(&self) -> usize {
        self.table.lock().keys.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One append to `topic`, deduplicated: the keyed messages whose key
    /// is remembered (or came earlier in `messages`) are answered from the
    /// table; the rest go to `append`, which numbers and writes them and
    /// returns them in order; their keys are then remembered. Call it
    /// under the lock that orders `topic`'s appends.
    ///
    /// # Errors
    ///
    /// [`Error::IdempotencyKeyReused`] (nothing appended) when a key comes
    /// with another fingerprint than it was remembered with; whatever
    /// `append` fails with.
    pub fn append_with<E: From<Error>>(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        append: impl FnOnce(Vec<NewMessage>) -> Result<Vec<Arc<Message>>, E>,
    ) -> Result<Vec<Appended>, E> {
        if messages.iter().all(|m| m.idempotency.is_none()) {
            return Ok(append(messages)?.into_iter().map(Appended::New).collect());
        }
        let verdicts = self.plan(topic, &messages)?;
        let keyed: Vec<Option<Keyed>> = messages.iter().map(|m| m.idempotency.clone()).collect();
        let fresh: Vec<NewMessage> = messages
            .into_iter()
            .zip(&verdicts)
            .filter(|(_, v)| matches!(v, Verdict::New))
            .map(|(m, _)| m)
            .collect();
        let appended = if fresh.is_empty() {
            Vec::new()
        } else {
            append(fresh)?
        };
        let mut appended = appended.into_iter();
        let mut out: Vec<Appended> = Vec::with_capacity(verdicts.len());
        for (verdict, keyed) in verdicts.into_iter().zip(keyed) {
            out.push(match verdict {
                Verdict::New => {
                    let Some(message) = appended.next() else {
                        return Err(Error::storage("the store numbered too few messages").into());
                    };
                    if let Some(keyed) = keyed {
                        self.remember(topic, &keyed, message.id(), message.offset(), {
                            ms(message.published_at())
                        });
                    }
                    Appended::New(message)
                }
                Verdict::Replay(original) => Appended::Replayed(original),
                Verdict::SameAs(i) => {
                    let Some(first) = out.get(i) else {
                        return Err(Error::storage("a key's first message is missing").into());
                    };
                    Appended::Replayed(Original {
                        id: first.id().to_owned(),
                        offset: first.offset(),
                        subscribers: keyed.map_or(0, |k| k.subscribers),
                    })
                }
            });
        }
        Ok(out)
    }

    fn plan(&self, topic: &TopicName, messages: &[NewMessage]) -> Result<Vec<Verdict>, Error> {
        let table = self.table.lock();
        let oldest = ms(SystemTime::now()).saturating_sub(self.limits.window.as_millis() as u64);
        let mut verdicts = Vec::with_capacity(messages.len());
        let mut firsts: HashMap<&IdempotencyKey, (usize, u64)> = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            let Some(keyed) = &m.idempotency else {
                verdicts.push(Verdict::New);
                continue;
            };
            if let Some(&(first, fingerprint)) = firsts.get(&keyed.key) {
                if fingerprint != keyed.fingerprint {
                    return Err(Error::IdempotencyKeyReused);
                }
                verdicts.push(Verdict::SameAs(first));
                continue;
            }
            match table.keys.get(&(topic.clone(), keyed.key.clone())) {
                Some(e) if e.at_ms >= oldest => {
                    if e.fingerprint != keyed.fingerprint {
                        return Err(Error::IdempotencyKeyReused);
                    }
                    verdicts.push(Verdict::Replay(e.original.clone()));
                }
                _ => {
                    firsts.insert(&keyed.key, (i, keyed.fingerprint));
                    verdicts.push(Verdict::New);
                }
            }
        }
        Ok(verdicts)
    }

    /// Remembers that `keyed`'s key made the message `id` at `offset`,
    /// published at `at_ms` (ms since the epoch): what an append does,
    /// and what a store does for each keyed message it reads back when it
    /// opens. A key older than the window is not kept.
    pub fn remember(&self, topic: &TopicName, keyed: &Keyed, id: &str, offset: u64, at_ms: u64) {
        let now = ms(SystemTime::now());
        if at_ms < now.saturating_sub(self.limits.window.as_millis() as u64)
            || self.limits.max_keys == 0
        {
            return;
        }
        let original = Original {
            id: id.to_owned(),
            offset,
            subscribers: keyed.subscribers,
        };
        let mut table = self.table.lock();
        table.seq += 1;
        let seq = table.seq;
        let size = Entry::size(&keyed.key, &original);
        let entry = Entry {
            seq,
            fingerprint: keyed.fingerprint,
            at_ms,
            original,
        };
        let map_key = (topic.clone(), keyed.key.clone());
        if let Some(old) = table.keys.insert(map_key.clone(), entry) {
            self.budget.release(Entry::size(&keyed.key, &old.original));
        }
        self.budget.add(size);
        table.order.push_back((seq, map_key.0, map_key.1));
        self.expire(&mut table, now);
    }

    /// Forgets `topic`'s keys (the topic is deleted).
    pub fn forget_topic(&self, topic: &TopicName) {
        let mut table = self.table.lock();
        let budget = &self.budget;
        table.keys.retain(|(t, key), e| {
            let keep = t != topic;
            if !keep {
                budget.release(Entry::size(key, &e.original));
            }
            keep
        });
        table.order.retain(|(_, t, _)| t != topic);
    }

    /// Forgets keys past the window or the count, oldest first.
    fn expire(&self, table: &mut Table, now: u64) {
        let oldest = now.saturating_sub(self.limits.window.as_millis() as u64);
        while let Some((seq, topic, key)) = table.order.front().cloned() {
            let map_key = (topic, key);
            let current = table.keys.get(&map_key).filter(|e| e.seq == seq);
            let stale = current.is_some_and(|e| e.at_ms < oldest);
            if !stale && table.order.len() <= self.limits.max_keys && current.is_some() {
                break;
            }
            table.order.pop_front();
            if current.is_some() {
                if let Some(e) = table.keys.remove(&map_key) {
                    self.budget.release(Entry::size(&map_key.1, &e.original));
                }
            }
        }
    }
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        // The budget outlives the table (shared with the whole broker).
        let table = self.table.get_mut();
        for ((_, key), e) in table.keys.drain() {
            self.budget.release(Entry::size(&key, &e.original));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn keyed(key: &str, payload: &str) -> NewMessage {
        NewMessage {
            content_type: None,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            published_at: SystemTime::now(),
            event_type: None,
            idempotency: Some(Keyed {
                key: IdempotencyKey::new(key).unwrap(),
                fingerprint: fingerprint(None, payload.as_bytes()),
                subscribers: 3,
            }),
        }
    }

    /// A log of one topic, numbering from `next`.
    fn numbering<'a>(
        topic: &TopicName,
        next: &'a mut u64,
    ) -> impl FnMut(Vec<NewMessage>) -> Result<Vec<Arc<Message>>, Error> + 'a {
        let topic = topic.clone();
        move |ms: Vec<NewMessage>| {
            Ok(ms
                .into_iter()
                .map(|m| {
                    let offset = *next;
                    *next += 1;
                    Arc::new(Message::new(
                        format!("m{offset}"),
                        offset,
                        topic.clone(),
                        None,
                        m.payload,
                        m.published_at,
                    ))
                })
                .collect())
        }
    }

    #[test]
    fn a_key_is_answered_with_its_first_message_and_refused_for_another() {
        let budget = MemoryBudget::new(1 << 20);
        let table = KeyTable::new(IdempotencyLimits::default(), budget.clone());
        let t = TopicName::new("t").unwrap();
        let mut next = 0;
        let first = table
            .append_with(&t, vec![keyed("a", "x")], numbering(&t, &mut next))
            .unwrap();
        assert!(first[0].new_message().is_some());
        assert!(budget.used() > 0);
        let again = table
            .append_with(
                &t,
                vec![keyed("a", "x"), keyed("b", "y"), keyed("b", "y")],
                numbering(&t, &mut next),
            )
            .unwrap();
        let shape: Vec<(bool, u64)> = again
            .iter()
            .map(|a| (a.new_message().is_some(), a.offset()))
            .collect();
        assert_eq!(shape, [(false, 0), (true, 1), (false, 1)]);
        assert!(matches!(&again[0], Appended::Replayed(o) if o.subscribers == 3 && o.id == "m0"));
        assert_eq!(
            table
                .append_with(&t, vec![keyed("a", "z")], numbering(&t, &mut next))
                .unwrap_err(),
            Error::IdempotencyKeyReused
        );
        // A batch reusing a key inside itself is refused whole.
        assert_eq!(
            table
                .append_with(
                    &t,
                    vec![keyed("c", "1"), keyed("c", "2")],
                    numbering(&t, &mut next)
                )
                .unwrap_err(),
            Error::IdempotencyKeyReused
        );
        assert_eq!(next, 2);
        // Another topic has keys of its own.
        let u = TopicName::new("u").unwrap();
        let other = table
            .append_with(&u, vec![keyed("a", "z")], numbering(&u, &mut next))
            .unwrap();
        assert!(other[0].new_message().is_some());
        table.forget_topic(&u);
        assert_eq!(table.len(), 2);
        drop(table);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn keys_past_the_count_or_the_window_are_forgotten() {
        let budget = MemoryBudget::new(1 << 20);
        let limits = IdempotencyLimits {
            window: Duration::from_secs(60),
            max_keys: 2,
        };
        let table = KeyTable::new(limits, budget.clone());
        let t = TopicName::new("t").unwrap();
        let mut next = 0;
        for key in ["a", "b", "c"] {
            table
                .append_with(&t, vec![keyed(key, key)], numbering(&t, &mut next))
                .unwrap();
        }
        assert_eq!(table.len(), 2);
        let a = table
            .append_with(&t, vec![keyed("a", "other")], numbering(&t, &mut next))
            .unwrap();
        assert!(a[0].new_message().is_some(), "the oldest key went");
        // Read back from a log: one older than the window is not kept.
        let k = keyed("old", "o").idempotency.unwrap();
        let long_ago = ms(SystemTime::now()) - 61_000;
        table.remember(&t, &k, "m9", 9, long_ago);
        assert_eq!(table.len(), 2);
        drop(table);
        assert_eq!(budget.used(), 0);
    }
}
