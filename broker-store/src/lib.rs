//! Durable storage for `broker-core`: a [`Store`] in a data directory.
//!
//! - **Topic logs**: one directory per topic of segment files named by
//!   their first offset (`00000000000000000000.log`), each a header with
//!   the format version and records with a CRC-32 each (the shape of NATS
//!   JetStream's file store and of Kafka's segments). Only the newest
//!   segment takes appends; start-up reads every header but scans only
//!   the newest segment, cutting off a torn or corrupt tail. Sealed
//!   segments get their sparse offset index on first read.
//! - **Durability** ([`Fsync`]): with `Always`, an append returns once its
//!   records are fsynced; concurrent appends share one fsync (group
//!   commit by a syncer thread).
//! - **Retention** ([`Retention`]): a sweeper thread drops whole segments,
//!   the oldest first, past the age or the per-topic byte limit.
//! - **Registrations** live in a redb database (`registry.redb`), one
//!   committed transaction per change.
//! - **One owner**: the directory's `LOCK` file is held (an OS file lock)
//!   while the store is open; a second store on it is refused.
//!
//! # Examples
//!
//! ```
//! use std::time::SystemTime;
//! use broker_core::{Logs, NewMessage, TopicName};
//! use broker_store::{DiskStore, Options};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir()?;
//! let topic = TopicName::new("orders")?;
//! let store = DiskStore::open(dir.path(), Options::default())?;
//! let new = NewMessage { content_type: None, payload: "hello".into(), published_at: SystemTime::now(), event_type: None, idempotency: None, trace: None };
//! let numbered = store.append(&topic, vec![new]).await?;
//! assert_eq!(numbered[0].offset(), 0);
//! let id = numbered[0].id().to_owned();
//! drop(store);
//!
//! // Reopened: the message is there, with the same id.
//! let store = DiskStore::open(dir.path(), Options::default())?;
//! let read = store.read(&topic, 0, 10, usize::MAX).await?;
//! assert_eq!(read.messages[0].id(), id);
//! // A second store on the same directory is refused.
//! assert!(DiskStore::open(dir.path(), Options::default()).is_err());
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod error;
mod log;
mod registry;
mod segment;
mod sync;

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
pub use broker_core::IdempotencyLimits;
pub use broker_core::Retention;
use broker_core::{
    Appended, Change, KeyTable, Logs, MemoryBudget, NewMessage, Progress, Read, Record,
    Registrations, Store, TopicName, WriteBehind,
};
use parking_lot::RwLock;

pub use error::StoreError;
use log::{Rolling, TopicLog};

/// When appended messages are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the append returns: a message acknowledged is on disk.
    /// Concurrent appends share one fsync.
    Always,
    /// Every this long, in the background: a crash of the machine (not of
    /// the process) loses up to this much of acknowledged messages.
    Every(Duration),
    /// Left to the operating system (typically within 30 s): a crash of
    /// the machine may lose that much; a crash of the process loses
    /// nothing written.
    Never,
}

/// How a [`DiskStore`] keeps its logs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// When appends are fsynced. Default [`Fsync::Always`].
    pub fsync: Fsync,
    /// How long and how much of each topic's log is kept.
    pub retention: Retention,
    /// A new segment is started past this many bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// The memory budget (`--max-memory-bytes`): the messages the tail
    /// caches hold (at most 4 MiB a topic, dropped when a topic is idle for
    /// a minute; readers keeping up, deliveries and live listeners, read
    /// from there, not the files) and those deliveries hold (see
    /// [`broker_core::MemoryBudget`]) share it. Default 512 MiB.
    pub memory_bytes: usize,
    /// How long and how many idempotency keys are remembered. They are
    /// kept in the log with their messages, and read back at open from
    /// the logs that hold any, for the window.
    pub idempotency: IdempotencyLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: Fsync::Always,
            retention: Retention::default(),
            segment_bytes: 64 << 20,
            memory_bytes: 512 << 20,
            idempotency: IdempotencyLimits::default(),
        }
    }
}

impl Options {
    fn rolling(&self) -> Rolling {
        // Segments also roll by age, so that retention by age can drop
        // whole segments in steps of an eighth of the retention.
        let age =
            (self.retention.age / 8).clamp(Duration::from_millis(100), Duration::from_secs(3600));
        Rolling {
            bytes: self.segment_bytes,
            age,
        }
    }
}

