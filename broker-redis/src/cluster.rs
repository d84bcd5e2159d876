//! Several brokers on one Redis as one broker ([`broker_core::Cluster`]).
//!
//! - **Changes** are announced on one Pub/Sub channel (`<namespace>:changes`)
//!   by the scripts that make them, in the same atomic step:
//!   `a <replica> <first> <next> <topic>` for an append,
//!   `r <replica> <version> <id>` for a registration put or removed,
//!   `d <replica> <version> <topic>` for a topic deleted. Registration
//!   changes and deletions are numbered by one counter (`…:{r}:version`).
//! - **The feed** (one task per process, on its own Pub/Sub connection)
//!   coalesces what other replicas announce into a bounded [`Pending`]
//!   that the broker takes with [`Cluster::changes`]. Pub/Sub delivers at
//!   most once: after a reconnection, and whenever the version counter
//!   stays ahead of the last announcement seen for two checks in a row
//!   (checked every [`CHECK_EVERY`]), the broker is told to resync (load
//!   every registration again). So a registration reaches every replica
//!   within milliseconds, and within about 2 s even when an announcement
//!   is lost.
//! - **Liveness**: each replica keeps its id in a sorted set scored by the
//!   Redis time until which it is alive (`HEARTBEAT`), so every replica
//!   sees the same set whatever its own clock says.
//! - **Leases** on subscribers' deliveries are keys holding the replica id
//!   with a TTL (`CLAIM` takes a free one or renews one's own; `RELEASE`
//!   drops one's own), all in one script call per batch.

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use async_trait::async_trait;
use broker_core::{Changes, Cluster, Record, TopicName};
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::Value;

use crate::{RedisStoreError, Shared};

/// How often the version counter is compared with the announcements seen.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Registration ids or topics a feed holds for the broker at most: past
/// it, it asks for a resync instead.
const MAX_PENDING: usize = 10_000;

/// Leases claimed or released by one script call at most.
const LEASE_BATCH: usize = 512;

/// What other replicas changed and the broker has not taken yet.
#[derive(Default)]
pub(crate) struct Pending {
    resync: bool,
    deleted: HashSet<TopicName>,
    registrations: HashSet<String>,
    appended: HashMap<TopicName, (u64, u64)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.resync
            && self.deleted.is_empty()
            && self.registrations.is_empty()
            && self.appended.is_empty()
    }

    fn resync(&mut self) {
        *self = Pending {
            resync: true,
            ..Pending::default()
        };
    }

    fn take(&mut self) -> Changes {
        let pending = std::mem::take(self);
        Changes {
            resync: pending.resync,
            deleted: pending.deleted.into_iter().collect(),
            registrations: pending.registrations.into_iter().collect(),
            appended: pending
                .appended
                .into_iter()
                .map(|(topic, (first, next))| (topic, first, next))
                .collect(),
        }
    }
}

/// The feed's state, shared with the broker's follower.
#[derive(Default)]
pub(crate) struct Feed {
    pending: Mutex<Pending>,
    ready: tokio::sync::Notify,
    /// The highest version number announced so far (own ones included).
    seen: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    started: std::sync::atomic::AtomicBool,
}

impl Feed {
    fn push(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.pending.lock());
        self.ready.notify_one();
    }
}

/// One announcement, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Announcement<'a> {
    Appended {
        replica: &'a str,
        first: u64,
        next: u64,
        topic: &'a str,
    },
    Registration {
        replica: &'a str,
        version: u64,
        id: &'a str,
    },
    Deleted {
        replica: &'a str,
        version: u64,
        topic: &'a str,
    },
}

fn parse(text: &str) -> Option<Announcement<'_>> {
    let mut parts = text.splitn(5, ' ');
    let kind = parts.next()?;
    let replica = parts.next()?;
    match kind {
        "a" => Some(Announcement::Appended {
            replica,
            first: parts.next()?.parse().ok()?,
            next: parts.next()?.parse().ok()?,
            topic: parts.next()?,
        }),
        "r" | "d" => {
            let version = parts.next()?.parse().ok()?;
            let subject = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some(if kind == "r" {
                Announcement::Registration {
                    replica,
                    version,
                    id: subject,
                }
            } else {
                Announcement::Deleted {
                    replica,
                    version,
                    topic: subject,
                }
            })
        }
        _ => None,
    }
}

