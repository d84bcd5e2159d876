//! The write-behind buffer of delivery progress, shared by the durable
//! stores: cursor moves, pending-retry changes and attempt records are
//! taken in memory at once ([`Progress::save_cursor`](crate::Progress::save_cursor) and friends
//! never wait for a disk or a network) and written by the store every
//! flush period, a batch at a time.
//!
//! Its rules, the same for every backend:
//! - **Capped**: at most [`MAX_BUFFERED`] cursors and as many retry
//!   changes (one per subscriber, one per pending retry). Past it a change
//!   for a new key is dropped, counted, and reported by the next flush; a
//!   change to a key already buffered always lands. A dropped cursor move
//!   means messages delivered again after a crash, never lost ones.
//!   Attempt records are capped at [`MAX_BUFFERED_ATTEMPT_BYTES`]; past it
//!   they are dropped and counted the same way (a gap in the attempt log,
//!   nothing else).
//! - **Kept on failure**: a flush that fails puts its batch back, under
//!   whatever changed meanwhile (a newer change wins; a cursor only moves
//!   forward).
//! - **In order**: one flush at a time, so an older batch never lands
//!   after a newer one.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use parking_lot::Mutex;

/// Cursor moves, and retry changes, buffered between two flushes at most.
pub const MAX_BUFFERED: usize = 1 << 20;

/// Bytes of attempt records buffered between two flushes at most.
pub const MAX_BUFFERED_ATTEMPT_BYTES: usize = 16 << 20;

/// A pending retry kept (`Some((attempts, due in ms since the epoch))`) or
/// forgotten (`None`).
pub type RetryChange = Option<(u32, u64)>;

/// What one flush writes: the cursors moved and the retries kept or
/// forgotten since the last one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProgressBatch {
    /// Subscriber id and its newest cursor.
    pub cursors: Vec<(String, u64)>,
    /// Subscriber id, offset, and the newest change of that retry.
    pub retries: Vec<((String, u64), RetryChange)>,
    /// Topic, subscriber id and attempt record, oldest first.
    pub attempts: Vec<(crate::TopicName, String, crate::AttemptRecord)>,
    /// How many attempts each subscriber's log keeps (the newest).
    pub attempt_keep: usize,
}

impl ProgressBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.cursors.is_empty() && self.retries.is_empty() && self.attempts.is_empty()
    }
}

/// Attempt records waiting for a flush.
#[derive(Debug, Default)]
struct Attempts {
    records: Vec<(crate::TopicName, String, crate::AttemptRecord)>,
    bytes: usize,
    keep: usize,
}

/// The buffer. Its locks are held only to insert or swap a map, never
/// across a write: the flush turn is a separate lock.
#[derive(Debug)]
pub struct WriteBehind {
    cursors: Mutex<HashMap<String, u64>>,
    retries: Mutex<HashMap<(String, u64), RetryChange>>,
    attempts: Mutex<Attempts>,
    /// Charged with the attempt records buffered, when set.
    budget: Option<crate::MemoryBudget>,
    cap: usize,
    /// Changes dropped because the buffer was full, since the last flush.
    dropped: AtomicU64,
    /// One flush at a time (async: held across the store's write).
    turn: tokio::sync::Mutex<()>,
    /// One flush at a time, for stores that flush from a blocking thread.
    turn_blocking: Mutex<()>,
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self::with_cap(MAX_BUFFERED)
    }
}

impl WriteBehind {
    /// A buffer of at most `cap` cursors and `cap` retry changes.
    pub fn with_cap(cap: usize) -> Self {
        WriteBehind {
            cursors: Mutex::default(),
            retries: Mutex::default(),
            attempts: Mutex::default(),
            budget: None,
            cap,
            dropped: AtomicU64::new(0),
            turn: tokio::sync::Mutex::new(()),
            turn_blocking: Mutex::new(()),
        }
    }