/// How often moved cursors are written: a crash loses at most this much
/// of their progress (the messages are delivered again).
pub const CURSOR_FLUSH: Duration = Duration::from_millis(100);

/// The format of a data directory, written in its `FORMAT` file.
const FORMAT: &str = "webhook-broker data directory, format 1\n";

/// A [`Store`] in a data directory. See the [crate docs](crate).
pub struct DiskStore {
    shared: Arc<Shared>,
    background: sync::Background,
}

pub(crate) struct Shared {
    dir: PathBuf,
    topics_dir: PathBuf,
    registry_path: PathBuf,
    options: Options,
    registry: registry::Registry,
    /// Held for look-ups and inserts only.
    logs: RwLock<HashMap<TopicName, Arc<TopicLog>>>,
    /// The tail caches' shared budget.
    cache: log::Cache,
    /// The idempotency keys of every log, checked under each log's lock.
    keys: KeyTable,
    /// Cursors moved and pending retries kept or forgotten since the last
    /// flush: written together, in one transaction, every
    /// [`CURSOR_FLUSH`] by the retention thread (broker-core's shared
    /// buffer: capped, kept when a write fails).
    progress: WriteBehind,
    syncer: sync::Syncer,
    /// Kept open: the OS lock lives as long as this handle.
    _lock: File,
}

pub(crate) fn create_dir(path: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DiskStore {
    /// Opens (or creates) the data directory `dir`: takes its lock, checks
    /// its format, opens the registry and every topic's log, recovering
    /// torn tails. Starts the syncer and retention threads.
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] when another process holds the directory;
    /// [`StoreError::Format`] when it holds a format this build does not
    /// know (or is not a data directory at all); [`StoreError::Io`] and
    /// the others when files cannot be read or written.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_owned();
        create_dir(&dir)?;
        let lock = take_lock(&dir)?;
        check_format(&dir)?;
        let topics_dir = dir.join("topics");
        create_dir(&topics_dir)?;
        let registry_path = dir.join("registry.redb");
        if !registry_path.exists() {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&registry_path)
                .map_err(io(&registry_path))?;
        }
        let registry = registry::Registry::open(&registry_path)?;
        let memory = MemoryBudget::new(options.memory_bytes);
        let keys = KeyTable::new(options.idempotency, memory.clone());
        let progress = WriteBehind::default().with_budget(memory.clone());
        let mut logs = HashMap::new();
        for entry in fs::read_dir(&topics_dir).map_err(io(&topics_dir))? {
            let entry = entry.map_err(io(&topics_dir))?;
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| TopicName::new(n).ok())
            else {
                continue;
            };
            let (log, recovered) = TopicLog::open(name.clone(), entry.path(), Some(&keys))?;
            if recovered.truncated_bytes > 0 {
                tracing::warn!(
                    topic = %name,
                    truncated_bytes = recovered.truncated_bytes,
                    reason = recovered.reason.unwrap_or("torn"),
                    kept_up_to_offset = log.bounds().1,
                    "log recovery cut off a torn or corrupt tail"
                );
            }
            logs.insert(name, Arc::new(log));
        }
        let shared = Arc::new(Shared {
            dir,
            topics_dir,
            registry_path,
            options,
            registry,
            logs: RwLock::new(logs),
            cache: log::Cache {
                memory,
                held: Default::default(),
            },
            keys,
            progress,
            syncer: sync::Syncer::default(),
            _lock: lock,
        });
        let background = sync::Background::start(&shared);
        Ok(DiskStore { shared, background })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Fsyncs every log now (for a graceful shutdown under a relaxed
    /// [`Fsync`] policy).
    ///
    /// # Errors
    ///
    /// The first fsync that failed.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.sync_all()
    }

    fn log(&self, topic: &TopicName) -> Option<Arc<TopicLog>> {
        self.shared.logs.read().get(topic).cloned()
    }

    fn log_or_create(&self, topic: &TopicName) -> Result<Arc<TopicLog>, StoreError> {
        if let Some(log) = self.log(topic) {
            return Ok(log);
        }
        let mut logs = self.shared.logs.write();
        if let Some(log) = logs.get(topic) {
            return Ok(log.clone());
        }
        // Created under the map's write lock: rare (once per topic), and
        // two creators must not both make the directory.
        let log = Arc::new(TopicLog::create(
            topic.clone(),
            self.shared.topics_dir.join(topic.as_str()),
        )?);
        logs.insert(topic.clone(), log.clone());
        Ok(log)
    }
}