impl Shared {
    /// Takes one announcement in.
    fn announced(&self, text: &str) {
        let Some(announcement) = parse(text) else {
            tracing::warn!(
                announcement = text,
                "an unreadable announcement was ignored"
            );
            return;
        };
        let feed = &self.feed;
        match announcement {
            Announcement::Appended {
                replica,
                first,
                next,
                topic,
            } => {
                if replica == self.replica {
                    return;
                }
                let Ok(topic) = TopicName::new(topic) else {
                    return;
                };
                // Kept during a resync too: live listeners want them.
                feed.push(|p| {
                    if let Some((a, b)) = p.appended.get_mut(&topic) {
                        *a = (*a).min(first);
                        *b = (*b).max(next);
                    } else if p.appended.len() < MAX_PENDING {
                        p.appended.insert(topic, (first, next));
                    } else {
                        p.resync();
                    }
                });
            }
            Announcement::Registration {
                replica,
                version,
                id,
            } => {
                feed.seen.fetch_max(version, Ordering::AcqRel);
                if replica == self.replica {
                    return;
                }
                feed.push(|p| {
                    if p.resync {
                        return;
                    }
                    if p.registrations.len() < MAX_PENDING {
                        p.registrations.insert(id.to_owned());
                    } else {
                        p.resync();
                    }
                });
            }
            Announcement::Deleted {
                replica,
                version,
                topic,
            } => {
                feed.seen.fetch_max(version, Ordering::AcqRel);
                let Ok(topic) = TopicName::new(topic) else {
                    return;
                };
                // At once, before the registry takes it: a publish this
                // replica still authorises meanwhile is refused.
                self.incarnations.gone(&topic);
                if replica == self.replica {
                    return;
                }
                feed.push(|p| {
                    p.appended.remove(&topic);
                    if p.deleted.len() < MAX_PENDING {
                        p.deleted.insert(topic);
                    } else {
                        p.resync();
                    }
                });
            }
        }
    }

    /// The version counter now.
    async fn version(&self) -> Result<u64, RedisStoreError> {
        let mut con = self.con();
        let v: Option<u64> = self
            .call(
                "version",
                redis::cmd("GET")
                    .arg(self.keys.version())
                    .query_async(&mut con),
            )
            .await?;
        Ok(v.unwrap_or(0))
    }

    fn lease_keys(&self, ids: &[String]) -> Vec<String> {
        ids.iter().map(|id| self.keys.lease(id)).collect()
    }
}

/// Starts the feed once.
pub(crate) fn start(shared: &Arc<Shared>, stop: tokio::sync::watch::Receiver<bool>) {
    if !shared.feed.started.swap(true, Ordering::AcqRel) {
        tokio::spawn(feed(shared.clone(), stop));
    }
}

