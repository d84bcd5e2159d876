//! The port the delivery side reports progress through: cursors, pending
//! retries, dead letters and the attempt log, kept in the store.

use std::sync::atomic::Ordering;

use super::Broker;
use crate::{
    store::{DeadLetter, PendingRetry},
    AttemptQuery, AttemptRecord, Error, Subscriber,
};

impl Broker {
    /// Counts `record` in `subscriber`'s endpoint stats and keeps it in its
    /// attempt log (buffered by a durable store; not kept when [`Limits::attempt_log`](crate::Limits::attempt_log)
    /// is 0).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn record_attempt(
        &self,
        subscriber: &Subscriber,
        record: AttemptRecord,
    ) -> Result<(), Error> {
        subscriber.endpoint_stats.observe(
            record.at(),
            record.succeeded(),
            u64::from(record.duration_ms),
        );
        self.shared
            .attempts_recorded
            .fetch_add(1, Ordering::Relaxed);
        let keep = self.shared.limits.attempt_log;
        if keep == 0 {
            return Ok(());
        }
        self.shared
            .store
            .record_attempts(subscriber.topic(), &subscriber.id, vec![record], keep)
            .await
    }

    /// Delivery attempts recorded so far (this process's).
    pub fn attempts_recorded(&self) -> u64 {
        self.shared.attempts_recorded.load(Ordering::Relaxed)
    }

    /// Subscriber `id`'s attempts on `topic` that `query` wants, newest
    /// first.
    ///
    /// # Errors
    ///
    /// [`Error::SubscriberNotFound`], or [`Error::Storage`].
    pub async fn attempts(
        &self,
        topic: &str,
        id: &str,
        query: &AttemptQuery,
    ) -> Result<Vec<AttemptRecord>, Error> {
        let subscriber = self.subscriber(topic, id)?;
        self.shared
            .store
            .attempts(subscriber.topic(), &subscriber.id, query)
            .await
    }

    /// Moves `subscriber`'s cursor forward to `cursor` (never back) and
    /// hands it to the store, which keeps it within a short time.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn commit_cursor(&self, subscriber: &Subscriber, cursor: u64) -> Result<(), Error> {
        if subscriber.cursor.fetch_max(cursor, Ordering::AcqRel) >= cursor {
            return Ok(());
        }
        self.shared.store.save_cursor(&subscriber.id, cursor).await
    }

    /// Keeps `subscriber`'s pending retry in the store, so that a restart
    /// goes on with its schedule ([`Progress::save_retry`](crate::Progress::save_retry)).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn keep_retry(
        &self,
        subscriber: &Subscriber,
        retry: PendingRetry,
    ) -> Result<(), Error> {
        self.shared.store.save_retry(&subscriber.id, retry).await
    }

    /// Forgets `subscriber`'s pending retry at `offset` (done with).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn forget_retry(&self, subscriber: &Subscriber, offset: u64) -> Result<(), Error> {
        self.shared.store.forget_retry(&subscriber.id, offset).await
    }

    /// `subscriber`'s stored pending retries at or past its cursor, oldest
    /// offset first; those below it (done with before a restart, their
    /// forgetting lost) are forgotten now.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn pending_retries(
        &self,
        subscriber: &Subscriber,
    ) -> Result<Vec<PendingRetry>, Error> {
        let cursor = subscriber.cursor();
        let mut pending = self.shared.store.pending_retries(&subscriber.id).await?;
        let done = pending.partition_point(|r| r.offset < cursor);
        for stale in pending.drain(..done) {
            self.shared
                .store
                .forget_retry(&subscriber.id, stale.offset)
                .await?;
        }
        Ok(pending)
    }

    /// Keeps `subscriber`'s dead letter (a delivery given up on) in the
    /// store; the oldest ones the store drops to stay within its bound are
    /// counted as [`Outcome::DeadLetterEvicted`](crate::Outcome).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn dead_letter(
        &self,
        subscriber: &Subscriber,
        dead: &DeadLetter,
    ) -> Result<(), Error> {
        let evicted = self
            .shared
            .store
            .put_dead_letter(&subscriber.id, dead, self.shared.limits.max_dead_letters)
            .await?;
        if evicted > 0 {
            subscriber.record(crate::Outcome::DeadLetterEvicted, evicted);
        }
        self.emit(crate::OpEvent::MessageDeadLettered {
            topic: subscriber.topic().to_string(),
            subscriber_id: subscriber.id().to_owned(),
            message_id: dead.message_id.clone(),
            attempts: dead.attempts,
            last_status: dead.last_status,
        })
        .await;
        Ok(())
    }

    /// Forgets `subscriber`'s dead letter at `offset` (redriven and
    /// delivered).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn forget_dead_letter(
        &self,
        subscriber: &Subscriber,
        offset: u64,
    ) -> Result<(), Error> {
        self.shared
            .store
            .remove_dead_letter(&subscriber.id, offset)
            .await
    }
}