    /// `subscriber`'s cursor moved to `cursor` (a smaller one than
    /// buffered is ignored: cursors only move forward).
    pub fn cursor(&self, subscriber: &str, cursor: u64) {
        let mut cursors = self.cursors.lock();
        if let Some(entry) = cursors.get_mut(subscriber) {
            *entry = (*entry).max(cursor);
        } else if cursors.len() < self.cap {
            cursors.insert(subscriber.to_owned(), cursor);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `subscriber`'s retry of `offset` was kept (`Some`) or forgotten
    /// (`None`); the newest change wins.
    pub fn retry(&self, subscriber: &str, offset: u64, change: RetryChange) {
        let mut retries = self.retries.lock();
        let key = (subscriber.to_owned(), offset);
        if retries.len() < self.cap || retries.contains_key(&key) {
            retries.insert(key, change);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The same buffer, counting the attempt records it holds in
    /// `budget` (as held bytes, released once they are written).
    #[must_use]
    pub fn with_budget(mut self, budget: crate::MemoryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// `subscriber`'s attempts on `topic` (oldest first), for a log that
    /// keeps its newest `keep`.
    pub fn attempts(
        &self,
        topic: &crate::TopicName,
        subscriber: &str,
        records: Vec<crate::AttemptRecord>,
        keep: usize,
    ) {
        let mut buffered = self.attempts.lock();
        buffered.keep = keep;
        let mut added = 0;
        for record in records {
            let bytes = record.held_bytes();
            if buffered.bytes + bytes > MAX_BUFFERED_ATTEMPT_BYTES {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            buffered.bytes += bytes;
            added += bytes;
            buffered
                .records
                .push((topic.clone(), subscriber.to_owned(), record));
        }
        drop(buffered);
        if let Some(budget) = &self.budget {
            budget.add(added);
        }
    }

    /// Drops what is buffered for `subscriber` (deregistered: its stored
    /// progress goes with it).
    pub fn forget(&self, subscriber: &str) {
        {
            let mut buffered = self.attempts.lock();
            let Attempts { records, bytes, .. } = &mut *buffered;
            let mut freed = 0;
            records.retain(|(_, owner, record)| {
                let keep = owner != subscriber;
                if !keep {
                    freed += record.held_bytes();
                }
                keep
            });
            *bytes -= freed;
            drop(buffered);
            if let Some(budget) = &self.budget {
                budget.release(freed);
            }
        }
        self.cursors.lock().remove(subscriber);
        self.retries
            .lock()
            .retain(|(owner, _), _| owner != subscriber);
    }

    /// Entries buffered now: cursors and retry changes.
    pub fn len(&self) -> (usize, usize) {
        (self.cursors.lock().len(), self.retries.lock().len())
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0) && self.attempts.lock().records.is_empty()
    }

    /// Writes what is buffered with `write`, one flush at a time; when
    /// `write` fails, the batch goes back into the buffer under any newer
    /// change. Does not call `write` when nothing is buffered.
    ///
    /// # Errors
    ///
    /// What `write` returned.
    pub async fn flush<E>(
        &self,
        write: impl AsyncFnOnce(&ProgressBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        let _turn = self.turn.lock().await;
        let batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        let written = write(&batch).await;
        if written.is_err() {
            self.put_back(batch);
        }
        written
    }

    /// [`flush`](Self::flush) for a store that writes from a blocking
    /// thread (never from an async task: the turn is a blocking lock).
    ///
    /// # Errors
    ///
    /// What `write` returned.
    pub fn flush_blocking<E>(
        &self,
        write: impl FnOnce(&ProgressBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        let _turn = self.turn_blocking.lock();
        let batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        let written = write(&batch);
        if written.is_err() {
            self.put_back(batch);
        }
        written
    }

    fn take(&self) -> ProgressBatch {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "cursor moves, retry changes or attempt records were dropped: the store could not take them and the buffer was full"
            );
        }
        let attempts = std::mem::take(&mut *self.attempts.lock());
        if let Some(budget) = &self.budget {
            budget.release(attempts.bytes);
        }
        ProgressBatch {
            attempts: attempts.records,
            attempt_keep: attempts.keep,
            cursors: std::mem::take(&mut *self.cursors.lock())
                .into_iter()
                .collect(),
            retries: std::mem::take(&mut *self.retries.lock())
                .into_iter()
                .collect(),
        }
    }

    /// Puts a batch that could not be written back, under what changed
    /// since it was taken. Not capped: it was in the buffer already.
    fn put_back(&self, batch: ProgressBatch) {
        {
            let mut cursors = self.cursors.lock();
            for (id, cursor) in batch.cursors {
                let entry = cursors.entry(id).or_default();
                *entry = (*entry).max(cursor);
            }
        }
        {
            let mut retries = self.retries.lock();
            for (key, change) in batch.retries {
                retries.entry(key).or_insert(change);
            }
        }
        // Before those recorded since: the log stays in order.
        let mut buffered = self.attempts.lock();
        let newer = std::mem::replace(&mut buffered.records, batch.attempts);
        let back: usize = buffered
            .records
            .iter()
            .map(|(_, _, r)| r.held_bytes())
            .sum();
        buffered.bytes += back;
        buffered.records.extend(newer);
        buffered.keep = buffered.keep.max(batch.attempt_keep);
        drop(buffered);
        if let Some(budget) = &self.budget {
            budget.add(back);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut batch: ProgressBatch) -> ProgressBatch {
        batch.cursors.sort();
        batch.retries.sort();
        batch
    }

    async fn written(buffer: &WriteBehind) -> ProgressBatch {
        let mut out = ProgressBatch::default();
        buffer
            .flush(async |batch: &ProgressBatch| {
                out = batch.clone();
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        sorted(out)
    }

    #[tokio::test]
    async fn a_failing_flush_keeps_every_entry_under_newer_changes() {
        let buffer = WriteBehind::default();
        buffer.cursor("a", 5);
        buffer.cursor("b", 9);
        buffer.retry("a", 1, Some((2, 100)));
        buffer.retry("a", 2, Some((1, 50)));
        let failed = buffer
            .flush(async |batch: &ProgressBatch| {
                assert_eq!(batch.cursors.len(), 2);
                // Meanwhile: a moves on, a's retry of 1 is forgotten.
                buffer.cursor("a", 7);
                buffer.retry("a", 1, None);
                Err("down")
            })
            .await;
        assert_eq!(failed, Err("down"));
        assert_eq!(buffer.len(), (2, 2));
        let batch = written(&buffer).await;
        assert_eq!(batch.cursors, [("a".into(), 7), ("b".into(), 9)]);
        assert_eq!(
            batch.retries,
            [(("a".into(), 1), None), (("a".into(), 2), Some((1, 50)))]
        );
        assert!(buffer.is_empty());
        assert!(written(&buffer).await.is_empty());
    }

    #[test]
    fn a_failing_blocking_flush_keeps_every_entry() {
        let buffer = WriteBehind::default();
        buffer.cursor("a", 3);
        buffer.retry("a", 0, Some((1, 1)));
        assert_eq!(buffer.flush_blocking(|_| Err(())), Err(()));
        let mut seen = ProgressBatch::default();
        buffer
            .flush_blocking(|b| {
                seen = b.clone();
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(seen.cursors, [("a".into(), 3)]);
        assert_eq!(seen.retries, [(("a".into(), 0), Some((1, 1)))]);
    }

    #[tokio::test]
    async fn the_cap_holds_and_known_keys_still_change() {
        let buffer = WriteBehind::with_cap(2);
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            buffer.cursor(id, i as u64);
            buffer.retry(id, 0, Some((1, 0)));
        }
        assert_eq!(buffer.len(), (2, 2));
        // Keys already buffered still take their newest change.
        buffer.cursor("a", 40);
        buffer.retry("b", 0, None);
        let batch = written(&buffer).await;
        assert_eq!(batch.cursors, [("a".into(), 40), ("b".into(), 1)]);
        assert_eq!(
            batch.retries,
            [(("a".into(), 0), Some((1, 0))), (("b".into(), 0), None)]
        );
        // Room again after the flush.
        buffer.cursor("c", 2);
        assert_eq!(buffer.len(), (1, 0));
    }

    #[tokio::test]
    async fn order_is_kept_cursors_move_forward_and_the_newest_retry_change_wins() {
        let buffer = WriteBehind::default();
        buffer.cursor("a", 10);
        buffer.cursor("a", 4);
        buffer.retry("a", 3, Some((1, 10)));
        buffer.retry("a", 3, Some((2, 20)));
        buffer.retry("a", 3, None);
        let batch = written(&buffer).await;
        assert_eq!(batch.cursors, [("a".into(), 10)]);
        assert_eq!(batch.retries, [(("a".into(), 3), None)]);
    }

    #[tokio::test]
    async fn flushes_take_turns() {
        use std::sync::Arc;
        let buffer = Arc::new(WriteBehind::default());
        buffer.cursor("a", 1);
        let (entered, wait) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let buffer = buffer.clone();
            async move {
                buffer
                    .flush(async |batch: &ProgressBatch| {
                        assert_eq!(batch.cursors, [("a".into(), 1)]);
                        let _ = entered.send(());
                        let _ = released.await;
                        Ok::<_, ()>(())
                    })
                    .await
            }
        });
        wait.await.unwrap();
        buffer.cursor("a", 2);
        let second = tokio::spawn({
            let buffer = buffer.clone();
            async move { written(&buffer).await }
        });
        // The second flush waits for the first one's turn.
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(second.await.unwrap().cursors, [("a".into(), 2)]);
    }

    #[test]
    fn forgetting_a_subscriber_drops_its_entries() {
        let buffer = WriteBehind::default();
        buffer.cursor("a", 1);
        buffer.cursor("b", 1);
        buffer.retry("a", 0, None);
        buffer.retry("b", 0, None);
        buffer.forget("a");
        assert_eq!(buffer.len(), (1, 1));
    }
}

#[cfg(test)]
mod attempt_tests {
    use super::*;

    fn record(seq: u64) -> crate::AttemptRecord {
        crate::AttemptRecord {
            seq,
            message_id: "msg_1".into(),
            offset: seq,
            attempt: 1,
            duration_ms: 1,
            status: Some(500),
            error: None,
            response: Some(bytes::Bytes::from(vec![b'x'; 1000])),
        }
    }

    /// Buffered attempt records count in the budget until written; a
    /// failed write puts them back (and counts them again), in order.
    #[tokio::test]
    async fn attempts_are_counted_until_written_and_kept_in_order_on_failure() {
        let budget = crate::MemoryBudget::new(1 << 20);
        let buffer = WriteBehind::default().with_budget(budget.clone());
        let t = crate::TopicName::new("t").unwrap();
        buffer.attempts(&t, "s", vec![record(1), record(2)], 10);
        let held = budget.used();
        assert!(held >= 2_000, "{held}");
        let failed = buffer
            .flush(async |_: &ProgressBatch| Err::<(), ()>(()))
            .await;
        assert!(failed.is_err());
        assert_eq!(budget.used(), held, "back in the buffer, counted again");
        buffer.attempts(&t, "s", vec![record(3)], 10);
        let mut seqs = Vec::new();
        buffer
            .flush(async |batch: &ProgressBatch| {
                seqs = batch.attempts.iter().map(|(_, _, r)| r.seq).collect();
                assert_eq!(batch.attempt_keep, 10);
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(budget.used(), 0);
        buffer.attempts(&t, "s", vec![record(4)], 10);
        buffer.forget("s");
        assert_eq!(budget.used(), 0);
        assert!(buffer.is_empty());
    }
}