/// Follows the changes channel until told to stop: reconnects by itself
/// (asking for a resync each time, since Pub/Sub keeps nothing for a
/// subscriber that was away) and checks the version counter every
/// [`CHECK_EVERY`].
async fn feed(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let channel = shared.keys.channel();
    let mut failing = false;
    'connect: loop {
        let stopping = *stop.borrow();
        if stopping {
            break;
        }
        let connected = async {
            let mut pubsub = shared
                .call("subscribe", shared.client.get_async_pubsub())
                .await?;
            shared.call("subscribe", pubsub.subscribe(&channel)).await?;
            Ok::<_, RedisStoreError>(pubsub)
        };
        let pubsub = tokio::select! {
            connected = connected => connected,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let mut messages = match pubsub {
            Ok(pubsub) => pubsub.into_on_message(),
            Err(error) => {
                if !failing {
                    tracing::error!(%error, "following the other replicas' changes failed; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_EVERY) => continue 'connect,
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        };
        if failing {
            tracing::info!("following the other replicas' changes again");
            failing = false;
        }
        // Whatever happened while nobody listened.
        shared.feed.push(Pending::resync);
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut behind: Option<u64> = None;
        loop {
            // The select only picks: awaiting inside a branch would hold
            // the stop receiver's guard across it.
            let step = tokio::select! {
                message = messages.next() => Step::Message(message),
                _ = check.tick() => Step::Check,
                _ = stop.wait_for(|stop| *stop) => Step::Stop,
            };
            match step {
                Step::Stop => break 'connect,
                // The connection ended: connect again.
                Step::Message(None) => continue 'connect,
                Step::Message(Some(message)) => {
                    match std::str::from_utf8(message.get_payload_bytes()) {
                        Ok(text) => shared.announced(text),
                        Err(_) => tracing::warn!("a non-UTF-8 announcement was ignored"),
                    }
                }
                Step::Check => {
                    let Ok(version) = shared.version().await else {
                        continue;
                    };
                    let seen = shared.feed.seen.load(Ordering::Acquire);
                    // Behind twice in a row (not just an announcement on
                    // its way): something was missed.
                    match behind {
                        Some(v) if seen < v => {
                            tracing::warn!(
                                version = v,
                                seen,
                                "announcements were missed; resyncing"
                            );
                            shared.feed.seen.fetch_max(v, Ordering::AcqRel);
                            shared.feed.push(Pending::resync);
                            behind = None;
                        }
                        _ => behind = (version > seen).then_some(version),
                    }
                }
            }
        }
    }
    shared.feed.closed.store(true, Ordering::Release);
    shared.feed.ready.notify_one();
}

enum Step {
    Message(Option<redis::Msg>),
    Check,
    Stop,
}

/// The [`Cluster`] of a [`RedisStore`](crate::RedisStore).
pub(crate) struct RedisCluster(pub(crate) Arc<Shared>);

#[async_trait]
impl Cluster for RedisCluster {
    fn replica(&self) -> &str {
        &self.0.replica
    }

    async fn changes(&self) -> Option<Changes> {
        let feed = &self.0.feed;
        loop {
            let ready = feed.ready.notified();
            {
                let mut pending = feed.pending.lock();
                if !pending.is_empty() {
                    return Some(pending.take());
                }
            }
            if feed.closed.load(Ordering::Acquire) {
                return None;
            }
            ready.await;
        }
    }

    async fn record(&self, id: &str) -> Result<Option<Record>, broker_core::Error> {
        let s = &self.0;
        let mut con = s.con();
        let (bytes, cursor): (Option<Vec<u8>>, Option<u64>) = s
            .call(
                "read registration",
                redis::pipe()
                    .hget(s.keys.registrations(), id)
                    .hget(s.keys.cursors(), id)
                    .query_async(&mut con),
            )
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let record =
            broker_core::codec::decode_record(id.to_owned(), &bytes).map_err(|reason| {
                s.corrupt(
                    s.keys.registrations(),
                    format!("registration {id}: {reason}"),
                )
            })?;
        // The log's incarnation, made before the registration was saved.
        // None: its topic was just deleted (the feed brings the deletion)
        // or a replica of an older version registered it (its first
        // append makes one).
        if let Ok(topic) = TopicName::new(record.topic()) {
            let prefix: Option<String> = s
                .call(
                    "read incarnation",
                    redis::cmd("GET")
                        .arg(s.keys.topic(&topic, crate::keys::Part::Prefix))
                        .query_async(&mut con),
                )
                .await?;
            if let Some(prefix) = prefix {
                s.incarnations.learn(&topic, &prefix);
            }
        }
        Ok(Some(match record {
            Record::Subscriber(mut sub) => {
                sub.cursor = sub.cursor.max(cursor.unwrap_or(0));
                Record::Subscriber(sub)
            }
            other => other,
        }))
    }

    async fn heartbeat(&self, ttl: Duration) -> Result<Vec<String>, broker_core::Error> {
        let s = &self.0;
        let mut call = s.scripts.heartbeat.prepare_invoke();
        call.key(s.keys.replicas())
            .arg(&s.replica)
            .arg(ttl.as_millis().max(1) as u64);
        let mut con = s.con();
        Ok(s.call("heartbeat", call.invoke_async(&mut con)).await?)
    }

    async fn claim(&self, ids: &[String], ttl: Duration) -> Result<Vec<bool>, broker_core::Error> {
        let s = &self.0;
        let mut held = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LEASE_BATCH) {
            let mut call = s.scripts.claim.prepare_invoke();
            for key in s.lease_keys(chunk) {
                call.key(key);
            }
            call.arg(&s.replica).arg(ttl.as_millis().max(1) as u64);
            let mut con = s.con();
            let reply: Vec<i64> = s.call("claim leases", call.invoke_async(&mut con)).await?;
            held.extend(reply.into_iter().map(|h| h == 1));
        }
        Ok(held)
    }

    async fn release(&self, ids: &[String]) -> Result<(), broker_core::Error> {
        let s = &self.0;
        // The new holder starts from the cursors and retries written here.
        s.flush().await?;
        for chunk in ids.chunks(LEASE_BATCH) {
            let mut call = s.scripts.release.prepare_invoke();
            for key in s.lease_keys(chunk) {
                call.key(key);
            }
            call.arg(&s.replica);
            let mut con = s.con();
            s.call("release leases", call.invoke_async::<Value>(&mut con))
                .await?;
        }
        Ok(())
    }

    async fn leave(&self) -> Result<(), broker_core::Error> {
        let s = &self.0;
        let mut con = s.con();
        s.call(
            "leave",
            redis::cmd("ZREM")
                .arg(s.keys.replicas())
                .arg(&s.replica)
                .exec_async(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<String, broker_core::Error> {
        let s = &self.0;
        let token = broker_core::new_id_prefix();
        let key = s.keys.lock(name);
        let deadline = tokio::time::Instant::now() + s.options.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut con = s.con();
            let taken: Option<String> = s
                .call(
                    "lock",
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .query_async(&mut con),
                )
                .await?;
            if taken.is_some() {
                return Ok(token);
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(broker_core::Error::storage(format!(
                    "{name} stayed locked by another replica for {:?}",
                    s.options.timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), broker_core::Error> {
        let s = &self.0;
        let mut call = s.scripts.release.prepare_invoke();
        call.key(s.keys.lock(name)).arg(token);
        let mut con = s.con();
        s.call("unlock", call.invoke_async::<Value>(&mut con))
            .await?;
        Ok(())
    }

    async fn cursor(&self, subscriber: &str) -> Result<Option<u64>, broker_core::Error> {
        Ok(match self.record(subscriber).await? {
            Some(Record::Subscriber(sub)) => Some(sub.cursor),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        assert_eq!(
            parse("a r1 5 7 orders.eu"),
            Some(Announcement::Appended {
                replica: "r1",
                first: 5,
                next: 7,
                topic: "orders.eu"
            })
        );
        assert_eq!(
            parse("r r2 9 sub_abc"),
            Some(Announcement::Registration {
                replica: "r2",
                version: 9,
                id: "sub_abc"
            })
        );
        assert_eq!(
            parse("d r2 10 t"),
            Some(Announcement::Deleted {
                replica: "r2",
                version: 10,
                topic: "t"
            })
        );
        for bad in ["", "a", "a r1 x 7 t", "r r1 1", "r r1 1 a b", "z r1 1 a"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_full_feed_asks_for_a_resync() {
        let mut p = Pending::default();
        for n in 0..MAX_PENDING {
            p.registrations.insert(format!("id{n}"));
        }
        assert!(!p.resync);
        p.resync();
        let taken = p.take();
        assert!(taken.resync && taken.registrations.is_empty());
        assert!(p.is_empty());
    }
}
