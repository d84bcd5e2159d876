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
    hash::{BuildHasherDefault, Hasher},
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

/// The bytes one remembered key is charged (its map and queue entries),
/// and the length of a long id besides.
const ENTRY_OVERHEAD: usize = 160;

/// The keys a store remembers, over all its topics: a map for lookups,
/// and a queue in remembering order for forgetting the oldest. Every key
/// is charged to the [`MemoryBudget`] (not evictable) while remembered.
///
/// The map is keyed by a hash of (topic, key), hashed once per lookup;
/// the entry keeps a second hash of both, not the strings.
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
    keys: HashMap<u64, Entry, BuildHasherDefault<Slot>>,
    /// (sequence, slot), in remembering order.
    order: VecDeque<(u64, u64)>,
    seq: u64,
}

/// The hasher of the map: its keys are hashes already.
#[derive(Debug, Default)]
struct Slot(u64);

impl Hasher for Slot {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where `key` on `topic` is kept: a 128-bit hash of both, split into
/// the map's key and a check compared on every hit, so that the table
/// holds no strings of its own (two keys are mistaken for one with a
/// chance of about 2^-64 per pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    slot: u64,
    check: u64,
    topic: u64,
}

fn place(topic: &TopicName, key: &IdempotencyKey) -> Place {
    let t = xxhash_rust::xxh3::xxh3_64(topic.as_str().as_bytes());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&t.to_le_bytes());
    h.update(key.as_str().as_bytes());
    let both = h.digest128();
    Place {
        slot: both as u64,
        check: (both >> 64) as u64,
        topic: t,
    }
}

/// A message id as the table keeps it: inline when short (every id this
/// project's stores make is 28 bytes), so remembering one allocates
/// nothing.
#[derive(Debug)]
enum StoredId {
    Inline([u8; 32], u8),
    Heap(Box<str>),
}

impl StoredId {
    fn new(id: &str) -> Self {
        if id.len() <= 32 {
            let mut bytes = [0; 32];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            StoredId::Inline(bytes, id.len() as u8)
        } else {
            StoredId::Heap(id.into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole: valid UTF-8.
            StoredId::Inline(bytes, len) => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default()
            }
            StoredId::Heap(id) => id,
        }
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    check: u64,
    topic: u64,
    fingerprint: u64,
    at_ms: u64,
    offset: u64,
    subscribers: u32,
    id: StoredId,
}

impl Entry {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.id {
                StoredId::Inline(..) => 0,
                StoredId::Heap(id) => id.len(),
            }
    }

