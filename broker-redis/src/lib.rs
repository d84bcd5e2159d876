//! A [`Store`] for `broker-core` on Redis: what `broker-store` keeps in a
//! data directory, kept in one Redis (6.2 or later) that several broker
//! processes may share.
//!
//! - **Topic logs**: one Redis stream per topic, entry id `<offset + 1>-0`
//!   (0-0 is not a valid id), fields `t` (published, ms since the epoch),
//!   `s` (payload bytes appended to the log so far, this one included),
//!   `c` (content type, when given), `e` (event type, when given; entries
//!   written before event types have none and read as none) and `p`
//!   (payload). An append is one
//!   round trip for the whole batch: a Lua script (by `EVALSHA`) `INCRBY`s
//!   the topic's counter by the batch's size and `XADD`s its messages, so
//!   offsets are one dense sequence per topic even with several processes
//!   appending at once. Message ids are [`message_id`] of a random
//!   per-log prefix, the log's *incarnation*: made when its topic is first
//!   registered (or by the first append, for a log used without
//!   registrations), deleted with the topic, and never used again, so a
//!   topic made again gets new ids.
//! - **Deletion is atomic with publishing across replicas.** Each process
//!   remembers the incarnation of each topic it learned (from the
//!   registrations it loads, saves or reads), and every append names it:
//!   the script refuses a log whose prefix is gone or another, and the
//!   publish is [`broker_core::Error::TopicNotFound`]. So a publish on
//!   replica B that replica A's deletion overtook (B's registry not yet
//!   told) neither makes the log again nor lands in a topic A made again
//!   under the same name. Redis orders the two: a publish whose append ran
//!   before the deletion was accepted and went with the topic (its answer
//!   may reach its client after A's); one after it is refused. One window
//!   is left: when B's feed missed both the deletion and the topic's new
//!   registration (Redis unreachable for B meanwhile), a publish B
//!   authorised against its stale registry just before its resync may
//!   land in the new topic (the incarnation is learned per topic, not per
//!   registration).
//! - **Reads** are one script too: the log's bounds, its prefix and up to
//!   a page of messages (`XRANGE … COUNT`), within the byte limit.
//! - **Retention** ([`Retention`]): a background task (of one replica per
//!   period, whichever takes the period's turn first) trims every topic's
//!   stream from the front (`XTRIM MINID` by offset) every
//!   [`Options::sweep_every`] (or a quarter of the retention age, if
//!   shorter): messages published before now minus the age, and the
//!   oldest while the payload bytes from them to the end (the entries' `s`,
//!   exact) are over the limit. The script finds where to cut by a binary
//!   search over the offsets, reading a few single entries and never what
//!   it drops. Offsets are never reused. Between two sweeps a topic may pass its byte limit by what
//!   is published meanwhile. Ages compare the publishing process's clock
//!   with the sweeping one's: keep the brokers' clocks in sync (NTP).
//! - **Registrations** are one hash (record id → the JSON of
//!   [`broker_core::codec`]); subscribers' cursors another, written every
//!   [`CURSOR_FLUSH`] in one script call with the pending retries (a hash
//!   per subscriber); dead letters a sorted set per owner, by offset.
//! - **Nothing is cached in memory** but the incarnations (a topic name
//!   and 12 hex digits per topic, bounded): every read goes to Redis, and
//!   [`Store::memory`] is a budget of [`Options::memory_bytes`] that only
//!   deliveries charge.
//!
//! # Keys
//!
//! Every key starts with [`Options::namespace`] (`broker`). A topic's keys
//! share one Redis Cluster hash slot through the hash tag `{t:<topic>}`
//! (`broker:{t:orders}:log`, `…:next`, `…:first`, `…:prefix`, `…:bytes`),
//! and the registry's through `{r}` (`broker:{r}:registrations`,
//! `…:cursors`, `…:retries:<subscriber>`, `…:dead:<owner>`): each script
//! touches one slot. This crate speaks to one Redis (a primary, possibly
//! with replicas), not yet to a Cluster: the tags are what a Cluster client
//! will need.
//!
//! # Durability
//!
//! A write is answered once Redis answered it. What survives a Redis crash
//! is Redis' own setting: with `appendonly yes` and `appendfsync always`
//! nothing acknowledged is lost; with `everysec` up to a second; a
//! failover to a replica loses what was not replicated yet. Keys must not
//! be evicted (`maxmemory-policy noeviction`): the store warns at start
//! when Redis says otherwise, and refuses to number messages of a log
//! whose counter is gone.
//!
//! # Errors
//!
//! Every operation is bounded by [`Options::timeout`]; a Redis that is down
//! makes each fail with [`broker_core::Error::Storage`] (the HTTP API
//! answers `503` with `Retry-After`), while the connection reconnects in
//! the background.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::SystemTime;
//! use broker_core::{Logs, NewMessage, TopicName};
//! use broker_redis::{Options, RedisStore};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let topic = TopicName::new("orders")?;
//! let store = RedisStore::open("redis://127.0.0.1:6379/", Options::default()).await?;
//! let new = NewMessage { content_type: None, payload: "hello".into(), published_at: SystemTime::now(), event_type: None, idempotency: None, trace: None };
//! let numbered = store.append(&topic, vec![new]).await?;
//! let offset = numbered[0].offset();
//! let id = numbered[0].id().to_owned();
//!
//! // A second store on the same Redis (another process) reads the same
//! // message, with the same id, and appends after it.
//! let other = RedisStore::open("redis://127.0.0.1:6379/", Options::default()).await?;
//! let read = other.read(&topic, offset, 10, usize::MAX).await?;
//! assert_eq!(read.messages[0].id(), id);
//! let new = NewMessage { content_type: None, payload: "again".into(), published_at: SystemTime::now(), event_type: None, idempotency: None, trace: None };
//! assert_eq!(other.append(&topic, vec![new]).await?[0].offset(), offset + 1);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod cluster;
mod error;
mod incarnations;
mod keys;
mod scripts;

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
pub use broker_core::Retention;
use incarnations::Known;

