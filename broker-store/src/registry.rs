//! Registrations in redb: one table of records by id, each record a small
//! JSON document. A change is one redb write transaction, committed with
//! redb's default durability (fsynced before `commit` returns).

use std::path::Path;

use broker_core::{CredentialRecord, Record, Role, SubscriberRecord};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StoreError;

const REGISTRATIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("registrations");
/// Subscribers' cursors by id: written often, so apart from the records.
const CURSORS: TableDefinition<'_, &str, u64> = TableDefinition::new("cursors");

pub(crate) struct Registry {
    db: Database,
}

/// A record as stored: the shape of [`Record`], with serde.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Publisher(StoredCredential),
    Listener(StoredCredential),
    Subscriber(StoredSubscriber),
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
    secret: String,
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
        tx.commit().map_err(|e| err(e.into()))?;
        Ok(Registry { db })
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
                    secret: s.secret,
                    order: s.order,
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
                secret: s.secret.clone(),
                order: s.order,
                cursor: s.cursor,
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

    /// Writes many cursors in one transaction (one fsync), skipping those
    /// of subscribers no longer registered.
    pub(crate) fn save_cursors(
        &self,
        path: &Path,
        cursors: &[(String, u64)],
    ) -> Result<(), StoreError> {
        let err = db_error(path);
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let registrations = tx.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
            let mut table = tx.open_table(CURSORS).map_err(|e| err(e.into()))?;
            for (id, cursor) in cursors {
                let registered = registrations
                    .get(id.as_str())
                    .map_err(|e| err(e.into()))?
                    .is_some();
                if registered {
                    table
                        .insert(id.as_str(), *cursor)
                        .map_err(|e| err(e.into()))?;
                }
            }
        }
        tx.commit().map_err(|e| err(e.into()))
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
            // A removed subscriber's cursor goes with it.
            if let Some(id) = removed_id {
                cursors.remove(id).map_err(|e| err(e.into()))?;
            }
        }
        tx.commit().map_err(|e| err(e.into()))
    }
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
