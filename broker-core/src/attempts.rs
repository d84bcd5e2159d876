//! The attempt log: one [`AttemptRecord`] per delivery attempt, kept per
//! subscriber by the store ([`Progress::record_attempts`]), newest
//! [`Limits::attempt_log`] of them and none older than the topic's
//! retention, listed newest first ([`Progress::attempts`]).
//!
//! A record's `seq` is its time in microseconds since the epoch, made
//! strictly increasing per subscriber by the worker that records it: it
//! orders the log, names the record (`att_…`) and is the paging cursor.
//!
//! [`Progress::record_attempts`]: crate::Progress::record_attempts
//! [`Progress::attempts`]: crate::Progress::attempts
//! [`Limits::attempt_log`]: crate::Limits::attempt_log

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// How much of an endpoint's response body a record keeps.
pub const RESPONSE_KEPT: usize = 4096;

/// One delivery attempt, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// When it was made, in µs since the epoch, unique and increasing per
    /// subscriber: its id and its order.
    pub seq: u64,
    /// The message's id.
    pub message_id: String,
    /// The message's offset.
    pub offset: u64,
    /// 1 for the first attempt at this message.
    pub attempt: u32,
    /// How long it took, in ms.
    pub duration_ms: u32,
    /// The HTTP status, when a response came.
    pub status: Option<u16>,
    /// Why it failed, when no response came (timeout, connection refused,
    /// TLS, the destination policy, …).
    pub error: Option<String>,
    /// The first [`RESPONSE_KEPT`] bytes of the response body, when a
    /// response came.
    pub response: Option<Bytes>,
}

impl AttemptRecord {
    /// Its id, `att_` and 16 hex digits of `seq`.
    pub fn id(&self) -> String {
        format!("att_{:016x}", self.seq)
    }

    /// The `seq` an id names.
    pub fn seq_of(id: &str) -> Option<u64> {
        let hex = id.strip_prefix("att_")?;
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    }

    /// When it was made.
    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.seq)
    }

    /// Whether the endpoint took it (a 2xx).
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// What it costs to keep in memory, roughly.
    pub fn held_bytes(&self) -> usize {
        96 + self.message_id.len()
            + self.error.as_ref().map_or(0, String::len)
            + self.response.as_ref().map_or(0, Bytes::len)
    }

    /// The bytes a durable store keeps: a version byte, then fixed fields
    /// and length-prefixed strings.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.held_bytes());
        out.push(1);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.attempt.to_be_bytes());
        out.extend_from_slice(&self.duration_ms.to_be_bytes());
        out.extend_from_slice(&self.status.unwrap_or(0).to_be_bytes());
        let mut field = |bytes: Option<&[u8]>| match bytes {
            None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
            Some(b) => {
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
        };
        field(Some(self.message_id.as_bytes()));
        field(self.error.as_deref().map(str::as_bytes));
        field(self.response.as_deref());
        out
    }

    /// Reads what [`encode`](Self::encode) wrote.
    ///
    /// # Errors
    ///
    /// What is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err("an attempt record is cut short".into());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let version = take(1)?[0];
        if version != 1 {
            return Err(format!("unknown attempt record version {version}"));
        }
        let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
        let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or_default());
        let seq = u64_of(take(8)?);
        let offset = u64_of(take(8)?);
        let attempt = u32_of(take(4)?);
        let duration_ms = u32_of(take(4)?);
        let status = u16::from_be_bytes(take(2)?.try_into().unwrap_or_default());
        let mut field = || -> Result<Option<Vec<u8>>, String> {
            let len = u32_of(take(4)?);
            if len == u32::MAX {
                return Ok(None);
            }
            Ok(Some(take(len as usize)?.to_vec()))
        };
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|e| e.to_string());
        let message_id = text(field()?.unwrap_or_default())?;
        let error = field()?.map(text).transpose()?;
        let response = field()?.map(Bytes::from);
        Ok(AttemptRecord {
            seq,
            message_id,
            offset,
            attempt,
            duration_ms,
            status: (status != 0).then_some(status),
            error,
            response,
        })
    }
}