use broker_core::{
    message_id, new_id_prefix, Appended, Change, DeadLetter, Logs, MemoryBudget, Message,
    NewMessage, Original, PendingRetry, Progress, Read, Record, Registrations, RetryChange, Store,
    TopicName, WriteBehind,
};
use bytes::Bytes;
use http::HeaderValue;
use redis::{aio::ConnectionManager, AsyncConnectionConfig, RedisResult, Value};

pub use error::RedisStoreError;
use keys::{Keys, Part};
use scripts::Scripts;

/// How often moved cursors and pending retries are written: a crash of
/// the broker process loses at most this much of their progress (the
/// messages are delivered again; a retry schedule starts again).
pub const CURSOR_FLUSH: Duration = Duration::from_millis(100);

/// Messages a retention script call drops, at most: each call is short,
/// so Redis serves others in between.
const TRIM_STEP: usize = 10_000;

/// Buffered changes a flush script call carries, at most.
const FLUSH_BATCH: usize = 512;

/// Offsets and counts handed to Lua stay below 2^53 (Lua numbers are
/// doubles).
const MAX_LUA_NUMBER: u64 = 1 << 53;

/// A subscriber id and an offset.
type RetryKey = (String, u64);

/// How a [`RedisStore`] talks to Redis and keeps its logs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how much of each topic's log is kept.
    pub retention: Retention,
    /// The memory budget (`--max-memory-bytes`) deliveries charge: this
    /// store caches no messages, so they are its only holders. Default
    /// 512 MiB.
    pub memory_bytes: usize,
    /// The first part of every key (`broker`): letters, digits, `.`, `_`,
    /// `-` and `:`. Brokers with different namespaces share a Redis
    /// without seeing each other.
    pub namespace: String,
    /// How long one operation may take, a reconnection included, before
    /// it fails with [`broker_core::Error::Storage`]; also the limit to
    /// connect when the store opens. Default 5 s.
    pub timeout: Duration,
    /// How often retention runs (at most a quarter of the retention age
    /// apart). Default 5 s.
    pub sweep_every: Duration,
    /// How long and how many idempotency keys are remembered, in Redis
    /// (shared by every replica), with the count a cap per topic.
    pub idempotency: broker_core::IdempotencyLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retention: Retention::default(),
            memory_bytes: 512 << 20,
            namespace: "broker".to_owned(),
            timeout: Duration::from_secs(5),
            sweep_every: Duration::from_secs(5),
            idempotency: broker_core::IdempotencyLimits::default(),
        }
    }
}

impl Options {
    fn check(&self) -> Result<(), RedisStoreError> {
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        {
            return Err(RedisStoreError::Options {
                reason: format!(
                    "namespace {ns:?} must be 1 to 64 letters, digits, '.', '_', '-' or ':'"
                ),
            });
        }
        if self.timeout.is_zero() || self.sweep_every.is_zero() {
            return Err(RedisStoreError::Options {
                reason: "timeout and sweep_every must be more than zero".into(),
            });
        }
        Ok(())
    }

    /// How often retention runs.
    fn sweep_period(&self) -> Duration {
        self.sweep_every
            .min(self.retention.age / 4)
            .max(Duration::from_millis(100))
    }
}

/// A [`Store`] on Redis. See the [crate docs](crate).
///
/// Cloning the connection is cheap: every call of every task shares one
/// multiplexed connection (commands are pipelined on it), which reconnects
/// by itself when Redis comes back.
pub struct RedisStore {
    shared: Arc<Shared>,
    /// Tells the background tasks to write what is buffered and stop.
    stop: tokio::sync::watch::Sender<bool>,
}

struct Shared {
    conn: ConnectionManager,
    /// For the changes feed's own Pub/Sub connection.
    client: redis::Client,
    /// This process's id among the replicas sharing the Redis.
    replica: String,
    /// What the other replicas change, for the broker to take.
    feed: cluster::Feed,
    keys: Keys,
    options: Options,
    /// The URL, password hidden.
    url: String,
    /// Passwords of the URL, scrubbed from any error text.
    secrets: Vec<String>,
    scripts: Scripts,
    memory: MemoryBudget,
    /// Cursors moved and pending retries kept or forgotten since the last
    /// flush (broker-core's shared buffer: capped, kept when a write
    /// fails, one flush at a time).
    progress: WriteBehind,
    /// The incarnation of each topic's log this process writes to.
    incarnations: incarnations::Incarnations,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.url)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch (0 before it).
fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn at_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]`,
    /// `rediss://…` for TLS, verified against the system's CA
    /// certificates, or `redis+unix:///path`), checks that it answers
    /// `PING` and is 6.2 or later, and starts the background tasks (the
    /// cursor flush, retention). Must be called within a Tokio runtime.
    ///
    /// Unreachable at start is an error at once, not retried: a broker
    /// should not start on a store it cannot reach. Later, the connection
    /// reconnects by itself.
    ///
    /// # Errors
    ///
    /// [`RedisStoreError::Url`] for a URL the client cannot use,
    /// [`RedisStoreError::Options`] for a bad namespace,
    /// [`RedisStoreError::Connect`] when Redis cannot be reached within
    /// [`Options::timeout`] (or refuses the password),
    /// [`RedisStoreError::Version`] when it is older than 6.2.
    pub async fn open(url: &str, options: Options) -> Result<Self, RedisStoreError> {
        options.check()?;
        let shown = error::redact(url);
        let secrets = error::secrets(url);
        let scrub = |text: String| scrub(&secrets, text);
        let client = redis::Client::open(url).map_err(|e| RedisStoreError::Url {
            url: shown.clone(),
            reason: scrub(e.to_string()),
        })?;
        let connect_err = |reason: String| RedisStoreError::Connect {
            url: shown.clone(),
            reason,
        };
        let timeout = options.timeout;
        // First contact, once and without retries.
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut probe = tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&probe_config),
        )
        .await
        .map_err(|_| connect_err(format!("no connection within {timeout:?}")))?
        .map_err(|e| connect_err(scrub(e.to_string())))?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut probe)
            .await
            .map_err(|e| connect_err(scrub(e.to_string())))?;
        if pong != "PONG" {
            return Err(connect_err(format!("PING answered {pong:?}")));
        }
        let info: Option<String> = redis::cmd("INFO").query_async(&mut probe).await.ok();
        let field = |name: &str| {
            info.as_deref().and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            })
        };
        let version = field("redis_version");
        if let Some(found) = &version {
            let mut parts = found.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) < (6, 2) {
                return Err(RedisStoreError::Version {
                    url: shown,
                    found: found.clone(),
                });
            }
        }
        // CONFIG may be refused (managed Redis): then it is not said.
        let appendfsync: Option<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async::<Vec<String>>(&mut probe)
            .await
            .ok()
            .and_then(|v| v.get(1).cloned());
        let aof = field("aof_enabled");
        let policy = field("maxmemory_policy");
        tracing::info!(
            url = %shown,
            version = version.as_deref().unwrap_or("unknown"),
            appendonly = aof.as_deref().map(|a| a == "1"),
            appendfsync = appendfsync.as_deref(),
            "redis reached"
        );
        if aof.as_deref() == Some("0") {
            tracing::warn!(
                url = %shown,
                "redis keeps no append-only file (appendonly no): a Redis restart loses \
                 what was acknowledged since its last snapshot"
            );
        }
        if let Some(policy) = policy.filter(|p| p != "noeviction") {
            tracing::warn!(
                url = %shown,
                %policy,
                "redis may evict keys (maxmemory-policy is not noeviction): messages and \
                 registrations could vanish"
            );
        }
        drop(probe);

        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect attempts keep coming at most a second apart, so the
            // store is back within about a second of Redis.
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| connect_err(format!("no connection within {timeout:?}")))?
        .map_err(|e| connect_err(scrub(e.to_string())))?;

        let memory = MemoryBudget::new(options.memory_bytes);
        let shared = Arc::new(Shared {
            conn,
            client,
            replica: new_id_prefix(),
            feed: cluster::Feed::default(),
            keys: Keys::new(&options.namespace),
            progress: WriteBehind::default().with_budget(memory.clone()),
            memory,
            options,
            url: shown,
            secrets,
            scripts: Scripts::new(),
            incarnations: Default::default(),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(flusher(shared.clone(), stopped.clone()));
        tokio::spawn(sweeper(shared.clone(), stopped));
        Ok(RedisStore { shared, stop })
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// This process's id among the replicas sharing the Redis (random,
    /// 12 hex digits, new at every start).
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// Writes the buffered cursor moves and pending retries now (for a
    /// graceful shutdown; otherwise done every [`CURSOR_FLUSH`]).
    ///
    /// # Errors
    ///
    /// When Redis cannot take them (they stay buffered).
    pub async fn flush(&self) -> Result<(), RedisStoreError> {
        self.shared.flush().await
    }

    /// The secret `name` that every replica on this Redis shares: the one
    /// stored, or else `candidate`, stored now (`SET NX`, so when replicas
    /// start at once, all take the first one written). Deleting the key
    /// and restarting every replica makes a new one (a rotation).
    ///
    /// # Errors
    ///
    /// When Redis cannot be asked; [`RedisStoreError::Corrupt`] when the
    /// key holds something else than text.
    pub async fn shared_secret(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, RedisStoreError> {
        let shared = &self.shared;
        let key = shared.keys.secret(name);
        let mut conn = shared.conn.clone();
        let _: Option<String> = shared
            .call(
                "store a secret",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(candidate)
                    .arg("NX")
                    .query_async(&mut conn),
            )
            .await?;
        let stored: Option<Vec<u8>> = shared
            .call(
                "read a secret",
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await?;
        let stored = stored.ok_or_else(|| shared.corrupt(key.clone(), "deleted as it was set"))?;
        String::from_utf8(stored).map_err(|_| shared.corrupt(key, "not text"))
    }

    /// Applies retention to every topic now (otherwise done in the
    /// background).
    ///
    /// # Errors
    ///
    /// The first command that failed.
    pub async fn sweep(&self) -> Result<(), RedisStoreError> {
        self.shared.sweep().await
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // The flusher writes what is buffered, then both tasks end.
        let _ = self.stop.send(true);
    }
}

fn scrub(secrets: &[String], mut text: String) -> String {
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn unsigned(value: &Value) -> Option<u64> {
    int(value).and_then(|n| u64::try_from(n).ok())
}

/// What makes `record` the same registration across replicas (see
/// `Keys::names`); `None` for records whose id says it all (topics,
/// groups).
fn name_of(record: &Record) -> Option<String> {
    match record {
        Record::Credential(c) => {
            let role = match c.role {
                broker_core::Role::Publish => "p",
                broker_core::Role::Listen => "l",
            };
            Some(format!("c|{role}|{}|{}", c.topic, c.name))
        }
        Record::Subscriber(sub) => Some(format!("s|{}|{}|{}", sub.topic, sub.method, sub.url)),
        Record::Topic(_) | Record::Group(_) => None,
    }
}

/// The offset of stream entry id `<offset + 1>-0`.
fn offset_of_entry(id: &[u8]) -> Option<u64> {
    let id = std::str::from_utf8(id).ok()?;
    let (number, seq) = id.split_once('-')?;
    if seq != "0" {
        return None;
    }
    number.parse::<u64>().ok()?.checked_sub(1)
}

impl Shared {
    fn con(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Adds to `pipe` the announcement of a registration change (`r`) or
    /// a topic deletion (`d`) to the other replicas, numbered by the
    /// version counter (`EVAL`: a script inside `MULTI` cannot be loaded
    /// on demand; Redis caches the compiled body).
    fn announce(&self, pipe: &mut redis::Pipeline, kind: &str, subject: &str) {
        pipe.cmd("EVAL")
            .arg(scripts::ANNOUNCE)
            .arg(1)
            .arg(self.keys.version())
            .arg(self.keys.channel())
            .arg(kind)
            .arg(&self.replica)
            .arg(subject)
            .ignore();
    }

    /// Gives `topic`'s log an incarnation unless it has one, and learns it.
    async fn open_log(&self, topic: &str) -> Result<(), RedisStoreError> {
        let Ok(topic) = TopicName::new(topic) else {
            return Ok(());
        };
        let mut call = self.scripts.open.prepare_invoke();
        call.key(self.keys.topic(&topic, Part::Prefix))
            .arg(new_id_prefix());
        let mut con = self.con();
        let prefix: String = self.call("open log", call.invoke_async(&mut con)).await?;
        self.incarnations.learn(&topic, &prefix);
        Ok(())
    }

    /// Learns the incarnation of each topic of `records`, as loaded: the
    /// prefixes read, a page at a time; none made.
    async fn learn_incarnations(&self, records: &[Record]) -> Result<(), RedisStoreError> {
        let mut topics: Vec<TopicName> = records
            .iter()
            .filter_map(|r| TopicName::new(r.topic()).ok())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let mut loaded = Vec::with_capacity(topics.len());
        let mut con = self.con();
        for page in topics.chunks(512) {
            // One GET per key (a pipeline, not MGET): each in its own
            // topic's hash slot.
            let mut pipe = redis::pipe();
            for topic in page {
                pipe.get(self.keys.topic(topic, Part::Prefix));
            }
            let prefixes: Vec<Option<String>> = self
                .call("load incarnations", pipe.query_async(&mut con))
                .await?;
            loaded.extend(page.iter().cloned().zip(prefixes));
        }
        self.incarnations.reload(loaded);
        Ok(())
    }

    /// Runs one Redis exchange within the timeout.
    async fn call<T>(
        &self,
        op: &'static str,
        exchange: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisStoreError> {
        match tokio::time::timeout(self.options.timeout, exchange).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RedisStoreError::Command {
                op,
                reason: scrub(&self.secrets, e.to_string()),
            }),
            Err(_) => Err(RedisStoreError::Timeout {
                op,
                after: self.options.timeout,
            }),
        }
    }

    fn corrupt(&self, key: String, reason: impl Into<String>) -> RedisStoreError {
        RedisStoreError::Corrupt {
            key,
            reason: reason.into(),
        }
    }

    /// Every field of a hash, a page (`HSCAN`) at a time so that Redis is
    /// never busy long with one answer.
    async fn hash_all(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<HashMap<String, Vec<u8>>, RedisStoreError> {
        let mut all = HashMap::new();
        let mut cursor: u64 = 0;
        loop {
            let mut con = self.con();
            let (next, page): (u64, Vec<(String, Vec<u8>)>) = self
                .call(
                    op,
                    redis::cmd("HSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut con),
                )
                .await?;
            all.extend(page);
            if next == 0 {
                return Ok(all);
            }
            cursor = next;
        }
    }

    /// Writes the buffered cursors and retry changes; on failure they
    /// stay buffered.
    async fn flush(&self) -> Result<(), RedisStoreError> {
        self.progress
            .flush(async |batch| {
                self.write_progress(&batch.cursors, &batch.retries).await?;
                self.write_attempts(batch).await
            })
            .await
    }

    async fn write_attempts(
        &self,
        batch: &broker_core::ProgressBatch,
    ) -> Result<(), RedisStoreError> {
        let age = self.options.retention.age;
        let not_before = broker_core::not_before(age, SystemTime::now());
        for chunk in batch.attempts.chunks(FLUSH_BATCH) {
            let mut call = self.scripts.attempts.prepare_invoke();
            call.key(self.keys.registrations())
                .arg(batch.attempt_keep)
                .arg(not_before);
            for (_, id, record) in chunk {
                call.key(self.keys.attempts(id))
                    .arg(id)
                    .arg(record.seq)
                    .arg(record.encode());
            }
            let mut con = self.con();
            self.call("flush attempts", call.invoke_async::<Value>(&mut con))
                .await?;
        }
        Ok(())
    }

    async fn write_progress(
        &self,
        cursors: &[(String, u64)],
        retries: &[(RetryKey, RetryChange)],
    ) -> Result<(), RedisStoreError> {
        let (registrations, cursors_key) = (self.keys.registrations(), self.keys.cursors());
        for chunk in cursors.chunks(FLUSH_BATCH) {
            let mut call = self.scripts.flush.prepare_invoke();
            call.key(&registrations).key(&cursors_key).arg(chunk.len());
            for (id, cursor) in chunk {
                call.arg(id).arg(cursor);
            }
            let mut con = self.con();
            self.call("flush cursors", call.invoke_async::<Value>(&mut con))
                .await?;
        }
        for chunk in retries.chunks(FLUSH_BATCH) {
            let mut call = self.scripts.flush.prepare_invoke();
            call.key(&registrations).key(&cursors_key).arg(0);
            for ((id, offset), change) in chunk {
                call.key(self.keys.retries(id)).arg(id).arg(offset);
                match change {
                    Some((attempts, due)) => call.arg(format!("{attempts}:{due}")),
                    None => call.arg(""),
                };
            }
            let mut con = self.con();
            self.call("flush retries", call.invoke_async::<Value>(&mut con))
                .await?;
        }
        Ok(())
    }

    /// Whether this replica sweeps this period: the first of the replicas
    /// sharing the Redis to ask (a key that lasts nine tenths of it).
    async fn sweep_turn(&self, period: Duration) -> Result<bool, RedisStoreError> {
        let ttl = (period.as_millis() as u64 * 9 / 10).max(1);
        let mut con = self.con();
        let taken: Option<String> = self
            .call(
                "retention",
                redis::cmd("SET")
                    .arg(self.keys.lock("retention"))
                    .arg(&self.replica)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut con),
            )
            .await?;
        Ok(taken.is_some())
    }

    /// Applies retention to every topic's log.
    async fn sweep(&self) -> Result<(), RedisStoreError> {
        let retention = self.options.retention;
        let age = u64::try_from(retention.age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = millis(SystemTime::now()).saturating_sub(age);
        let limit = retention.bytes_per_topic.min(MAX_LUA_NUMBER);
        let pattern = self.keys.log_pattern();
        let mut cursor: u64 = 0;
        loop {
            let mut con = self.con();
            let (next, logs): (u64, Vec<String>) = self
                .call(
                    "retention",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .arg("TYPE")
                        .arg("stream")
                        .query_async(&mut con),
                )
                .await?;
            for key in logs {
                let Some(topic) = self.keys.topic_of_log(&key) else {
                    continue;
                };
                self.trim(&topic, cutoff, limit).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn trim(
        &self,
        topic: &TopicName,
        cutoff: u64,
        limit: u64,
    ) -> Result<(), RedisStoreError> {
        let mut dropped = 0;
        // Bounded: a log far over its limit is trimmed further next time.
        for _ in 0..1_000 {
            let mut con = self.con();
            let mut call = self.scripts.trim.prepare_invoke();
            call.key(self.keys.topic(topic, Part::Log))
                .key(self.keys.topic(topic, Part::Next))
                .key(self.keys.topic(topic, Part::First))
                .key(self.keys.topic(topic, Part::Bytes))
                .arg(cutoff)
                .arg(limit)
                .arg(TRIM_STEP);
            let (n, more): (u64, u64) = self.call("retention", call.invoke_async(&mut con)).await?;
            dropped += n;
            if more == 0 {
                break;
            }
        }
        if dropped > 0 {
            tracing::debug!(%topic, dropped, "retention trimmed the log");
        }
        Ok(())
    }
}

/// Writes buffered cursors every [`CURSOR_FLUSH`]; once more when told to
/// stop.
async fn flusher(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CURSOR_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        match shared.flush().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(url = %shared.url, "writing cursors to redis works again");
            }
            Ok(()) => {}
            // Said once per outage, not every 100 ms.
            Err(error) if !failing => {
                failing = true;
                tracing::error!(%error, "writing cursors to redis failed; kept for the next try");
            }
            Err(_) => {}
        }
        if stopping {
            return;
        }
    }
}

/// Applies retention every sweep period until told to stop.
async fn sweeper(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = shared.options.sweep_period();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        // One replica sweeps per period: whoever takes the period's turn.
        match shared.sweep_turn(period).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                if !failing {
                    failing = true;
                    tracing::error!(%error, "retention on redis failed; trying again later");
                }
                continue;
            }
        }
        let started = Instant::now();
        match shared.sweep().await {
            Ok(()) => {
                failing = false;
                tracing::trace!(elapsed = ?started.elapsed(), "retention swept");
            }
            Err(error) if !failing => {
                failing = true;
                tracing::error!(%error, "retention on redis failed; trying again later");
            }
            Err(_) => {}
        }
    }
}

#[async_trait]
impl Registrations for RedisStore {
    async fn load(&self) -> Result<Vec<Record>, broker_core::Error> {
        let s = &self.shared;
        s.flush().await?;
        let key = s.keys.registrations();
        let stored = s.hash_all("load registrations", &key).await?;
        let cursors = s.hash_all("load cursors", &s.keys.cursors()).await?;
        let mut records = Vec::with_capacity(stored.len());
        for (id, bytes) in stored {
            let record = broker_core::codec::decode_record(id.clone(), &bytes)
                .map_err(|reason| s.corrupt(key.clone(), format!("registration {id}: {reason}")))?;
            records.push(match record {
                // Later moves of the cursor are in the cursors hash.
                Record::Subscriber(mut sub) => {
                    if let Some(moved) = cursors
                        .get(&sub.id)
                        .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok())
                    {
                        sub.cursor = sub.cursor.max(moved);
                    }
                    Record::Subscriber(sub)
                }
                other => other,
            });
        }
        s.learn_incarnations(&records).await?;
        Ok(records)
    }

    async fn save(&self, change: Change<'_>) -> Result<(), broker_core::Error> {
        let s = &self.shared;
        let mut con = s.con();
        if let Change::Put(record) = change {
            // Before the registration: a replica that reads it finds the
            // log's incarnation there.
            s.open_log(record.topic()).await?;
        }
        match change {
            Change::Put(record) if name_of(record).is_some() => {
                let name = name_of(record).unwrap_or_default();
                let bytes = broker_core::codec::encode_record(record);
                let mut call = s.scripts.register.prepare_invoke();
                call.key(s.keys.registrations())
                    .key(s.keys.names())
                    .key(s.keys.version())
                    .arg(record.id())
                    .arg(bytes)
                    .arg(name)
                    .arg(s.keys.channel())
                    .arg(&s.replica);
                let (stored, other): (u8, String) = s
                    .call("save registration", call.invoke_async(&mut con))
                    .await?;
                if stored == 0 {
                    return Err(broker_core::Error::AlreadyRegistered { id: other });
                }
            }
            Change::Put(record) => {
                let bytes = broker_core::codec::encode_record(record);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .hset(s.keys.registrations(), record.id(), bytes)
                    .ignore();
                s.announce(&mut pipe, "r", record.id());
                s.call("save registration", pipe.exec_async(&mut con))
                    .await?;
            }
            Change::Remove { id } => {
                // Its cursor, pending retries and dead letters go with it,
                // in one transaction.
                s.progress.forget(id);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .hdel(s.keys.registrations(), id)
                    .hdel(s.keys.cursors(), id)
                    .del(s.keys.retries(id))
                    .del(s.keys.attempts(id))
                    .del(s.keys.dead_letters(id))
                    .del(s.keys.lease(id))
                    .cmd("EVAL")
                    .arg(scripts::UNNAME)
                    .arg(1)
                    .arg(s.keys.names())
                    .arg(id)
                    .ignore();
                s.announce(&mut pipe, "r", id);
                s.call("remove registration", pipe.exec_async(&mut con))
                    .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Logs for RedisStore {
    async fn append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, broker_core::Error> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        let incarnation = match s.incarnations.get(topic) {
            Some(Known::Live(prefix)) => format!("={prefix}"),
            // Deleted since learned: its registry has yet to take it.
            Some(Known::Gone) => return Err(broker_core::Error::TopicNotFound),
            // Taken only by a log that has no prefix yet: never one used
            // before, so a log made again after a delete gets new ids.
            None => format!("+{}", new_id_prefix()),
        };
        let limits = s.options.idempotency;
        let mut call = s.scripts.append.prepare_invoke();
        call.key(s.keys.topic(topic, Part::Log))
            .key(s.keys.topic(topic, Part::Next))
            .key(s.keys.topic(topic, Part::Prefix))
            .key(s.keys.topic(topic, Part::Bytes))
            .key(s.keys.topic(topic, Part::Keys))
            .key(s.keys.topic(topic, Part::KeyOrder))
            .arg(incarnation)
            .arg(messages.len())
            .arg(millis(SystemTime::now()))
            .arg(limits.window.as_millis() as u64)
            .arg(limits.max_keys);
        let mut content_type = Vec::new();
        for m in &messages {
            call.arg(millis(m.published_at));
            match &m.content_type {
                None => call.arg(""),
                Some(value) => {
                    content_type.clear();
                    content_type.push(b'=');
                    content_type.extend_from_slice(value.as_bytes());
                    call.arg(content_type.as_slice())
                }
            };
            call.arg(m.event_type.as_ref().map_or("", |t| t.as_str()));
            match &m.idempotency {
                None => call.arg("").arg(":"),
                Some(k) => call
                    .arg(k.key.as_str())
                    .arg(format!("{:016x}:{}", k.fingerprint, k.subscribers)),
            };
            call.arg(m.payload.as_ref());
            match &m.trace {
                None => call.arg(""),
                Some(trace) => call.arg(trace.encode()),
            };
        }
        // Announced to the other replicas by the same script.
        call.arg(s.keys.channel())
            .arg(&s.replica)
            .arg(topic.as_str());
        let mut con = s.con();
        let reply: Value = s.call("append", call.invoke_async(&mut con)).await?;
        let key = || s.keys.topic(topic, Part::Log);
        let reply = match reply {
            Value::Array(reply) => reply,
            // Deleted (and maybe made again) since this process learned it.
            Value::Nil => {
                s.incarnations.gone(topic);
                return Err(broker_core::Error::TopicNotFound);
            }
            _ => return Err(s.corrupt(key(), "append answered no array").into()),
        };
        if matches!(reply.as_slice(), [Value::Int(-1)]) {
            return Err(broker_core::Error::IdempotencyKeyReused);
        }
        let (Some(first), Some(Value::BulkString(prefix))) =
            (reply.first().and_then(unsigned), reply.get(1))
        else {
            return Err(s
                .corrupt(key(), "append answered no offset and prefix")
                .into());
        };
        if reply.len() != 2 + messages.len() {
            return Err(s.corrupt(key(), "append answered too few verdicts").into());
        }
        let prefix = String::from_utf8_lossy(prefix).into_owned();
        s.incarnations.learn(topic, &prefix);
        let mut next = first;
        let mut out = Vec::with_capacity(messages.len());
        for (m, verdict) in messages.into_iter().zip(&reply[2..]) {
            out.push(match verdict {
                Value::Int(0) => {
                    let offset = next;
                    next += 1;
                    Appended::New(Arc::new(
                        Message::new(
                            message_id(&prefix, offset),
                            offset,
                            topic.clone(),
                            m.content_type,
                            m.payload,
                            // As a read gives it back: to the millisecond.
                            at_millis(millis(m.published_at)),
                        )
                        .with_event_type(m.event_type)
                        .with_trace(m.trace),
                    ))
                }
                Value::BulkString(replay) => {
                    let replay = String::from_utf8_lossy(replay);
                    let parsed = replay
                        .split_once(':')
                        .and_then(|(o, n)| Some((o.parse::<u64>().ok()?, n.parse::<u32>().ok()?)));
                    let Some((offset, subscribers)) = parsed else {
                        return Err(s.corrupt(key(), "append answered a bad replay").into());
                    };
                    Appended::Replayed(Original {
                        id: message_id(&prefix, offset),
                        offset,
                        subscribers,
                    })
                }
                _ => return Err(s.corrupt(key(), "append answered a bad verdict").into()),
            });
        }
        Ok(out)
    }

    async fn read(
        &self,
        topic: &TopicName,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, broker_core::Error> {
        let s = &self.shared;
        let mut call = s.scripts.read.prepare_invoke();
        call.key(s.keys.topic(topic, Part::Log))
            .key(s.keys.topic(topic, Part::Next))
            .key(s.keys.topic(topic, Part::First))
            .key(s.keys.topic(topic, Part::Prefix))
            .arg(from.min(MAX_LUA_NUMBER))
            .arg(max_messages.min(u32::MAX as usize))
            .arg((max_bytes as u64).min(MAX_LUA_NUMBER));
        let mut con = s.con();
        let reply: Value = s.call("read", call.invoke_async(&mut con)).await?;
        let key = || s.keys.topic(topic, Part::Log);
        let Value::Array(reply) = reply else {
            return Err(s.corrupt(key(), "read answered no array").into());
        };
        let (Some(first), Some(next)) = (
            reply.first().and_then(unsigned),
            reply.get(1).and_then(unsigned),
        ) else {
            return Err(s.corrupt(key(), "read answered no bounds").into());
        };
        let mut read = Read {
            messages: Vec::new(),
            first,
            next,
        };
        let mut rest = reply.into_iter().skip(2);
        let prefix = match rest.next() {
            Some(Value::BulkString(p)) => Some(String::from_utf8_lossy(&p).into_owned()),
            _ => None,
        };
        let entries: Vec<Value> = rest.collect();
        if entries.is_empty() {
            return Ok(read);
        }
        let Some(prefix) = prefix else {
            return Err(s.corrupt(key(), "messages but no id prefix").into());
        };
        let mut expected = from.max(first);
        read.messages.reserve(entries.len() / 6);
        let mut entries = entries.into_iter();
        while let (Some(id), Some(t), Some(c), Some(e), Some(x), Some(p)) = (
            entries.next(),
            entries.next(),
            entries.next(),
            entries.next(),
            entries.next(),
            entries.next(),
        ) {
            let offset = match &id {
                Value::BulkString(id) => offset_of_entry(id),
                _ => None,
            };
            if offset != Some(expected) {
                return Err(s
                    .corrupt(
                        key(),
                        format!("entry {id:?} where offset {expected} was due"),
                    )
                    .into());
            }
            let Some(published) = unsigned(&t) else {
                return Err(s
                    .corrupt(key(), format!("offset {expected} has no time"))
                    .into());
            };
            let content_type = match c {
                Value::BulkString(c) => {
                    Some(HeaderValue::from_maybe_shared(Bytes::from(c)).map_err(|_| {
                        s.corrupt(key(), format!("offset {expected}: bad content type"))
                    })?)
                }
                _ => None,
            };
            // Entries written before event types have none.
            let event_type = match e {
                Value::BulkString(e) => Some(
                    std::str::from_utf8(&e)
                        .ok()
                        .and_then(|e| broker_core::EventType::new(e).ok())
                        .ok_or_else(|| {
                            s.corrupt(key(), format!("offset {expected}: bad event type"))
                        })?,
                ),
                _ => None,
            };
            let Value::BulkString(payload) = p else {
                return Err(s
                    .corrupt(key(), format!("offset {expected} has no payload"))
                    .into());
            };
            read.messages.push(Arc::new(
                Message::new(
                    message_id(&prefix, expected),
                    expected,
                    topic.clone(),
                    content_type,
                    Bytes::from(payload),
                    at_millis(published),
                )
                .with_event_type(event_type)
                .with_trace(match x {
                    Value::BulkString(x) => broker_core::TraceContext::decode(&x),
                    _ => None,
                }),
            ));
            expected += 1;
        }
        Ok(read)
    }

    async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64), broker_core::Error> {
        let s = &self.shared;
        let mut con = s.con();
        let (first, next): (Option<u64>, Option<u64>) = s
            .call(
                "bounds",
                redis::cmd("MGET")
                    .arg(s.keys.topic(topic, Part::First))
                    .arg(s.keys.topic(topic, Part::Next))
                    .query_async(&mut con),
            )
            .await?;
        let next = next.unwrap_or(0);
        Ok((first.unwrap_or(0).min(next), next))
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), broker_core::Error> {
        let s = &self.shared;
        let mut con = s.con();
        let mut pipe = redis::pipe();
        pipe.atomic().del(s.keys.topic_all(topic)).ignore();
        s.announce(&mut pipe, "d", topic.as_str());
        s.call("delete topic", pipe.exec_async(&mut con)).await?;
        s.incarnations.gone(topic);
        Ok(())
    }
}

#[async_trait]
impl Progress for RedisStore {
    /// Written where the group's registration is, so it loads with it;
    /// not announced: replicas read a group afresh under its lock.
    async fn save_group(&self, group: broker_core::GroupRecord) -> Result<(), broker_core::Error> {
        let s = &self.shared;
        let record = Record::Group(group);
        let bytes = broker_core::codec::encode_record(&record);
        let mut con = s.con();
        let mut pipe = redis::pipe();
        pipe.hset(s.keys.registrations(), record.id(), bytes)
            .ignore();
        s.call("save group progress", pipe.exec_async(&mut con))
            .await?;
        Ok(())
    }

    async fn save_cursor(&self, subscriber: &str, cursor: u64) -> Result<(), broker_core::Error> {
        self.shared.progress.cursor(subscriber, cursor);
        Ok(())
    }

    async fn put_dead_letter(
        &self,
        subscriber: &str,
        dead: &DeadLetter,
        keep: usize,
    ) -> Result<u64, broker_core::Error> {
        let s = &self.shared;
        let mut call = s.scripts.put_dead_letter.prepare_invoke();
        call.key(s.keys.dead_letters(subscriber))
            .arg(dead.offset.min(MAX_LUA_NUMBER))
            .arg(broker_core::codec::encode_dead_letter(dead))
            .arg(keep.max(1));
        let mut con = s.con();
        let evicted: u64 = s
            .call("put dead letter", call.invoke_async(&mut con))
            .await?;
        Ok(evicted)
    }

    async fn remove_dead_letter(
        &self,
        subscriber: &str,
        offset: u64,
    ) -> Result<(), broker_core::Error> {
        let s = &self.shared;
        let offset = offset.min(MAX_LUA_NUMBER);
        let mut con = s.con();
        s.call(
            "remove dead letter",
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(s.keys.dead_letters(subscriber))
                .arg(offset)
                .arg(offset)
                .exec_async(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        subscriber: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, broker_core::Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        let key = s.keys.dead_letters(subscriber);
        let last = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        let mut con = s.con();
        let members: Vec<Vec<u8>> = s
            .call(
                "dead letters",
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(last)
                    .query_async(&mut con),
            )
            .await?;
        members
            .iter()
            .map(|m| {
                broker_core::codec::decode_dead_letter(m)
                    .map_err(|reason| s.corrupt(key.clone(), reason).into())
            })
            .collect()
    }

    async fn save_retry(
        &self,
        subscriber: &str,
        retry: PendingRetry,
    ) -> Result<(), broker_core::Error> {
        self.shared.progress.retry(
            subscriber,
            retry.offset,
            Some((retry.attempts, millis(retry.due))),
        );
        Ok(())
    }

    async fn forget_retry(&self, subscriber: &str, offset: u64) -> Result<(), broker_core::Error> {
        self.shared.progress.retry(subscriber, offset, None);
        Ok(())
    }

    async fn record_attempts(
        &self,
        topic: &TopicName,
        subscriber: &str,
        attempts: Vec<broker_core::AttemptRecord>,
        keep: usize,
    ) -> Result<(), broker_core::Error> {
        self.shared
            .progress
            .attempts(topic, subscriber, attempts, keep);
        Ok(())
    }

    async fn attempts(
        &self,
        _topic: &TopicName,
        subscriber: &str,
        query: &broker_core::AttemptQuery,
    ) -> Result<Vec<broker_core::AttemptRecord>, broker_core::Error> {
        let s = &self.shared;
        // What is buffered first, so that Redis holds the whole truth.
        s.flush().await?;
        let key = s.keys.attempts(subscriber);
        let not_before = broker_core::not_before(s.options.retention.age, SystemTime::now());
        let mut out = Vec::new();
        // Newest first, a page at a time, until the query has its fill.
        let mut below = query.before.map_or("+inf".to_owned(), |b| format!("({b}"));
        const PAGE: usize = 200;
        loop {
            let mut con = s.con();
            let members: Vec<Vec<u8>> = s
                .call(
                    "attempts",
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(&key)
                        .arg(&below)
                        .arg(not_before)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(PAGE)
                        .query_async(&mut con),
                )
                .await?;
            let full = members.len() == PAGE;
            for m in &members {
                let record = broker_core::AttemptRecord::decode(m)
                    .map_err(|reason| s.corrupt(key.clone(), reason))?;
                below = format!("({}", record.seq);
                if query.wants(&record, not_before) {
                    out.push(record);
                    if out.len() >= query.limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    async fn pending_retries(
        &self,
        subscriber: &str,
    ) -> Result<Vec<PendingRetry>, broker_core::Error> {
        let s = &self.shared;
        // What is buffered first, so that Redis holds the whole truth.
        s.flush().await?;
        let key = s.keys.retries(subscriber);
        let stored = s.hash_all("pending retries", &key).await?;
        let mut pending = Vec::with_capacity(stored.len());
        for (offset, value) in stored {
            let parsed = offset.parse::<u64>().ok().and_then(|offset| {
                let (attempts, due) = std::str::from_utf8(&value).ok()?.split_once(':')?;
                Some(PendingRetry {
                    offset,
                    attempts: attempts.parse().ok()?,
                    due: at_millis(due.parse().ok()?),
                })
            });
            match parsed {
                Some(retry) => pending.push(retry),
                None => {
                    return Err(s
                        .corrupt(key.clone(), format!("retry at {offset:?}"))
                        .into())
                }
            }
        }
        pending.sort_unstable_by_key(|r| r.offset);
        Ok(pending)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ready(&self) -> Result<(), broker_core::Error> {
        let s = &self.shared;
        let mut con = s.con();
        let _: String = s
            .call("ping", redis::cmd("PING").query_async(&mut con))
            .await?;
        Ok(())
    }

    fn memory(&self) -> MemoryBudget {
        self.shared.memory.clone()
    }

    /// Always: brokers sharing a Redis are replicas of one broker. The
    /// feed of the others' changes starts with the first call.
    fn cluster(&self) -> Option<Arc<dyn broker_core::Cluster>> {
        cluster::start(&self.shared, self.stop.subscribe());
        Some(Arc::new(cluster::RedisCluster(self.shared.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_offsets_plus_one() {
        assert_eq!(offset_of_entry(b"1-0"), Some(0));
        assert_eq!(offset_of_entry(b"43-0"), Some(42));
        assert_eq!(offset_of_entry(b"0-0"), None);
        assert_eq!(offset_of_entry(b"5-1"), None);
        assert_eq!(offset_of_entry(b"x-0"), None);
    }

    #[test]
    fn options_are_checked() {
        assert!(Options::default().check().is_ok());
        for bad in ["", "a{b}", "a*", "a b", &"n".repeat(65)] {
            let options = Options {
                namespace: bad.to_owned(),
                ..Options::default()
            };
            assert!(options.check().is_err(), "{bad:?}");
        }
        let fast = Options {
            retention: Retention {
                age: Duration::from_secs(1),
                ..Retention::default()
            },
            ..Options::default()
        };
        assert_eq!(fast.sweep_period(), Duration::from_millis(250));
        assert_eq!(Options::default().sweep_period(), Duration::from_secs(5));
    }

    #[test]
    fn secrets_are_scrubbed() {
        assert_eq!(
            scrub(&["hunter2".into()], "auth hunter2 refused".into()),
            "auth *** refused"
        );
    }
}
