//! Registrations in redb: one table of records by id, each record a small
//! JSON document. A change is one redb write transaction, committed with
//! redb's default durability (fsynced before `commit` returns).

use std::{path::Path, time::UNIX_EPOCH};

use broker_core::{
    CredentialRecord, DeadLetter, GroupRecord, PendingRetry, Record, Role, SubscriberRecord,
    TopicRecord,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

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

/// A pending retry kept or forgotten: `(subscriber id, offset)` and
/// `Some((attempts, due in unix ms))` or `None`.
pub(crate) type RetryChange = ((String, u64), RetryValue);
/// `Some((attempts, due in unix ms))`, or `None` for forgotten.
pub(crate) type RetryValue = Option<(u32, u64)>;

fn dead_key(subscriber: &str, offset: u64) -> String {
    format!("{subscriber}/{offset:020}")
}

/// The key range of a subscriber's dead letters: `/` is followed by `0`.
fn dead_range(subscriber: &str) -> (String, String) {
    (format!("{subscriber}/"), format!("{subscriber}0"))
}

#[derive(Serialize, Deserialize)]
struct StoredDeadLetter {
    message_id: String,
    offset: u64,
    attempts: u32,
    last_status: Option<u16>,
    last_error: String,
    failed_at_ms: u64,
}

pub(crate) struct Registry {
    db: Database,
    /// How many dead letters each subscriber has, counted from the table
    /// on first use; kept as they come and go.
    dead_counts: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
    /// Dead letters kept per subscriber, the oldest dropped first
    /// ([`broker_core::MAX_DEAD_LETTERS`]; lower in tests).
    pub(crate) max_dead_letters: std::sync::atomic::AtomicUsize,
}

/// A record as stored: the shape of [`Record`], with serde.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Publisher(StoredCredential),
    Listener(StoredCredential),
    Subscriber(StoredSubscriber),
    Topic(StoredTopic),
    Group(StoredGroup),
}

#[derive(Serialize, Deserialize)]
struct StoredGroup {
    topic: String,
    name: String,
    ack_timeout_ms: u64,
    max_deliveries: u32,
    order: u64,
    floor: u64,
    done: Vec<u64>,
    deliveries: Vec<(u64, u32)>,
}

#[derive(Serialize, Deserialize)]
struct StoredTopic {
    name: String,
    order: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredCredential {
    topic: String,
    name: String,
    token: String,
    order: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSubscriber {
    topic: String,
    url: String,
    method: String,
    headers: Vec<(String, String)>,
    max_attempts: u32,
    /// A retry schedule's waits, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule_ms: Option<Vec<u64>>,
    #[serde(default)]
    ordered: bool,
    #[serde(default = "yes")]
    enabled: bool,
    secret: String,
    /// The secret the last rotation replaced, and until when (ms since the
    /// epoch) it signs too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_secret: Option<(String, u64)>,
    order: u64,
    /// Where it started; later moves are in the cursors table.
    cursor: u64,
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
        tx.commit().map_err(|e| err(e.into()))?;
        Ok(Registry {
            db,
            dead_counts: Default::default(),
            max_dead_letters: broker_core::MAX_DEAD_LETTERS.into(),
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
            let stored: Stored =
                serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("registration {id}: {e}"),
                })?;
            out.push(match stored {
                Stored::Publisher(c) => credential(id, Role::Publish, c),
                Stored::Listener(c) => credential(id, Role::Listen, c),
                Stored::Subscriber(s) => Record::Subscriber(SubscriberRecord {
                    cursor: cursors
                        .get(id.as_str())
                        .map_err(|e| err(e.into()))?
                        .map_or(s.cursor, |c| c.value().max(s.cursor)),
                    id,
                    topic: s.topic,
                    url: s.url,
                    method: s.method,
                    headers: s.headers,
                    max_attempts: s.max_attempts,
                    schedule: s.schedule_ms.map(|waits| {
                        waits
                            .into_iter()
                            .map(std::time::Duration::from_millis)
                            .collect()
                    }),
                    ordered: s.ordered,
                    enabled: s.enabled,
                    secret: s.secret,
                    previous_secret: s.previous_secret.map(|(secret, until)| {
                        (secret, UNIX_EPOCH + std::time::Duration::from_millis(until))
                    }),
                    order: s.order,
                }),
                Stored::Topic(t) => Record::Topic(TopicRecord {
                    id,
                    name: t.name,
                    order: t.order,
                }),
                Stored::Group(g) => Record::Group(GroupRecord {
                    id,
                    topic: g.topic,
                    name: g.name,
                    ack_timeout: std::time::Duration::from_millis(g.ack_timeout_ms),
                    max_deliveries: g.max_deliveries,
                    order: g.order,
                    floor: g.floor,
                    done: g.done,
                    deliveries: g.deliveries,
                }),
            });
        }
        Ok(out)
    }