    fn original(&self) -> Original {
        Original {
            id: self.id.as_str().to_owned(),
            offset: self.offset,
            subscribers: self.subscribers,
        }
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

    /// The oldest publish time (ms) a key is remembered for, `now_ms` being
    /// now.
    fn oldest_kept(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.limits.window.as_millis() as u64)
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
        // One message, the common case: no bookkeeping beyond its key.
        if messages.len() == 1 {
            // Cloned, not taken: a durable store writes the key with the
            // message.
            let Some(keyed) = messages[0].idempotency.clone() else {
                return Ok(append(messages)?.into_iter().map(Appended::New).collect());
            };
            // The broker stamps a message with the time it took it: now,
            // without asking the clock again.
            let now = ms(messages[0].published_at);
            let at = place(topic, &keyed.key);
            if let Some(original) = self.seen(&keyed, at, now)? {
                return Ok(vec![Appended::Replayed(original)]);
            }
            let appended = append(messages)?;
            if let Some(m) = appended.first() {
                let time = ms(m.published_at());
                self.remember_at(at, &keyed, m.id(), m.offset(), time, now.max(time));
            }
            return Ok(appended.into_iter().map(Appended::New).collect());
        }
        if messages.iter().all(|m| m.idempotency.is_none()) {
            return Ok(append(messages)?.into_iter().map(Appended::New).collect());
        }
        let now = messages
            .iter()
            .map(|m| ms(m.published_at))
            .max()
            .unwrap_or(0);
        let keyed: Vec<Option<(Place, Keyed)>> = messages
            .iter()
            .map(|m| m.idempotency.clone().map(|k| (place(topic, &k.key), k)))
            .collect();
        let verdicts = self.plan(&keyed, now)?;
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
                    if let Some((at, keyed)) = keyed {
                        let time = ms(message.published_at());
                        let (id, offset) = (message.id(), message.offset());
                        self.remember_at(at, &keyed, id, offset, time, now.max(time));
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
                        subscribers: keyed.map_or(0, |(_, k)| k.subscribers),
                    })
                }
            });
        }
        Ok(out)
    }

    /// The first answer of `keyed`'s key at `at`, if remembered.
    fn seen(&self, keyed: &Keyed, at: Place, now_ms: u64) -> Result<Option<Original>, Error> {
        let oldest = self.oldest_kept(now_ms);
        let table = self.table.lock();
        match table.keys.get(&at.slot) {
            Some(e) if e.at_ms >= oldest && e.check == at.check && e.topic == at.topic => {
                if e.fingerprint != keyed.fingerprint {
                    return Err(Error::IdempotencyKeyReused);
                }
                Ok(Some(e.original()))
            }
            _ => Ok(None),
        }
    }

    fn plan(&self, keyed: &[Option<(Place, Keyed)>], now_ms: u64) -> Result<Vec<Verdict>, Error> {
        let mut verdicts = Vec::with_capacity(keyed.len());
        let mut firsts: HashMap<&IdempotencyKey, (usize, u64)> = HashMap::new();
        for (i, k) in keyed.iter().enumerate() {
            let Some((at, keyed)) = k else {
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
            match self.seen(keyed, *at, now_ms)? {
                Some(original) => verdicts.push(Verdict::Replay(original)),
                None => {
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
        let now = ms(SystemTime::now()).max(at_ms);
        self.remember_at(place(topic, &keyed.key), keyed, id, offset, at_ms, now);
    }

    fn remember_at(
        &self,
        at: Place,
        keyed: &Keyed,
        id: &str,
        offset: u64,
        at_ms: u64,
        now_ms: u64,
    ) {
        let oldest = self.oldest_kept(now_ms);
        if at_ms < oldest || self.limits.max_keys == 0 {
            return;
        }
        let mut table = self.table.lock();
        table.seq += 1;
        let entry = Entry {
            seq: table.seq,
            check: at.check,
            topic: at.topic,
            fingerprint: keyed.fingerprint,
            at_ms,
            offset,
            subscribers: keyed.subscribers,
            id: StoredId::new(id),
        };
        self.budget.add(entry.size());
        let seq = entry.seq;
        if let Some(old) = table.keys.insert(at.slot, entry) {
            self.budget.release(old.size());
        }
        table.order.push_back((seq, at.slot));
        self.expire(&mut table, oldest);
    }

    /// Forgets `topic`'s keys (the topic is deleted).
    pub fn forget_topic(&self, topic: &TopicName) {
        let t = xxhash_rust::xxh3::xxh3_64(topic.as_str().as_bytes());
        let mut table = self.table.lock();
        let budget = &self.budget;
        table.keys.retain(|_, e| {
            let keep = e.topic != t;
            if !keep {
                budget.release(e.size());
            }
            keep
        });
        // The queue's entries of the topic go when they reach its front.
    }

    /// Forgets keys past the window or the count, oldest first; and queue
    /// entries whose key went otherwise.
    fn expire(&self, table: &mut Table, oldest: u64) {
        while let Some(&(seq, at)) = table.order.front() {
            let current = table.keys.get(&at).filter(|e| e.seq == seq);
            let keep = current.is_some_and(|e| e.at_ms >= oldest);
            // The queue may hold entries of keys gone with their topic, up
            // to as many again as the keys.
            let within = table.keys.len() <= self.limits.max_keys
                && table.order.len() <= self.limits.max_keys.saturating_mul(2);
            if keep && within {
                break;
            }
            table.order.pop_front();
            if current.is_some() {
                if let Some(e) = table.keys.remove(&at) {
                    self.budget.release(e.size());
                }
            }
        }
    }
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        // The budget outlives the table (shared with the whole broker).
        for (_, e) in self.table.get_mut().keys.drain() {
            self.budget.release(e.size());
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
            trace: None,
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

    /// A durable store writes each key with its message: the append is
    /// handed the messages with their keys.
    #[test]
    fn the_store_is_handed_the_keys_with_the_messages() {
        let table = KeyTable::new(IdempotencyLimits::default(), MemoryBudget::new(1 << 20));
        let t = TopicName::new("t").unwrap();
        for batch in [
            vec![keyed("a", "x")],
            vec![keyed("b", "y"), keyed("c", "z")],
        ] {
            let mut next = 0;
            let mut number = numbering(&t, &mut next);
            table
                .append_with(&t, batch, |messages| {
                    assert!(messages.iter().all(|m| m.idempotency.is_some()));
                    number(messages)
                })
                .unwrap();
        }
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