/// Which attempts a listing wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptQuery {
    /// At most this many (the HTTP API takes 1–1000).
    pub limit: usize,
    /// Only those that succeeded (`Some(true)`) or failed (`Some(false)`).
    pub succeeded: Option<bool>,
    /// Only those of this message.
    pub message_id: Option<String>,
    /// Only those older than this `seq` (the page before).
    pub before: Option<u64>,
}

impl Default for AttemptQuery {
    fn default() -> Self {
        AttemptQuery {
            limit: 100,
            succeeded: None,
            message_id: None,
            before: None,
        }
    }
}

impl AttemptQuery {
    /// Whether `record` is one it wants (`limit` aside), given the oldest
    /// `seq` retention keeps.
    pub fn wants(&self, record: &AttemptRecord, not_before: u64) -> bool {
        record.seq >= not_before
            && self.before.is_none_or(|b| record.seq < b)
            && self.succeeded.is_none_or(|s| record.succeeded() == s)
            && self
                .message_id
                .as_deref()
                .is_none_or(|id| record.message_id == id)
    }
}

/// The oldest `seq` a store keeps, for a retention of `age`, at `now`.
pub fn not_before(age: Duration, now: SystemTime) -> u64 {
    now.checked_sub(age)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `seq` for an attempt made at `now`, after `last`: its time in µs,
/// or one more than `last` if the clock did not move on.
pub fn next_seq(last: u64, now: SystemTime) -> u64 {
    let micros = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    micros.max(last + 1)
}

/// The attempt logs of a store that keeps them in memory: per
/// subscriber, its newest records, oldest first. Charged to the memory
/// budget as a cache, and never more than an eighth of it: past that, the
/// recording subscriber's oldest go first.
#[derive(Debug)]
pub struct AttemptRings {
    rings: parking_lot::Mutex<RingsInner>,
    budget: crate::MemoryBudget,
}

#[derive(Debug, Default)]
struct RingsInner {
    by_subscriber: std::collections::HashMap<String, std::collections::VecDeque<AttemptRecord>>,
    bytes: usize,
}

impl AttemptRings {
    /// Empty, charging `budget`.
    pub fn new(budget: crate::MemoryBudget) -> Self {
        AttemptRings {
            rings: parking_lot::Mutex::default(),
            budget,
        }
    }

    /// Adds `records` (oldest first) to `subscriber`'s log, which keeps
    /// its newest `keep` and none before `not_before`.
    pub fn record(
        &self,
        subscriber: &str,
        records: Vec<AttemptRecord>,
        keep: usize,
        not_before: u64,
    ) {
        let cap = self.budget.limit() / 8;
        let mut inner = self.rings.lock();
        let RingsInner {
            by_subscriber,
            bytes,
        } = &mut *inner;
        let ring = by_subscriber.entry(subscriber.to_owned()).or_default();
        let (mut added, mut freed) = (0, 0);
        for r in records {
            added += r.held_bytes();
            ring.push_back(r);
        }
        *bytes += added;
        while let Some(oldest) = ring.front() {
            if ring.len() > keep
                || oldest.seq < not_before
                || (*bytes - freed > cap && ring.len() > 1)
            {
                freed += oldest.held_bytes();
                ring.pop_front();
            } else {
                break;
            }
        }
        *bytes -= freed;
        if ring.is_empty() {
            by_subscriber.remove(subscriber);
        }
        drop(inner);
        self.budget.add_cached(added);
        self.budget.release_cached(freed);
    }

    /// `subscriber`'s records that `query` wants, newest first.
    pub fn list(
        &self,
        subscriber: &str,
        query: &AttemptQuery,
        not_before: u64,
    ) -> Vec<AttemptRecord> {
        self.rings
            .lock()
            .by_subscriber
            .get(subscriber)
            .map(|ring| {
                ring.iter()
                    .rev()
                    .filter(|r| query.wants(r, not_before))
                    .take(query.limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets `subscriber`'s log (deregistered).
    pub fn forget(&self, subscriber: &str) {
        let mut inner = self.rings.lock();
        let freed: usize = inner
            .by_subscriber
            .remove(subscriber)
            .map(|ring| ring.iter().map(AttemptRecord::held_bytes).sum())
            .unwrap_or(0);
        inner.bytes -= freed;
        drop(inner);
        self.budget.release_cached(freed);
    }
}

impl Drop for AttemptRings {
    fn drop(&mut self) {
        // The budget may outlive the store (shared with others).
        self.budget.release_cached(self.rings.get_mut().bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, status: Option<u16>) -> AttemptRecord {
        AttemptRecord {
            seq,
            message_id: format!("msg_{seq}"),
            offset: seq,
            attempt: 2,
            duration_ms: 17,
            status,
            error: status.is_none().then(|| "connection refused".to_owned()),
            response: status.map(|_| Bytes::from_static(b"\xffnot utf-8")),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        for r in [record(1_795_430_227_250_123, Some(500)), record(7, None)] {
            assert_eq!(AttemptRecord::decode(&r.encode()).unwrap(), r);
            assert_eq!(AttemptRecord::seq_of(&r.id()), Some(r.seq));
        }
        let bytes = record(9, Some(200)).encode();
        assert!(AttemptRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(AttemptRecord::decode(&[2]).is_err());
        assert_eq!(AttemptRecord::seq_of("att_zz"), None);
        assert_eq!(AttemptRecord::seq_of("sub_0000000000000001"), None);
    }

    #[test]
    fn a_query_filters_by_outcome_message_page_and_age() {
        let ok = record(10, Some(204));
        let failed = record(20, Some(500));
        let broken = record(30, None);
        let q = AttemptQuery::default();
        assert!(q.wants(&ok, 0) && q.wants(&failed, 0) && q.wants(&broken, 0));
        assert!(!q.wants(&ok, 11), "older than retention");
        let failures = AttemptQuery {
            succeeded: Some(false),
            ..AttemptQuery::default()
        };
        assert!(
            !failures.wants(&ok, 0) && failures.wants(&failed, 0) && failures.wants(&broken, 0)
        );
        let page = AttemptQuery {
            before: Some(30),
            message_id: Some("msg_20".into()),
            ..AttemptQuery::default()
        };
        assert!(!page.wants(&ok, 0) && page.wants(&failed, 0) && !page.wants(&broken, 0));
        assert_eq!(next_seq(5, UNIX_EPOCH), 6);
    }

    #[test]
    fn rings_keep_the_newest_within_the_count_the_age_and_the_budget() {
        let budget = crate::MemoryBudget::new(8 * 4096);
        let rings = AttemptRings::new(budget.clone());
        rings.record("s", (1..=5).map(|i| record(i, Some(200))).collect(), 3, 0);
        let all = rings.list("s", &AttemptQuery::default(), 0);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 4, 3]);
        assert!(budget.used() > 0);
        rings.record("s", vec![record(6, None)], 3, 5);
        let all = rings.list("s", &AttemptQuery::default(), 0);
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [6, 5],
            "4 and 3 are too old"
        );
        // An eighth of 32 KiB: 4 KiB, about one big response.
        let big = |seq| AttemptRecord {
            response: Some(Bytes::from(vec![b'x'; 3000])),
            ..record(seq, Some(500))
        };
        rings.record("t", vec![big(1), big(2), big(3)], 100, 0);
        assert_eq!(rings.list("t", &AttemptQuery::default(), 0).len(), 1);
        rings.forget("s");
        rings.forget("t");
        assert!(rings.list("s", &AttemptQuery::default(), 0).is_empty());
        assert_eq!(budget.used(), 0);
        assert_eq!(next_seq(5, UNIX_EPOCH + Duration::from_micros(99)), 99);
    }
}