    pub(crate) fn put(&self, path: &Path, record: &Record) -> Result<(), StoreError> {
        let stored = match record {
            Record::Credential(c) => {
                let inner = StoredCredential {
                    topic: c.topic.clone(),
                    name: c.name.clone(),
                    token: c.token.clone(),
                    order: c.order,
                };
                match c.role {
                    Role::Publish => Stored::Publisher(inner),
                    Role::Listen => Stored::Listener(inner),
                }
            }
            Record::Subscriber(s) => Stored::Subscriber(StoredSubscriber {
                topic: s.topic.clone(),
                url: s.url.clone(),
                method: s.method.clone(),
                headers: s.headers.clone(),
                max_attempts: s.max_attempts,
                schedule_ms: s
                    .schedule
                    .as_ref()
                    .map(|waits| waits.iter().map(|w| w.as_millis() as u64).collect()),
                ordered: s.ordered,
                enabled: s.enabled,
                secret: s.secret.clone(),
                previous_secret: s.previous_secret.as_ref().map(|(secret, until)| {
                    let ms = until
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    (secret.clone(), ms)
                }),
                order: s.order,
                cursor: s.cursor,
            }),
            Record::Topic(t) => Stored::Topic(StoredTopic {
                name: t.name.clone(),
                order: t.order,
            }),
            Record::Group(g) => Stored::Group(StoredGroup {
                topic: g.topic.clone(),
                name: g.name.clone(),
                ack_timeout_ms: g.ack_timeout.as_millis() as u64,
                max_deliveries: g.max_deliveries,
                order: g.order,
                floor: g.floor,
                done: g.done.clone(),
                deliveries: g.deliveries.clone(),
            }),
        };
        let bytes = serde_json::to_vec(&stored).expect("plain data serializes");
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
        cursors: &[(String, u64)],
        retries: &[RetryChange],
    ) -> Result<(), StoreError> {
        let err = db_error(path);
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
        }
        tx.commit().map_err(|e| err(e.into()))
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
    /// went to stay within `max_dead_letters`. Writers of dead letters are
    /// one subscriber's worker at a time, so the count needs no more than
    /// its lock around the transaction.
    pub(crate) fn put_dead_letter(
        &self,
        path: &Path,
        subscriber: &str,
        dead: &DeadLetter,
    ) -> Result<u64, StoreError> {
        let err = db_error(path);
        let stored = StoredDeadLetter {
            message_id: dead.message_id.clone(),
            offset: dead.offset,
            attempts: dead.attempts,
            last_status: dead.last_status,
            last_error: dead.last_error.clone(),
            failed_at_ms: dead
                .failed_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let bytes = serde_json::to_vec(&stored).expect("plain data serializes");
        let max = self
            .max_dead_letters
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
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
                let oldest = table
                    .range(from.as_str()..to.as_str())
                    .map_err(|e| err(e.into()))?
                    .next()
                    .transpose()
                    .map_err(|e| err(e.into()))?
                    .map(|(key, _)| key.value().to_owned());
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
            let stored: StoredDeadLetter =
                serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("dead letter {}: {e}", key.value()),
                })?;
            out.push(DeadLetter {
                message_id: stored.message_id,
                offset: stored.offset,
                attempts: stored.attempts,
                last_status: stored.last_status,
                last_error: stored.last_error,
                failed_at: UNIX_EPOCH + std::time::Duration::from_millis(stored.failed_at_ms),
            });
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
            }
        }
        tx.commit().map_err(|e| err(e.into()))?;
        // After the commit, never inside a transaction: `put_dead_letter`
        // takes this lock before it opens one.
        if let Some(id) = removed_id {
            self.dead_counts.lock().remove(id);
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn credential(id: String, role: Role, c: StoredCredential) -> Record {
    Record::Credential(CredentialRecord {
        id,
        topic: c.topic,
        name: c.name,
        role,
        token: c.token,
        order: c.order,
    })
}
