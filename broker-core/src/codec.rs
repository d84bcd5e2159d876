//! How a store writes a registration or a dead letter as bytes: one JSON
//! document each, the same for every backend (`broker-store` keeps them in
//! redb, `broker-redis` in Redis), so a record reads back the same
//! whatever wrote it.

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::{
    store::{FilterRecord, GroupRecord, TopicRecord},
    CredentialRecord, DeadLetter, Record, Role, SubscriberRecord,
};

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
    /// Its filter (records written before filters have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<StoredFilter>,
    order: u64,
    floor: u64,
    done: Vec<u64>,
    deliveries: Vec<(u64, u32)>,
    #[serde(default)]
    next: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    leases: Vec<(u64, u64, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ready: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    redriven: Vec<u64>,
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
struct StoredFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expression: Option<String>,
}

impl From<&FilterRecord> for StoredFilter {
    fn from(f: &FilterRecord) -> Self {
        StoredFilter {
            event_types: f.event_types.clone(),
            expression: f.expression.clone(),
        }
    }
}

impl From<StoredFilter> for FilterRecord {
    fn from(f: StoredFilter) -> Self {
        FilterRecord {
            event_types: f.event_types,
            expression: f.expression,
        }
    }
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
    /// Its filter (records written before filters have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<StoredFilter>,
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

#[derive(Serialize, Deserialize)]
struct StoredDeadLetter {
    message_id: String,
    offset: u64,
    attempts: u32,
    last_status: Option<u16>,
    last_error: String,
    failed_at_ms: u64,
}

/// `record` as bytes (JSON).
pub fn encode_record(record: &Record) -> Vec<u8> {
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
            filter: s.filter.as_ref().map(StoredFilter::from),
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
            filter: g.filter.as_ref().map(StoredFilter::from),
            order: g.order,
            floor: g.floor,
            done: g.done.clone(),
            deliveries: g.deliveries.clone(),
            next: g.next,
            leases: g.leases.clone(),
            ready: g.ready.clone(),
            redriven: g.redriven.clone(),
        }),
    };
    serde_json::to_vec(&stored).expect("plain data serializes")
}

/// The record stored under `id` as `bytes`.
///
/// # Errors
///
/// Why the bytes are not a record this version understands.
pub fn decode_record(id: String, bytes: &[u8]) -> Result<Record, String> {
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(match stored {
        Stored::Publisher(c) => credential(id, Role::Publish, c),
        Stored::Listener(c) => credential(id, Role::Listen, c),
        Stored::Subscriber(s) => Record::Subscriber(SubscriberRecord {
            cursor: s.cursor,
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
            filter: s.filter.map(FilterRecord::from),
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
            filter: g.filter.map(FilterRecord::from),
            order: g.order,
            floor: g.floor,
            done: g.done,
            deliveries: g.deliveries,
            next: g.next,
            leases: g.leases,
            ready: g.ready,
            redriven: g.redriven,
        }),
    })
}

/// `dead` as bytes (JSON).
pub fn encode_dead_letter(dead: &DeadLetter) -> Vec<u8> {
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
    serde_json::to_vec(&stored).expect("plain data serializes")
}

/// The dead letter stored as `bytes`.
///
/// # Errors
///
/// Why the bytes are not a dead letter.
pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, String> {
    let stored: StoredDeadLetter = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(DeadLetter {
        message_id: stored.message_id,
        offset: stored.offset,
        attempts: stored.attempts,
        last_status: stored.last_status,
        last_error: stored.last_error,
        failed_at: UNIX_EPOCH + std::time::Duration::from_millis(stored.failed_at_ms),
    })
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