impl Shared {
    fn all_logs(&self) -> Vec<Arc<TopicLog>> {
        self.logs.read().values().cloned().collect()
    }

    /// Writes the cursors moved and the retries kept or forgotten since
    /// the last flush, in one transaction.
    fn flush_cursors(&self) -> Result<(), StoreError> {
        let not_before =
            broker_core::not_before(self.options.retention.age, std::time::SystemTime::now());
        self.progress.flush_blocking(|batch| {
            self.registry
                .save_progress(&self.registry_path, batch, not_before)
        })
    }

    fn sync_all(&self) -> Result<(), StoreError> {
        if let Err(e) = self.flush_cursors() {
            tracing::error!(error = %e, "writing cursors failed");
        }
        let mut first = Ok(());
        for log in self.all_logs() {
            if let Err(e) = log.sync() {
                tracing::error!(topic = %log.name, error = %e, "fsync failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.background.stop();
        if let Err(e) = self.shared.sync_all() {
            tracing::error!(error = %e, "final fsync failed");
        }
    }
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.shared.dir)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

fn take_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(StoreError::Locked {
                path: dir.to_owned(),
                holder: holder.trim().to_owned(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "pid {}", std::process::id()))
        .map_err(io(&path))?;
    Ok(file)
}

fn check_format(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join("FORMAT");
    match fs::read_to_string(&path) {
        Ok(found) if found == FORMAT => Ok(()),
        Ok(found) => Err(StoreError::Format {
            path,
            found: found.trim().to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let others = fs::read_dir(dir)
                .map_err(io(dir))?
                .filter_map(Result::ok)
                .any(|e| e.file_name() != "LOCK");
            if others {
                return Err(StoreError::Format {
                    path,
                    found: "no FORMAT file in a directory that is not empty".into(),
                });
            }
            let tmp = dir.join("FORMAT.tmp");
            fs::write(&tmp, FORMAT)
                .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)))
                .and_then(|()| File::open(&tmp)?.sync_all())
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(io(&path))?;
            log::sync_dir(dir)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

#[async_trait]
impl Registrations for DiskStore {
    async fn load(&self) -> Result<Vec<Record>, broker_core::Error> {
        let shared = self.shared.clone();
        blocking(move || shared.registry.load(&shared.registry_path)).await
    }

    async fn save(&self, change: Change<'_>) -> Result<(), broker_core::Error> {
        let shared = self.shared.clone();
        match change {
            Change::Put(record) => {
                let record = record.clone();
                blocking(move || shared.registry.put(&shared.registry_path, &record)).await
            }
            Change::Remove { id } => {
                let id = id.to_owned();
                blocking(move || shared.registry.remove(&shared.registry_path, &id)).await
            }
        }
    }
}

#[async_trait]
impl Logs for DiskStore {
    async fn append(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, broker_core::Error> {
        let log = self.log_or_create(topic)?;
        let always = self.shared.options.fsync == Fsync::Always;
        let (messages, next) = log.append_keyed(
            messages,
            self.shared.options.rolling(),
            always,
            &self.shared.cache,
            &self.shared.keys,
        )?;
        // Waiting for `next` covers replays too: a key is answered once
        // its first message is as durable as a new one would be.
        match self.shared.options.fsync {
            Fsync::Always => {
                self.shared.syncer.request(&log, true);
                log.synced(next).await?;
            }
            Fsync::Every(_) => self.shared.syncer.request(&log, false),
            Fsync::Never => {}
        }
        Ok(messages)
    }

    async fn read(
        &self,
        topic: &TopicName,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, broker_core::Error> {
        let Some(log) = self.log(topic) else {
            return Ok(Read::default());
        };
        if let Some(read) = log.read_cached(from, max_messages, max_bytes) {
            return Ok(read);
        }
        blocking(move || log.read(from, max_messages, max_bytes)).await
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<(), broker_core::Error> {
        let removed = self.shared.logs.write().remove(topic);
        if let Some(log) = &removed {
            log.drop_cache(&self.shared.cache);
            self.shared.keys.forget_topic(topic);
        }
        let dir = self.shared.topics_dir.join(topic.as_str());
        blocking(move || match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path: dir, source }),
        })
        .await
    }

    async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64), broker_core::Error> {
        Ok(self.log(topic).map_or((0, 0), |log| log.bounds()))
    }
}

#[async_trait]
impl Progress for DiskStore {
    async fn save_group(&self, group: broker_core::GroupRecord) -> Result<(), broker_core::Error> {
        let shared = self.shared.clone();
        let record = Record::Group(group);
        blocking(move || shared.registry.put(&shared.registry_path, &record)).await
    }

    async fn put_dead_letter(
        &self,
        subscriber: &str,
        dead: &broker_core::DeadLetter,
        keep: usize,
    ) -> Result<u64, broker_core::Error> {
        let (shared, subscriber, dead) = (self.shared.clone(), subscriber.to_owned(), dead.clone());
        blocking(move || {
            shared
                .registry
                .put_dead_letter(&shared.registry_path, &subscriber, &dead, keep)
        })
        .await
    }

    async fn remove_dead_letter(
        &self,
        subscriber: &str,
        offset: u64,
    ) -> Result<(), broker_core::Error> {
        let (shared, subscriber) = (self.shared.clone(), subscriber.to_owned());
        blocking(move || {
            shared
                .registry
                .remove_dead_letter(&shared.registry_path, &subscriber, offset)
        })
        .await
    }

    async fn dead_letters(
        &self,
        subscriber: &str,
        limit: usize,
    ) -> Result<Vec<broker_core::DeadLetter>, broker_core::Error> {
        let (shared, subscriber) = (self.shared.clone(), subscriber.to_owned());
        blocking(move || {
            shared
                .registry
                .dead_letters(&shared.registry_path, &subscriber, limit)
        })
        .await
    }

    async fn save_cursor(&self, subscriber: &str, cursor: u64) -> Result<(), broker_core::Error> {
        self.shared.progress.cursor(subscriber, cursor);
        Ok(())
    }

    async fn save_retry(
        &self,
        subscriber: &str,
        retry: broker_core::PendingRetry,
    ) -> Result<(), broker_core::Error> {
        let due = retry
            .due
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.shared
            .progress
            .retry(subscriber, retry.offset, Some((retry.attempts, due)));
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
        let (shared, subscriber, query) =
            (self.shared.clone(), subscriber.to_owned(), query.clone());
        blocking(move || {
            // What is buffered first, so that the table is the whole truth.
            shared.flush_cursors()?;
            let not_before =
                broker_core::not_before(shared.options.retention.age, std::time::SystemTime::now());
            shared
                .registry
                .attempts(&shared.registry_path, &subscriber, &query, not_before)
        })
        .await
    }

    async fn pending_retries(
        &self,
        subscriber: &str,
    ) -> Result<Vec<broker_core::PendingRetry>, broker_core::Error> {
        let (shared, subscriber) = (self.shared.clone(), subscriber.to_owned());
        blocking(move || {
            // What is buffered first, so that the table is the whole truth.
            shared.flush_cursors()?;
            shared
                .registry
                .pending_retries(&shared.registry_path, &subscriber)
        })
        .await
    }
}

#[async_trait]
impl Store for DiskStore {
    /// Whether the data directory takes writes now: a small file written,
    /// synced and removed (a full disk or a read-only mount fails it), so
    /// `/readyz` says `store_unavailable` while publishes would fail.
    async fn ready(&self) -> Result<(), broker_core::Error> {
        let probe = self.shared.dir.join(".ready");
        blocking(move || {
            let written = (|| {
                use std::io::Write as _;
                let mut file = std::fs::File::create(&probe)?;
                file.write_all(&[0u8; 4096])?;
                file.sync_data()
            })();
            let _ = std::fs::remove_file(&probe);
            written.map_err(|e| StoreError::Io {
                path: probe.clone(),
                source: e,
            })
        })
        .await
    }

    fn memory(&self) -> MemoryBudget {
        self.shared.cache.memory.clone()
    }
}

/// Runs file work on tokio's blocking pool, off the request threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, broker_core::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| broker_core::Error::storage(format!("storage task failed: {e}")))?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use broker_core::{CredentialRecord, Role, SubscriberRecord};

    use super::*;

    /// A subscriber's registration on topic `t`.
    fn subscriber_record(id: &str) -> Record {
        Record::Subscriber(SubscriberRecord {
            id: id.into(),
            topic: "t".into(),
            url: "http://h/".into(),
            method: "POST".into(),
            headers: vec![],
            max_attempts: 1,
            schedule: None,
            ordered: false,
            filter: None,
            enabled: true,
            secret: "whsec_x".into(),
            previous_secret: None,
            order: 0,
            cursor: 0,
        })
    }

    fn new(payload: String) -> NewMessage {
        NewMessage {
            content_type: None,
            payload: payload.into(),
            published_at: SystemTime::now(),
            event_type: None,
            trace: None,
            idempotency: None,
        }
    }

    fn keyed(key: &str, payload: &str) -> NewMessage {
        NewMessage {
            idempotency: Some(broker_core::Keyed {
                key: broker_core::IdempotencyKey::new(key).unwrap(),
                fingerprint: broker_core::fingerprint(None, payload.as_bytes()),
                subscribers: 2,
            }),
            ..new(payload.to_owned())
        }
    }

    /// Sixteen appends with one key make one message; the key is read
    /// back from the log when the store opens again, and still refuses
    /// another payload; a key past the window is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_makes_one_message_and_is_remembered_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path(), Options::default()).unwrap());
        let topic = TopicName::new("t").unwrap();
        store
            .append(&topic, vec![new("before".into())])
            .await
            .unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (store, topic) = (store.clone(), topic.clone());
                tokio::spawn(async move { store.append(&topic, vec![keyed("k", "once")]).await })
            })
            .collect();
        let mut new_ones = 0;
        for t in tasks {
            let appended = t.await.unwrap().unwrap();
            assert_eq!(appended[0].offset(), 1);
            new_ones += usize::from(appended[0].new_message().is_some());
        }
        assert_eq!(new_ones, 1);
        assert_eq!(store.bounds(&topic).await.unwrap(), (0, 2));
        let id = store.read(&topic, 1, 1, usize::MAX).await.unwrap().messages[0]
            .id()
            .to_owned();
        drop(Arc::into_inner(store).unwrap());

