//! Registrations in redb: one table of records by id, each record a small
//! JSON document (`broker_core::codec`). A change is one redb write
//! transaction, committed with
//! redb's default durability (fsynced before `commit` returns).

use std::{collections::HashMap, path::Path, time::UNIX_EPOCH};

use broker_core::{DeadLetter, PendingRetry, Record};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::StoreError;

const REGISTRATIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("registrations");
/// Subscribers' cursors by id: written often, so apart from the records.
const CURSORS: TableDefinition<'_, &str, u64> = TableDefinition::new("cursors");
/// Dead letters by `{subscriber id}/{offset, 20 digits}`: a subscriber's
/// are one key range, in offset order.
const DEAD_LETTERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("dead_letters");

/// Pending retries by `{subscriber id}/{offset, 20 digits}`: (attempts
/// made, when the next is due in unix ms). Written with the cursors.
const RETRIES: TableDefinition<'_, &str, (u32, u64)> = TableDefinition::new("retries");

/// Attempt records by `{subscriber id}/{seq, 20 digits}`: a subscriber's
/// attempt log is one key range, oldest first. Written with the cursors.
const ATTEMPTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("attempts");

fn dead_key(subscriber: &str, offset: u64) -> String {
    format!("{subscriber}/{offset:020}")
}

/// The key range of a subscriber's dead letters: `/` is followed by `0`.
fn dead_range(subscriber: &str) -> (String, String) {
    (format!("{subscriber}/"), format!("{subscriber}0"))
}

/// The first key of `table` in `from..to`: a subscriber's oldest entry.
fn oldest_in(
    table: &redb::Table<'_, &str, &[u8]>,
    from: &str,
    to: &str,
) -> Result<Option<String>, redb::StorageError> {
    Ok(table
        .range(from..to)?
        .next()
        .transpose()?
        .map(|(key, _)| key.value().to_owned()))
}

pub(crate) struct Registry {
    db: Database,
    /// How many dead letters each subscriber has, counted from the table
    /// on first use; kept as they come and go.
    dead_counts: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
    /// How many attempt records each subscriber has, the same way.
    attempt_counts: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
}

fn db_error(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| StoreError::Registry {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

impl Registry {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let err = db_error(path);
        let db = Database::create(path).map_err(|e| err(e.into()))?;
        // The table exists from the first open on, so reads never meet a
        // missing one.
        let tx = db.begin_write().map_err(|e| err(e.into()))?;
        tx.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
        tx.open_table(CURSORS).map_err(|e| err(e.into()))?;
        tx.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?;
        tx.open_table(RETRIES).map_err(|e| err(e.into()))?;
        tx.open_table(ATTEMPTS).map_err(|e| err(e.into()))?;
        tx.commit().map_err(|e| err(e.into()))?;
        Ok(Registry {
            db,
            dead_counts: Default::default(),
            attempt_counts: Default::default(),
        })
    }

    pub(crate) fn load(&self, path: &Path) -> Result<Vec<Record>, StoreError> {
        let err = db_error(path);
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
        let cursors = tx.open_table(CURSORS).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err(e.into()))? {
            let (id, value) = entry.map_err(|e| err(e.into()))?;
            let id = id.value().to_owned();
            let record =
                broker_core::codec::decode_record(id.clone(), value.value()).map_err(|reason| {
                    StoreError::Corrupt {
                        path: path.to_owned(),
                        reason: format!("registration {id}: {reason}"),
                    }
                })?;
            out.push(match record {
                // Later moves of the cursor are in their own table.
                Record::Subscriber(mut s) => {
                    if let Some(c) = cursors.get(id.as_str()).map_err(|e| err(e.into()))? {
                        s.cursor = s.cursor.max(c.value());
                    }
                    Record::Subscriber(s)
                }
                other => other,
            });
        }
        Ok(out)
    }

    pub(crate) fn put(&self, path: &Path, record: &Record) -> Result<(), StoreError> {
        let bytes = broker_core::codec::encode_record(record);
        self.write(path, None, |table| {
            table.insert(record.id(), bytes.as_slice())?;
            Ok(())
        })
    }

    pub(crate) fn remove(&self, path: &Path, id: &str) -> Result<(), StoreError> {
        self.write(path, Some(id), |table| {
            table.remove(id)?;
            Ok(())
        })
    }

    /// Writes many cursors and pending retries (kept: `Some`, forgotten:
    /// `None`) in one transaction (one fsync), skipping those of
    /// subscribers no longer registered.
    pub(crate) fn save_progress(
        &self,
        path: &Path,
        batch: &broker_core::ProgressBatch,
        not_before: u64,
    ) -> Result<(), StoreError> {
        let (cursors, retries) = (&batch.cursors, &batch.retries);
        let err = db_error(path);
        // Held across the transaction: the counts and the table agree
        // (the new counts are kept apart until it commits).
        let mut counts = self.attempt_counts.lock();
        let mut updated = HashMap::<&str, usize>::new();
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let registrations = tx.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
            let registered = |id: &str| {
                registrations
                    .get(id)
                    .map(|found| found.is_some())
                    .map_err(|e| err(e.into()))
            };
            let mut table = tx.open_table(CURSORS).map_err(|e| err(e.into()))?;
            for (id, cursor) in cursors {
                if registered(id)? {
                    table
                        .insert(id.as_str(), *cursor)
                        .map_err(|e| err(e.into()))?;
                }
            }
            let mut table = tx.open_table(RETRIES).map_err(|e| err(e.into()))?;
            for ((id, offset), retry) in retries {
                let key = dead_key(id, *offset);
                match retry {
                    Some(retry) if registered(id)? => {
                        table
                            .insert(key.as_str(), *retry)
                            .map_err(|e| err(e.into()))?;
                    }
                    _ => {
                        table.remove(key.as_str()).map_err(|e| err(e.into()))?;
                    }
                }
            }
            let mut table = tx.open_table(ATTEMPTS).map_err(|e| err(e.into()))?;
            // Looked up once a subscriber per batch: a batch holds
            // thousands of attempts of a few subscribers.
            let mut known = HashMap::<&str, bool>::new();
            for (_, id, record) in &batch.attempts {
                let is_registered = match known.get(id.as_str()) {
                    Some(&r) => r,
                    None => *known.entry(id.as_str()).or_insert(registered(id)?),
                };
                if !is_registered {
                    continue;
                }
                let count = match updated.get(id.as_str()).or(counts.get(id.as_str())) {
                    Some(&n) => n,
                    None => {
                        let (from, to) = dead_range(id);
                        table
                            .range(from.as_str()..to.as_str())
                            .map_err(|e| err(e.into()))?
                            .count()
                    }
                };
                let replaced = table
                    .insert(
                        dead_key(id, record.seq).as_str(),
                        record.encode().as_slice(),
                    )
                    .map_err(|e| err(e.into()))?
                    .is_some();
                updated.insert(id.as_str(), count + usize::from(!replaced));
            }
            // The oldest go: past the count, or older than retention; found
            // in one pass over the front of each log written to.
            for (id, count) in updated.iter_mut() {
                let (from, to) = dead_range(id);
                let excess = count.saturating_sub(batch.attempt_keep);
                let mut doomed = Vec::new();
                for entry in table
                    .range(from.as_str()..to.as_str())
                    .map_err(|e| err(e.into()))?
                {
                    let (key, _) = entry.map_err(|e| err(e.into()))?;
                    let key = key.value();
                    let seq = key
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                    if doomed.len() >= excess && seq >= not_before {
                        break;
                    }
                    doomed.push(key.to_owned());
                }
                for key in &doomed {
                    table.remove(key.as_str()).map_err(|e| err(e.into()))?;
                }
                *count -= doomed.len();
            }
        }
        tx.commit().map_err(|e| err(e.into()))?;
        for (id, count) in updated {
            counts.insert(id.to_owned(), count);
        }
        Ok(())
    }

    /// `subscriber`'s attempts that `query` wants, newest first.
    pub(crate) fn attempts(
        &self,
        path: &Path,
        subscriber: &str,
        query: &broker_core::AttemptQuery,
        not_before: u64,
    ) -> Result<Vec<broker_core::AttemptRecord>, StoreError> {
        let err = db_error(path);
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(ATTEMPTS).map_err(|e| err(e.into()))?;
        let from = dead_key(subscriber, not_before);
        let to = match query.before {
            Some(before) => dead_key(subscriber, before),
            None => dead_range(subscriber).1,
        };
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for entry in table
            .range(from.as_str()..to.as_str())
            .map_err(|e| err(e.into()))?
            .rev()
        {
            if out.len() >= query.limit {
                break;
            }
            let (key, value) = entry.map_err(|e| err(e.into()))?;
            let record = broker_core::AttemptRecord::decode(value.value()).map_err(|reason| {
                StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("attempt {}: {reason}", key.value()),
                }
            })?;
            if query.wants(&record, not_before) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// A subscriber's pending retries, in offset order.
    pub(crate) fn pending_retries(
        &self,
        path: &Path,
        subscriber: &str,
    ) -> Result<Vec<PendingRetry>, StoreError> {
        let err = db_error(path);
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(RETRIES).map_err(|e| err(e.into()))?;
        let (from, to) = dead_range(subscriber);
        let mut out = Vec::new();
        for entry in table
            .range(from.as_str()..to.as_str())
            .map_err(|e| err(e.into()))?
        {
            let (key, value) = entry.map_err(|e| err(e.into()))?;
            let offset = key
                .value()
                .rsplit('/')
                .next()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("retry key {}", key.value()),
                })?;
            let (attempts, due_ms) = value.value();
            out.push(PendingRetry {
                offset,
                attempts,
                due: UNIX_EPOCH + std::time::Duration::from_millis(due_ms),
            });
        }
        Ok(out)
    }

    /// Keeps a dead letter; returns how many of the subscriber's oldest
    /// went to stay within `keep`. Writers of dead letters are
    /// one subscriber's worker at a time, so the count needs no more than
    /// its lock around the transaction.
    pub(crate) fn put_dead_letter(
        &self,
        path: &Path,
        subscriber: &str,
        dead: &DeadLetter,
        keep: usize,
    ) -> Result<u64, StoreError> {
        let err = db_error(path);
        let bytes = broker_core::codec::encode_dead_letter(dead);
        let max = keep.max(1);
        // Held across the transaction: the count and the table agree.
        let mut counts = self.dead_counts.lock();
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        let (from, to) = dead_range(subscriber);
        let mut evicted = 0;
        let count = {
            let mut table = tx.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?;
            let mut count = match counts.get(subscriber) {
                Some(&n) => n,
                None => table
                    .range(from.as_str()..to.as_str())
                    .map_err(|e| err(e.into()))?
                    .count(),
            };
            let replaced = table
                .insert(dead_key(subscriber, dead.offset).as_str(), bytes.as_slice())
                .map_err(|e| err(e.into()))?
                .is_some();
            if !replaced {
                count += 1;
            }
            while count > max {
                let oldest = oldest_in(&table, &from, &to).map_err(|e| err(e.into()))?;
                let Some(oldest) = oldest else { break };
                table.remove(oldest.as_str()).map_err(|e| err(e.into()))?;
                count -= 1;
                evicted += 1;
            }
            count
        };
        tx.commit().map_err(|e| err(e.into()))?;
        counts.insert(subscriber.to_owned(), count);
        Ok(evicted)
    }

    pub(crate) fn remove_dead_letter(
        &self,
        path: &Path,
        subscriber: &str,
        offset: u64,
    ) -> Result<(), StoreError> {
        let err = db_error(path);
        let mut counts = self.dead_counts.lock();
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        let removed = {
            let mut table = tx.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?;
            let removed = table
                .remove(dead_key(subscriber, offset).as_str())
                .map_err(|e| err(e.into()))?
                .is_some();
            removed
        };
        tx.commit().map_err(|e| err(e.into()))?;
        if removed {
            if let Some(n) = counts.get_mut(subscriber) {
                *n = n.saturating_sub(1);
            }
        }
        Ok(())
    }

    pub(crate) fn dead_letters(
        &self,
        path: &Path,
        subscriber: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let err = db_error(path);
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?;
        let (from, to) = dead_range(subscriber);
        let mut out = Vec::new();
        for entry in table
            .range(from.as_str()..to.as_str())
            .map_err(|e| err(e.into()))?
            .take(limit)
        {
            let (key, value) = entry.map_err(|e| err(e.into()))?;
            let dead = broker_core::codec::decode_dead_letter(value.value()).map_err(|reason| {
                StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("dead letter {}: {reason}", key.value()),
                }
            })?;
            out.push(dead);
        }
        Ok(out)
    }

    fn write(
        &self,
        path: &Path,
        removed_id: Option<&str>,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        let err = db_error(path);
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = tx.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
            f(&mut table).map_err(|e| err(e.into()))?;
            let mut cursors = tx.open_table(CURSORS).map_err(|e| err(e.into()))?;
            // A removed subscriber's cursor, dead letters and pending
            // retries go with it.
            if let Some(id) = removed_id {
                cursors.remove(id).map_err(|e| err(e.into()))?;
                let (from, to) = dead_range(id);
                let mut dead = tx.open_table(DEAD_LETTERS).map_err(|e| err(e.into()))?;
                dead.retain_in(from.as_str()..to.as_str(), |_, _| false)
                    .map_err(|e| err(e.into()))?;
                let mut retries = tx.open_table(RETRIES).map_err(|e| err(e.into()))?;
                retries
                    .retain_in(from.as_str()..to.as_str(), |_, _| false)
                    .map_err(|e| err(e.into()))?;
                let mut attempts = tx.open_table(ATTEMPTS).map_err(|e| err(e.into()))?;
                attempts
                    .retain_in(from.as_str()..to.as_str(), |_, _| false)
                    .map_err(|e| err(e.into()))?;
            }
        }
        tx.commit().map_err(|e| err(e.into()))?;
        // After the commit, never inside a transaction: `put_dead_letter`
        // takes this lock before it opens one.
        if let Some(id) = removed_id {
            self.dead_counts.lock().remove(id);
            self.attempt_counts.lock().remove(id);
        }
        Ok(())
    }
}