        let store = DiskStore::open(dir.path(), Options::default()).unwrap();
        let again = store
            .append(&topic, vec![keyed("k", "once")])
            .await
            .unwrap();
        match &again[0] {
            Appended::Replayed(o) => {
                assert_eq!(
                    (o.id.as_str(), o.offset, o.subscribers),
                    (id.as_str(), 1, 2)
                );
            }
            Appended::New(_) => panic!("the key was forgotten"),
        }
        let reused = store.append(&topic, vec![keyed("k", "other")]).await;
        assert_eq!(
            reused.unwrap_err(),
            broker_core::Error::IdempotencyKeyReused
        );
        assert_eq!(store.bounds(&topic).await.unwrap(), (0, 2));
        drop(store);

        // With a window that ended before the message: forgotten.
        let options = Options {
            idempotency: IdempotencyLimits {
                window: Duration::from_millis(1),
                ..IdempotencyLimits::default()
            },
            ..Options::default()
        };
        std::thread::sleep(Duration::from_millis(5));
        let store = DiskStore::open(dir.path(), options).unwrap();
        let later = store
            .append(&topic, vec![keyed("k", "other")])
            .await
            .unwrap();
        assert_eq!(later[0].offset(), 2);
        assert!(later[0].new_message().is_some());
    }

    /// 64 appenders at once on the multi-threaded runtime, sharing the
    /// syncer's fsyncs: dense, distinct offsets under every policy, and
    /// with `Always` each append readable (so fsynced) the moment it is
    /// answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_dense_distinct_offsets_under_every_policy() {
        const APPENDERS: u64 = 64;
        const EACH: u64 = 20;
        for fsync in [
            Fsync::Always,
            Fsync::Every(Duration::from_millis(5)),
            Fsync::Never,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(
                DiskStore::open(
                    dir.path(),
                    Options {
                        fsync,
                        ..Options::default()
                    },
                )
                .unwrap(),
            );
            let topic = TopicName::new("t").unwrap();
            let tasks: Vec<_> = (0..APPENDERS)
                .map(|i| {
                    let (store, topic) = (store.clone(), topic.clone());
                    tokio::spawn(async move {
                        let mut offsets = Vec::new();
                        for n in 0..EACH {
                            let m = store.append(&topic, vec![new(format!("{i}.{n}"))]).await;
                            let offset = m.unwrap()[0].offset();
                            if fsync == Fsync::Always {
                                let (_, end) = store.bounds(&topic).await.unwrap();
                                assert!(end > offset, "{offset} answered before it was synced");
                            }
                            offsets.push(offset);
                        }
                        offsets
                    })
                })
                .collect();
            let mut offsets = Vec::new();
            for t in tasks {
                offsets.extend(t.await.unwrap());
            }
            offsets.sort_unstable();
            let total = APPENDERS * EACH;
            assert_eq!(offsets, (0..total).collect::<Vec<_>>(), "{fsync:?}");
            store.flush().unwrap();
            let read = store.read(&topic, 0, 2000, usize::MAX).await.unwrap();
            assert_eq!(read.messages.len() as u64, total, "{fsync:?}");
            assert_eq!(store.bounds(&topic).await.unwrap(), (0, total));
            // Everything is there after a reopen too.
            drop(read);
            let store = Arc::into_inner(store).unwrap();
            drop(store);
            let store = DiskStore::open(dir.path(), Options::default()).unwrap();
            assert_eq!(store.bounds(&topic).await.unwrap(), (0, total));
        }
    }

    #[tokio::test]
    async fn registrations_round_trip_and_removals_stick() {
        let dir = tempfile::tempdir().unwrap();
        let publisher = Record::Credential(CredentialRecord {
            id: "pub_1".into(),
            topic: "t".into(),
            name: "p".into(),
            role: Role::Publish,
            token: "pub_1.secret".into(),
            order: 0,
        });
        let listener = Record::Credential(CredentialRecord {
            id: "lis_1".into(),
            role: Role::Listen,
            order: 1,
            ..match &publisher {
                Record::Credential(c) => c.clone(),
                _ => unreachable!(),
            }
        });
        let subscriber = Record::Subscriber(SubscriberRecord {
            id: "sub_1".into(),
            topic: "t".into(),
            url: "http://h/".into(),
            method: "PUT".into(),
            headers: vec![("x-k".into(), "v".into())],
            max_attempts: 3,
            schedule: Some(vec![Duration::from_secs(5), Duration::from_millis(1500)]),
            ordered: true,
            filter: None,
            enabled: true,
            secret: "whsec_x".into(),
            previous_secret: Some((
                "whsec_y".into(),
                std::time::UNIX_EPOCH + Duration::from_millis(1_795_430_227_250),
            )),
            order: 2,
            cursor: 7,
        });
        {
            let store = DiskStore::open(dir.path(), Options::default()).unwrap();
            for r in [&publisher, &listener, &subscriber] {
                store.save(Change::Put(r)).await.unwrap();
            }
            store.save(Change::Remove { id: "lis_1" }).await.unwrap();
            // Cursors move forward only, and are written in the background.
            store.save_cursor("sub_1", 40).await.unwrap();
            store.save_cursor("sub_1", 30).await.unwrap();
            // Not a registration: never written.
            store.save_cursor("sub_gone", 5).await.unwrap();
        }
        let store = DiskStore::open(dir.path(), Options::default()).unwrap();
        let mut loaded = store.load().await.unwrap();
        loaded.sort_by_key(Record::order);
        let Record::Subscriber(mut moved) = subscriber.clone() else {
            unreachable!()
        };
        moved.cursor = 40;
        assert_eq!(loaded, [publisher, Record::Subscriber(moved)]);
        // Removing a subscriber removes its cursor.
        store.save(Change::Remove { id: "sub_1" }).await.unwrap();
        store.save(Change::Put(&subscriber)).await.unwrap();
        let loaded = store.load().await.unwrap();
        assert!(loaded.contains(&subscriber), "{loaded:?}");
    }

    #[tokio::test]
    async fn dead_letters_are_kept_per_subscriber_in_offset_order() {
        let dir = tempfile::tempdir().unwrap();
        let dead = |offset: u64| broker_core::DeadLetter {
            message_id: format!("msg_{offset}"),
            offset,
            attempts: 8,
            last_status: Some(500),
            last_error: "the endpoint answered with an error status".into(),
            failed_at: std::time::UNIX_EPOCH + Duration::from_millis(1_795_430_227_250),
        };
        let record = subscriber_record;
        {
            let store = DiskStore::open(dir.path(), Options::default()).unwrap();
            for id in ["sub_1", "sub_10"] {
                store.save(Change::Put(&record(id))).await.unwrap();
            }
            for offset in [9, 2, 5] {
                store
                    .put_dead_letter("sub_1", &dead(offset), 3)
                    .await
                    .unwrap();
            }
            store.put_dead_letter("sub_10", &dead(1), 3).await.unwrap();
            store.remove_dead_letter("sub_1", 5).await.unwrap();
        }
        let store = DiskStore::open(dir.path(), Options::default()).unwrap();
        let mine = store.dead_letters("sub_1", 100).await.unwrap();
        assert_eq!(mine, [dead(2), dead(9)]);
        assert_eq!(store.dead_letters("sub_1", 1).await.unwrap(), [dead(2)]);
        assert_eq!(store.dead_letters("sub_10", 100).await.unwrap(), [dead(1)]);
        // A removed subscriber's dead letters go with it.
        store.save(Change::Remove { id: "sub_1" }).await.unwrap();
        assert!(store.dead_letters("sub_1", 100).await.unwrap().is_empty());
        assert_eq!(store.dead_letters("sub_10", 100).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn dead_letters_are_bounded_per_subscriber_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let dead = |offset: u64| broker_core::DeadLetter {
            message_id: format!("msg_{offset}"),
            offset,
            attempts: 1,
            last_status: None,
            last_error: "no answer within the request timeout".into(),
            failed_at: std::time::UNIX_EPOCH,
        };
        let offsets =
            |v: Vec<broker_core::DeadLetter>| v.iter().map(|d| d.offset).collect::<Vec<_>>();
        {
            let store = DiskStore::open(dir.path(), Options::default()).unwrap();
            let mut evicted = Vec::new();
            for offset in 0..5 {
                evicted.push(
                    store
                        .put_dead_letter("sub_1", &dead(offset), 3)
                        .await
                        .unwrap(),
                );
            }
            assert_eq!(evicted, [0, 0, 0, 1, 1]);
            assert_eq!(
                offsets(store.dead_letters("sub_1", 10).await.unwrap()),
                [2, 3, 4]
            );
            // Replacing one is no new one; a removed one makes room.
            assert_eq!(
                store.put_dead_letter("sub_1", &dead(3), 3).await.unwrap(),
                0
            );
            store.remove_dead_letter("sub_1", 2).await.unwrap();
            assert_eq!(
                store.put_dead_letter("sub_1", &dead(7), 3).await.unwrap(),
                0
            );
            assert_eq!(
                offsets(store.dead_letters("sub_1", 10).await.unwrap()),
                [3, 4, 7]
            );
        }
        // Reopened, the count is taken from the table again.
        let store = DiskStore::open(dir.path(), Options::default()).unwrap();
        assert_eq!(
            store.put_dead_letter("sub_1", &dead(9), 3).await.unwrap(),
            1
        );
        assert_eq!(
            offsets(store.dead_letters("sub_1", 10).await.unwrap()),
            [4, 7, 9]
        );
    }

    #[tokio::test]
    async fn pending_retries_survive_a_reopen_and_go_with_their_subscriber() {
        let dir = tempfile::tempdir().unwrap();
        let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let retry = |offset: u64, attempts: u32| broker_core::PendingRetry {
            offset,
            attempts,
            due: at(1_795_430_227_000 + offset),
        };
        let record = subscriber_record("sub_1");
        {
            let store = DiskStore::open(dir.path(), Options::default()).unwrap();
            store.save(Change::Put(&record)).await.unwrap();
            store.save_retry("sub_1", retry(7, 2)).await.unwrap();
            store.save_retry("sub_1", retry(3, 1)).await.unwrap();
            store.save_retry("sub_1", retry(3, 4)).await.unwrap();
            store.save_retry("sub_1", retry(9, 1)).await.unwrap();
            store.forget_retry("sub_1", 9).await.unwrap();
            // Not a registration: never written.
            store.save_retry("sub_gone", retry(1, 1)).await.unwrap();
            // Buffered writes are read back at once.
            assert_eq!(
                store.pending_retries("sub_1").await.unwrap(),
                [retry(3, 4), retry(7, 2)]
            );
            store.save_retry("sub_1", retry(8, 5)).await.unwrap();
            // Dropped without a read: the background flush has it.
        }
        let store = DiskStore::open(dir.path(), Options::default()).unwrap();
        assert_eq!(
            store.pending_retries("sub_1").await.unwrap(),
            [retry(3, 4), retry(7, 2), retry(8, 5)]
        );
        assert!(store.pending_retries("sub_gone").await.unwrap().is_empty());
        store.save(Change::Remove { id: "sub_1" }).await.unwrap();
        assert!(store.pending_retries("sub_1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_attempt_log_is_bounded_survives_a_reopen_and_goes_with_its_subscriber() {
        let dir = tempfile::tempdir().unwrap();
        let topic = TopicName::new("t").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let attempt = |seq: u64, status: u16| broker_core::AttemptRecord {
            seq,
            message_id: format!("msg_{seq}"),
            offset: seq - now,
            attempt: 1,
            duration_ms: 3,
            status: Some(status),
            error: None,
            response: Some(bytes::Bytes::from_static(b"ok")),
        };
        let record = subscriber_record;
        let seqs = |found: Vec<broker_core::AttemptRecord>| {
            found.iter().map(|a| a.seq - now).collect::<Vec<_>>()
        };
        let all = broker_core::AttemptQuery::default();
        {
            let store = DiskStore::open(dir.path(), Options::default()).unwrap();
            store.save(Change::Put(&record("sub_1"))).await.unwrap();
            store.save(Change::Put(&record("sub_2"))).await.unwrap();
            let first: Vec<_> = (1..=4).map(|i| attempt(now + i, 200)).collect();
            store
                .record_attempts(&topic, "sub_1", first, 3)
                .await
                .unwrap();
            store
                .record_attempts(&topic, "sub_2", vec![attempt(now + 1, 500)], 3)
                .await
                .unwrap();
            // Not a registration: never written.
            store
                .record_attempts(&topic, "sub_gone", vec![attempt(now + 1, 500)], 3)
                .await
                .unwrap();
            // Buffered records are listed at once, within the count.
            assert_eq!(
                seqs(store.attempts(&topic, "sub_1", &all).await.unwrap()),
                [4, 3, 2]
            );
            store
                .record_attempts(&topic, "sub_1", vec![attempt(now + 5, 503)], 3)
                .await
                .unwrap();
            // Dropped without a read: the background flush has it.
        }
        let store = DiskStore::open(dir.path(), Options::default()).unwrap();
        assert_eq!(
            seqs(store.attempts(&topic, "sub_1", &all).await.unwrap()),
            [5, 4, 3]
        );
        let page = broker_core::AttemptQuery {
            limit: 1,
            before: Some(now + 5),
            succeeded: Some(true),
            ..broker_core::AttemptQuery::default()
        };
        assert_eq!(
            seqs(store.attempts(&topic, "sub_1", &page).await.unwrap()),
            [4]
        );
        assert_eq!(
            seqs(store.attempts(&topic, "sub_2", &all).await.unwrap()),
            [1]
        );
        assert!(store
            .attempts(&topic, "sub_gone", &all)
            .await
            .unwrap()
            .is_empty());
        store.save(Change::Remove { id: "sub_1" }).await.unwrap();
        assert!(store
            .attempts(&topic, "sub_1", &all)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            seqs(store.attempts(&topic, "sub_2", &all).await.unwrap()),
            [1]
        );
    }

    #[tokio::test]
    async fn recent_messages_are_read_from_the_tail_cache_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(
            dir.path(),
            Options {
                fsync: Fsync::Never,
                // Three 100-byte messages (and their bookkeeping) fit.
                memory_bytes: 800,
                ..Options::default()
            },
        )
        .unwrap();
        let topic = TopicName::new("t").unwrap();
        for n in 0..20 {
            store
                .append(&topic, vec![new(format!("{n:0100}"))])
                .await
                .unwrap();
        }
        let log = store.log(&topic).unwrap();
        let cached = log.read_cached(18, 10, usize::MAX).unwrap();
        let offsets: Vec<u64> = cached.messages.iter().map(|m| m.offset()).collect();
        assert_eq!(offsets, [18, 19]);
        assert!(
            store
                .shared
                .cache
                .held
                .load(std::sync::atomic::Ordering::Relaxed)
                <= 800
        );
        assert!(log.read_cached(0, 10, usize::MAX).is_none(), "evicted");
        // The store falls back to the files for what the cache lost.
        let all = store.read(&topic, 0, 100, usize::MAX).await.unwrap();
        assert_eq!(all.messages.len(), 20);
        assert_eq!(all.messages[0].payload(), &format!("{:0100}", 0));
    }
}
