//! One topic's log on disk: a directory of segments, the newest of which
//! takes appends.
//!
//! Writers hold the topic's `state` lock while they number and write
//! their records (a `pwrite` into the page cache, no fsync, never an
//! `.await`); durability is the syncer's job ([`crate::sync`]). Readers
//! copy the segment list out under the lock and read without it.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use broker_core::{
    message_id, Appended, IdempotencyKey, KeyTable, Keyed, MemoryBudget, Message, NewMessage, Read,
    TopicName,
};
use bytes::Bytes;
use http::HeaderValue;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{
    segment::{
        self, encode_header, encode_record, read_header, scan, Header, HeaderError, Segment,
    },
    StoreError,
};

/// How big and how old the newest segment may grow before a new one is
/// started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rolling {
    pub(crate) bytes: u64,
    pub(crate) age: Duration,
}

pub(crate) struct TopicLog {
    pub(crate) name: TopicName,
    dir: PathBuf,
    prefix: String,
    state: Mutex<State>,
    /// Offsets below this are readable: written, and synced when the
    /// policy says publishes wait for it.
    committed: AtomicU64,
    /// Offsets below this are on disk (fsynced).
    synced: watch::Sender<u64>,
    /// Set once an fsync failed: the log takes no more appends (what it
    /// holds on disk is unknown after a failed fsync).
    pub(crate) failed: AtomicBool,
    /// Queued for the syncer.
    pub(crate) dirty: AtomicBool,
    /// Whether [`KEYED_MARKER`] is written: the log holds (or held) keyed
    /// messages, whose keys are read back when it opens.
    keyed: AtomicBool,
    /// The newest messages, kept in memory so that subscribers and
    /// listeners keeping up read them without touching the file; bounded
    /// per topic and by the store's cache budget.
    recent: Mutex<Recent>,
}

/// The tail cache of a log.
#[derive(Default)]
struct Recent {
    messages: std::collections::VecDeque<Arc<Message>>,
    bytes: usize,
}

/// The file in a topic's directory that says its log holds keyed
/// messages: only such logs are read for their keys at open.
const KEYED_MARKER: &str = "keyed";

/// A key read back from a record at open.
struct ReadKey {
    keyed: Keyed,
    offset: u64,
    time_ms: u64,
}

impl ReadKey {
    /// The key of `r`, if it has a valid one.
    fn of(r: &segment::RecordRef<'_>) -> Option<Self> {
        let k = r.key.as_ref()?;
        let key = std::str::from_utf8(k.key)
            .ok()
            .and_then(|k| IdempotencyKey::new(k).ok())?;
        Some(ReadKey {
            keyed: Keyed {
                key,
                fingerprint: k.fingerprint,
                subscribers: k.subscribers,
            },
            offset: r.offset,
            time_ms: r.time_ms,
        })
    }
}

/// Reads the keys of a keyed log back into `keys` at open: those of the
/// newest segment (`newest`, read by its recovery scan), then of the
/// sealed segments written to within the window (`sealed`, oldest first),
/// newest first, until as many as `keys` keeps at most are read (older
/// ones would be forgotten at once). Remembered oldest first.
fn restore_keys(
    keys: &KeyTable,
    topic: &TopicName,
    prefix: &str,
    sealed: &[Arc<Segment>],
    newest: Vec<ReadKey>,
) -> Result<(), StoreError> {
    let max = keys.limits().max_keys;
    let mut found = vec![newest];
    let mut count = found[0].len();
    for seg in sealed.iter().rev() {
        if count >= max {
            break;
        }
        let file = seg.file().map_err(io_at(&seg.path))?;
        let mut read = Vec::new();
        let stop = scan(
            &file,
            seg.version,
            segment::HEADER_LEN,
            seg.end(),
            |_, r| {
                read.extend(ReadKey::of(r));
                true
            },
        )
        .map_err(io_at(&seg.path))?;
        if let segment::Stop::Bad(pos, why) = stop {
            tracing::error!(path = %seg.path.display(), pos, why, "unreadable record in a sealed segment");
        }
        count += read.len();
        found.push(read);
    }
    // Only the newest `max` would stay: the older ones are not inserted.
    let skip = count.saturating_sub(max);
    for k in found.iter().rev().flatten().skip(skip) {
        let id = message_id(prefix, k.offset);
        keys.remember(topic, &k.keyed, &id, k.offset, k.time_ms);
    }
    Ok(())
}

/// Bytes of messages a topic's tail cache holds at most.
const RECENT_PER_TOPIC: usize = 4 << 20;

/// What a cached message counts for (payload and bookkeeping).
fn cached_size(m: &Message) -> usize {
    m.held_bytes()
}

struct State {
    /// Oldest first; never empty: the last one takes appends.
    segments: Vec<Arc<Segment>>,
    next: u64,
}

/// What recovery found in a topic's newest segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Bytes cut off a torn or corrupt tail.
    pub(crate) truncated_bytes: u64,
    /// Why the first bad record was bad.
    pub(crate) reason: Option<&'static str>,
}

/// The budget all topics' tail caches share with deliveries.
#[derive(Debug)]
pub(crate) struct Cache {
    pub(crate) memory: MemoryBudget,
    /// What the tail caches hold (also counted in `memory`).
    pub(crate) held: std::sync::atomic::AtomicUsize,
}

impl Drop for Cache {
    fn drop(&mut self) {
        // The budget may outlive the store (a broker's deliveries).
        self.memory
            .release_cached(self.held.load(std::sync::atomic::Ordering::Relaxed));
    }
}

/// Writes zeros ahead of `end` (the end of the records just written)
/// when the file holds none: [`segment::PREALLOCATE`] bytes. Best effort:
/// on failure the file keeps what it had, and appends go on without.
fn preallocate(file: &std::fs::File, segment: &Segment, end: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let allocated = segment.allocated.load(Ordering::Acquire);
    if allocated >= end {
        return;
    }
    let target = end + segment::PREALLOCATE;
    let mut at = end;
    while at < target {
        let n = ((target - at) as usize).min(ZEROS.len());
        if file.write_all_at(&ZEROS[..n], at).is_err() {
            break;
        }
        at += n as u64;
    }
    segment.allocated.store(at.max(end), Ordering::Release);
}

/// Where the bytes of `file` between `from` and `to` stop being anything
/// but zeros at the end: past its last byte that is not zero (`from` when
/// all are).
fn data_end(file: &std::fs::File, from: u64, to: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = from;
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(last) = buf[..n].iter().rposition(|&b| b != 0) {
            end = at + last as u64 + 1;
        }
        at += n as u64;
    }
    Ok(end)
}

/// A topic with no append for this long closes its newest segment's file.
const IDLE: Duration = Duration::from_secs(60);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event type as a record holds it (empty: none).
fn event_type(bytes: &[u8]) -> Option<broker_core::EventType> {
    if bytes.is_empty() {
        return None;
    }
    // Checked when published; a record that passed its CRC holds one.
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| broker_core::EventType::new(t).ok())
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_at(path))
}

fn create_segment(dir: &Path, header: &Header) -> Result<Segment, StoreError> {
    let path = dir.join(segment::file_name(header.base));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_at(&path))?;
    file.write_all_at(&encode_header(header), 0)
        .and_then(|()| file.sync_all())
        .map_err(io_at(&path))?;
    sync_dir(dir)?;
    Ok(Segment::new(
        header.base,
        header.version,
        path,
        Some(file),
        segment::HEADER_LEN,
        true,
    ))
}

impl TopicLog {
    /// A new, empty log in `dir` (created).
    pub(crate) fn create(name: TopicName, dir: PathBuf) -> Result<Self, StoreError> {
        crate::create_dir(&dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let header = Header {
            base: 0,
            prefix: broker_core::new_id_prefix(),
            version: segment::VERSION,
        };
        let first = create_segment(&dir, &header)?;
        Ok(Self::assemble(
            name,
            dir,
            header.prefix,
            vec![Arc::new(first)],
            0,
        ))
    }

    fn assemble(
        name: TopicName,
        dir: PathBuf,
        prefix: String,
        segments: Vec<Arc<Segment>>,
        next: u64,
    ) -> Self {
        TopicLog {
            name,
            dir,
            prefix,
            state: Mutex::new(State { segments, next }),
            committed: AtomicU64::new(next),
            synced: watch::Sender::new(next),
            failed: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            keyed: AtomicBool::new(false),
            recent: Mutex::default(),
        }
    }

    /// Opens the log in `dir`: reads every segment's header, and scans the
    /// newest segment only, cutting off a torn or corrupt tail. With
    /// `keys`, a log marked keyed is also read for the keys of its
    /// messages within the keys' window (the sealed segments written to
    /// within it, and the newest), which `keys` remembers.
    pub(crate) fn open(
        name: TopicName,
        dir: PathBuf,
        keys: Option<&KeyTable>,
    ) -> Result<(Self, Recovered), StoreError> {
        let keys = keys.filter(|_| dir.join(KEYED_MARKER).exists());
        let since = keys.map_or(u64::MAX, |k| {
            now_ms().saturating_sub(k.limits().window.as_millis() as u64)
        });
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            if let Some(base) = entry.file_name().to_str().and_then(segment::parse_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut segments = Vec::with_capacity(bases.len());
        let mut prefix: Option<String> = None;
        let count = bases.len();
        let mut recovered = Recovered::default();
        let mut keyed_sealed = Vec::new();
        for (i, base) in bases.into_iter().enumerate() {
            let path = dir.join(segment::file_name(base));
            let newest = i + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(newest)
                .open(&path)
                .map_err(io_at(&path))?;
            let header = match read_header(&file, &path).map_err(io_at(&path))? {
                Ok(h) if h.base == base => h,
                Err(HeaderError::Version(v)) => {
                    return Err(StoreError::Format {
                        path,
                        found: format!("segment format version {v}"),
                    })
                }
                // A newest segment whose header never made it to disk
                // (a crash right after it was created) holds nothing:
                // write it again.
                _ if newest => {
                    let header = Header {
                        base,
                        prefix: prefix.clone().unwrap_or_else(broker_core::new_id_prefix),
                        version: segment::VERSION,
                    };
                    tracing::warn!(path = %path.display(), "rewriting a torn segment header");
                    drop(file);
                    let seg = create_segment(&dir, &header)?;
                    segments.push(Arc::new(seg));
                    // The log goes on from this segment's base: what the
                    // segments before it hold stays, ids and all.
                    if let Some(keys) = keys {
                        restore_keys(keys, &name, &header.prefix, &keyed_sealed, Vec::new())?;
                    }
                    let log = Self::assemble(name, dir, header.prefix, segments, base);
                    log.keyed.store(keys.is_some(), Ordering::Relaxed);
                    return Ok((log, recovered));
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        path,
                        reason: "bad segment header".into(),
                    })
                }
            };
            if prefix.as_ref().is_some_and(|p| *p != header.prefix) {
                return Err(StoreError::Corrupt {
                    path,
                    reason: "segment of another log".into(),
                });
            }
            prefix = Some(header.prefix);
            let len = file.metadata().map_err(io_at(&path))?.len();
            if newest {
                let seg = Segment::new(
                    base,
                    header.version,
                    path.clone(),
                    Some(file),
                    segment::HEADER_LEN,
                    true,
                );
                let file = seg.file().map_err(io_at(&path))?;
                let mut expected = base;
                let mut newest_keys = Vec::new();
                let stop = scan(&file, seg.version, segment::HEADER_LEN, len, |pos, r| {
                    if r.offset != expected {
                        return false;
                    }
                    seg.indexed(r.offset, pos, r.time_ms);
                    if keys.is_some() {
                        newest_keys.extend(ReadKey::of(r));
                    }
                    expected += 1;
                    true
                })
                .map_err(io_at(&path))?;
                let (good, reason) = match stop {
                    segment::Stop::End(p) => (p, None),
                    segment::Stop::Asked(p) => (p, Some("offset out of sequence")),
                    segment::Stop::Bad(p, why) => (p, Some(why)),
                };
                if good < len {
                    // The zeros at the end were written ahead of the
                    // records (`PREALLOCATE`): only what comes before them
                    // is a torn record.
                    let data = data_end(&file, good, len).map_err(io_at(&path))?;
                    file.set_len(good)
                        .and_then(|()| file.sync_all())
                        .map_err(io_at(&path))?;
                    if data > good {
                        recovered = Recovered {
                            truncated_bytes: data - good,
                            reason,
                        };
                    }
                }
                seg.end.store(good, Ordering::Release);
                seg.allocated.store(good, Ordering::Release);
                // Cut off with the torn tail: not acknowledged, not kept.
                newest_keys.retain(|k| k.offset < expected);
                let prefix = prefix.expect("set above");
                if let Some(keys) = keys {
                    restore_keys(keys, &name, &prefix, &keyed_sealed, newest_keys)?;
                }
                segments.push(Arc::new(seg));
                let log = Self::assemble(name, dir, prefix, segments, expected);
                log.keyed.store(keys.is_some(), Ordering::Relaxed);
                return Ok((log, recovered));
            }
            drop(file);
            let seg = Segment::new(base, header.version, path.clone(), None, len, false);
            // Sealed: its times are those of its file (its last write).
            let modified = fs::metadata(&path).and_then(|m| m.modified()).map_or(0, ms);
            seg.newest_ms.store(modified.max(1), Ordering::Relaxed);
            seg.oldest_ms.store(modified.max(1), Ordering::Relaxed);
            let seg = Arc::new(seg);
            // Written to within the window: it may hold keys to remember.
            if keys.is_some() && modified >= since && header.version >= 3 {
                keyed_sealed.push(seg.clone());
            }
            segments.push(seg);
        }
        // No segment at all: an empty log.
        let header = Header {
            base: 0,
            prefix: broker_core::new_id_prefix(),
            version: segment::VERSION,
        };
        let first = create_segment(&dir, &header)?;
        Ok((
            Self::assemble(name, dir, header.prefix, vec![Arc::new(first)], 0),
            recovered,
        ))
    }

    /// Numbers and writes `messages` (not yet synced). Returns them and
    /// the offset after the last.
    #[cfg(test)]
    pub(crate) fn append(
        &self,
        messages: Vec<NewMessage>,
        rolling: Rolling,
        wait_for_sync: bool,
        cache: &Cache,
    ) -> Result<(Vec<Arc<Message>>, u64), StoreError> {
        self.check_failed()?;
        let mut state = self.state.lock();
        let out = self.write(&mut state, messages, rolling, wait_for_sync, cache)?;
        Ok((out, state.next))
    }

    /// [`append`](Self::append), deduplicated by `keys` under the log's
    /// lock: the messages whose key `keys` remembers are not written.
    pub(crate) fn append_keyed(
        &self,
        messages: Vec<NewMessage>,
        rolling: Rolling,
        wait_for_sync: bool,
        cache: &Cache,
        keys: &KeyTable,
    ) -> Result<(Vec<Appended>, u64), broker_core::Error> {
        self.check_failed()?;
        if messages.iter().any(|m| m.idempotency.is_some()) {
            self.mark_keyed()?;
        }
        let mut state = self.state.lock();
        let out = keys.append_with(&self.name, messages, |messages| {
            self.write(&mut state, messages, rolling, wait_for_sync, cache)
                .map_err(broker_core::Error::from)
        })?;
        Ok((out, state.next))
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Writes the marker that says this log holds keyed messages (read
    /// back at open), once, durably, before the first keyed append.
    fn mark_keyed(&self) -> Result<(), StoreError> {
        if self.keyed.load(Ordering::Acquire) {
            return Ok(());
        }
        let path = self.dir.join(KEYED_MARKER);
        File::create(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&path))?;
        sync_dir(&self.dir)?;
        self.keyed.store(true, Ordering::Release);
        Ok(())
    }

    /// Numbers and writes `messages` under the state lock.
    fn write(
        &self,
        state: &mut State,
        messages: Vec<NewMessage>,
        rolling: Rolling,
        wait_for_sync: bool,
        cache: &Cache,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        let now = now_ms();
        {
            let active = state.segments.last().expect("never empty");
            let oldest = active.oldest_ms.load(Ordering::Relaxed);
            // A segment of an older format (written before an upgrade)
            // takes no appends in this one.
            if active.end() >= rolling.bytes
                || active.version != segment::VERSION
                || (oldest != 0 && now.saturating_sub(oldest) >= rolling.age.as_millis() as u64)
            {
                self.roll(state)?;
            }
        }
        let active = state.segments.last().expect("never empty").clone();
        let start = active.end();
        let mut buf = Vec::new();
        let mut positions = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            positions.push(start + buf.len() as u64);
            let ct = m.content_type.as_ref().map_or(&[][..], |c| c.as_bytes());
            let et = m.event_type.as_ref().map_or("", |t| t.as_str());
            let key = m.idempotency.as_ref().map(|k| segment::RecordKey {
                key: k.key.as_str().as_bytes(),
                fingerprint: k.fingerprint,
                subscribers: k.subscribers,
            });
            let trace = m.trace.as_ref().map(broker_core::TraceContext::encode);
            encode_record(
                &mut buf,
                state.next + i as u64,
                ms(m.published_at),
                ct,
                et.as_bytes(),
                key,
                trace.as_deref().unwrap_or_default(),
                &m.payload,
            );
        }
        let file = active.writable().map_err(io_at(&active.path))?;
        if let Err(e) = file.write_all_at(&buf, start) {
            // Cut off whatever part made it, so the next append starts at
            // a record boundary.
            let _ = file.set_len(start);
            active.allocated.store(start, Ordering::Release);
            return Err(io_at(&active.path)(e));
        }
        preallocate(&file, &active, start + buf.len() as u64);
        let first = state.next;
        let mut out = Vec::with_capacity(messages.len());
        for (i, (m, pos)) in messages.into_iter().zip(positions).enumerate() {
            let offset = first + i as u64;
            active.indexed(offset, pos, ms(m.published_at));
            out.push(Arc::new(
                Message::new(
                    message_id(&self.prefix, offset),
                    offset,
                    self.name.clone(),
                    m.content_type,
                    m.payload,
                    m.published_at,
                )
                .with_event_type(m.event_type)
                .with_trace(m.trace),
            ));
        }
        active
            .end
            .store(start + buf.len() as u64, Ordering::Release);
        state.next = first + out.len() as u64;
        {
            // Cached under the state lock, so the cache is in offset order.
            let mut recent = self.recent.lock();
            for m in &out {
                recent.bytes += cached_size(m);
                cache.held.fetch_add(cached_size(m), Ordering::Relaxed);
                cache.memory.add_cached(cached_size(m));
                recent.messages.push_back(m.clone());
            }
            while recent.bytes > RECENT_PER_TOPIC.min(cache.memory.limit())
                || cache.memory.is_over()
            {
                let Some(old) = recent.messages.pop_front() else {
                    break;
                };
                recent.bytes -= cached_size(&old);
                cache.held.fetch_sub(cached_size(&old), Ordering::Relaxed);
                cache.memory.release_cached(cached_size(&old));
            }
        }
        if !wait_for_sync {
            self.committed.store(state.next, Ordering::Release);
        }
        Ok(out)
    }

    /// Seals the newest segment (synced first) and starts the next. An
    /// empty one (of an older format) is replaced instead: the next has
    /// its base.
    fn roll(&self, state: &mut State) -> Result<(), StoreError> {
        let active = state.segments.last().expect("never empty");
        let empty = active.end() == segment::HEADER_LEN;
        // A sealed segment holds whole records only: the zeros ahead go.
        if active.allocated.load(Ordering::Acquire) > active.end() {
            // Through a descriptor open for writing: an idle segment's was
            // closed, and a read-only one cannot cut.
            active
                .writable()
                .and_then(|f| f.set_len(active.end()))
                .map_err(io_at(&active.path))?;
            active.allocated.store(active.end(), Ordering::Release);
        }
        active
            .file()
            .and_then(|f| f.sync_data())
            .map_err(io_at(&active.path))?;
        active.seal();
        let next = create_segment(
            &self.dir,
            &Header {
                base: state.next,
                prefix: self.prefix.clone(),
                version: segment::VERSION,
            },
        )?;
        if empty {
            *state.segments.last_mut().expect("never empty") = Arc::new(next);
        } else {
            state.segments.push(Arc::new(next));
        }
        Ok(())
    }

    /// Fsyncs what is written so far; then those offsets are durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let (target, active) = {
            let state = self.state.lock();
            (
                state.next,
                state.segments.last().expect("never empty").clone(),
            )
        };
        if *self.synced.borrow() >= target {
            return Ok(());
        }
        match active.file().and_then(|f| f.sync_data()) {
            Ok(()) => {
                self.committed.fetch_max(target, Ordering::AcqRel);
                self.synced.send_if_modified(|s| {
                    let moved = *s < target;
                    *s = (*s).max(target);
                    moved
                });
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                // Wake the waiters: they see `failed`.
                self.synced.send_modify(|_| {});
                Err(io_at(&active.path)(e))
            }
        }
    }

    /// Waits until offsets below `next` are on disk.
    pub(crate) async fn synced(&self, next: u64) -> Result<(), StoreError> {
        let mut rx = self.synced.subscribe();
        let failed = &self.failed;
        let _ = rx
            .wait_for(|&s| s >= next || failed.load(Ordering::Acquire))
            .await;
        if *rx.borrow() >= next {
            Ok(())
        } else {
            Err(StoreError::Failed {
                path: self.dir.clone(),
            })
        }
    }

    /// First retained and next offsets, as readers see them.
    pub(crate) fn bounds(&self) -> (u64, u64) {
        let state = self.state.lock();
        (
            state.segments[0].base,
            self.committed.load(Ordering::Acquire),
        )
    }

    /// Reads committed messages from `from` out of the tail cache, if it
    /// holds `from` (no file read; `None` otherwise).
    pub(crate) fn read_cached(
        &self,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Option<Read> {
        let (first, committed) = self.bounds();
        let recent = self.recent.lock();
        let oldest = recent.messages.front()?.offset();
        let from = from.max(first);
        if from < oldest || from > committed {
            return None;
        }
        let mut read = Read {
            messages: Vec::new(),
            first,
            next: committed,
        };
        let mut bytes = 0usize;
        let skip = (from - oldest) as usize;
        for m in recent.messages.iter().skip(skip) {
            if m.offset() >= committed || read.messages.len() >= max_messages {
                break;
            }
            bytes += m.payload().len();
            if bytes > max_bytes && !read.messages.is_empty() {
                break;
            }
            read.messages.push(m.clone());
        }
        Some(read)
    }

    /// Empties the tail cache (the topic went idle, or was deleted).
    pub(crate) fn drop_cache(&self, cache: &Cache) {
        let mut recent = self.recent.lock();
        cache.held.fetch_sub(recent.bytes, Ordering::Relaxed);
        cache.memory.release_cached(recent.bytes);
        *recent = Recent::default();
    }

    /// Reads committed messages from `from` (blocking file reads).
    pub(crate) fn read(
        &self,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, StoreError> {
        let (segments, next_written) = {
            let state = self.state.lock();
            (state.segments.clone(), state.next)
        };
        let committed = self.committed.load(Ordering::Acquire).min(next_written);
        let first = segments[0].base;
        let mut read = Read {
            messages: Vec::new(),
            first,
            next: committed,
        };
        let mut offset = from.max(first);
        let mut bytes = 0usize;
        let start_at = segments
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1);
        for seg in &segments[start_at..] {
            if offset >= committed || read.messages.len() >= max_messages {
                break;
            }
            let pos = seg.position_of(offset).map_err(io_at(&seg.path))?;
            let file = seg.file().map_err(io_at(&seg.path))?;
            // A few KiB for one message, more for more (the sparse index
            // puts `pos` up to 8 KiB before the offset).
            let first = max_messages
                .saturating_mul(512)
                .clamp(4 * 1024, segment::FIRST_READ);
            let stop = segment::scan_from(&file, seg.version, pos, seg.end(), first, |_, r| {
                if r.offset < offset {
                    return true;
                }
                if r.offset >= committed || read.messages.len() >= max_messages {
                    return false;
                }
                bytes += r.payload.len();
                if bytes > max_bytes && !read.messages.is_empty() {
                    return false;
                }
                read.messages.push(Arc::new(
                    Message::new(
                        message_id(&self.prefix, r.offset),
                        r.offset,
                        self.name.clone(),
                        (!r.content_type.is_empty())
                            .then(|| HeaderValue::from_bytes(r.content_type).ok())
                            .flatten(),
                        Bytes::copy_from_slice(r.payload),
                        UNIX_EPOCH + Duration::from_millis(r.time_ms),
                    )
                    .with_event_type(event_type(r.event_type))
                    .with_trace(broker_core::TraceContext::decode(r.trace)),
                ));
                offset = r.offset + 1;
                true
            })
            .map_err(io_at(&seg.path))?;
            if let segment::Stop::Bad(pos, why) = stop {
                // A sealed segment went bad on disk after it was written:
                // say so, and go on with the next one.
                tracing::error!(path = %seg.path.display(), pos, why, "unreadable record in a sealed segment");
            }
            if bytes > max_bytes {
                break;
            }
        }
        Ok(read)
    }

    /// Applies retention: seals an expired newest segment, then drops the
    /// oldest segments while expired or over `max_bytes`. Files are
    /// removed after the lock is dropped; readers holding a segment keep
    /// reading from its open file.
    pub(crate) fn sweep(
        &self,
        max_age: Duration,
        max_bytes: u64,
        cache: &Cache,
    ) -> Result<usize, StoreError> {
        let cutoff = now_ms().saturating_sub(max_age.as_millis() as u64);
        let removed: Vec<Arc<Segment>> = {
            let mut state = self.state.lock();
            let active = state.segments.last().expect("never empty");
            let newest = active.newest_ms.load(Ordering::Relaxed);
            if newest != 0 && newest < cutoff && !self.failed.load(Ordering::Acquire) {
                self.roll(&mut state)?;
            }
            let active = state.segments.last().expect("never empty");
            if active.newest_ms.load(Ordering::Relaxed)
                < now_ms().saturating_sub(IDLE.as_millis() as u64)
            {
                // Idle: give its file descriptor back (a topic never
                // published again holds none). What it wrote is in the
                // page cache; an fsync through another descriptor of the
                // file covers it. Its tail cache goes too, and so do the
                // zeros written ahead (so that thousands of idle topics
                // hold no disk for appends that do not come).
                if active.allocated.load(Ordering::Acquire) > active.end() {
                    if let Ok(file) = active.writable() {
                        if file.set_len(active.end()).is_ok() {
                            active.allocated.store(active.end(), Ordering::Release);
                        }
                    }
                }
                active.seal();
                self.drop_cache(cache);
            }
            let mut total: u64 = state.segments.iter().map(|s| s.end()).sum();
            let mut drop = 0;
            while drop + 1 < state.segments.len() {
                let s = &state.segments[drop];
                if s.newest_ms.load(Ordering::Relaxed) < cutoff || total > max_bytes {
                    total -= s.end();
                    drop += 1;
                } else {
                    break;
                }
            }
            state.segments.drain(..drop).collect()
        };
        for s in &removed {
            fs::remove_file(&s.path).map_err(io_at(&s.path))?;
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
            tracing::debug!(topic = %self.name, segments = removed.len(), "retention removed segments");
        }
        Ok(removed.len())
    }

    /// Segment files and bytes on disk.
    #[cfg(test)]
    pub(crate) fn segments(&self) -> Vec<(u64, u64)> {
        self.state
            .lock()
            .segments
            .iter()
            .map(|s| (s.base, s.end()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(payload: &[u8]) -> NewMessage {
        NewMessage {
            content_type: Some(HeaderValue::from_static("text/plain")),
            payload: Bytes::copy_from_slice(payload),
            published_at: SystemTime::now(),
            event_type: None,
            trace: None,
            idempotency: None,
        }
    }

    /// No tail cache: every read goes to the files.
    static NO: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(|| Cache {
        memory: MemoryBudget::new(0),
        held: std::sync::atomic::AtomicUsize::new(0),
    });

    const ROLL: Rolling = Rolling {
        bytes: 1 << 20,
        age: Duration::from_secs(3600),
    };

    fn topic() -> TopicName {
        TopicName::new("t").unwrap()
    }

    /// A log holding three records, and the file positions where each
    /// record starts and where the last ends.
    fn three(dir: &Path) -> (PathBuf, [u64; 4], Vec<String>) {
        let log = TopicLog::create(topic(), dir.to_owned()).unwrap();
        let mut bounds = [segment::HEADER_LEN; 4];
        let mut ids = Vec::new();
        for (i, payload) in [&b"first"[..], b"second", b"third record"]
            .iter()
            .enumerate()
        {
            let (m, _) = log.append(vec![new(payload)], ROLL, false, &NO).unwrap();
            ids.push(m[0].id().to_owned());
            bounds[i + 1] = log.segments()[0].1;
        }
        // Without the zeros written ahead (as a sealed segment): the tests
        // put their own bytes after the records.
        let path = dir.join(segment::file_name(0));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(bounds[3]))
            .unwrap();
        (path, bounds, ids)
    }

    fn reopen(dir: &Path) -> (TopicLog, Recovered) {
        TopicLog::open(topic(), dir.to_owned(), None).unwrap()
    }

    fn all(log: &TopicLog) -> Vec<Bytes> {
        let read = log.read(0, usize::MAX, usize::MAX).unwrap();
        read.messages.iter().map(|m| m.payload().clone()).collect()
    }

    /// Reads start small and grow: every read, of one message or many,
    /// finds records smaller and larger than its first read, from any
    /// offset.
    #[test]
    fn reads_of_any_size_find_small_and_large_records_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = TopicLog::create(topic(), dir.path().to_owned()).unwrap();
        let sizes = [10, 20_000, 5, 300_000, 3_000, 1, 70_000, 9];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![b'a' + i as u8; n])
            .collect();
        for p in &payloads {
            log.append(vec![new(p)], ROLL, false, &NO).unwrap();
        }
        for from in 0..sizes.len() {
            for max in [1, 2, 3, usize::MAX] {
                let read = log.read(from as u64, max, usize::MAX).unwrap();
                let want = &payloads[from..(from + max.min(sizes.len() - from))];
                let got: Vec<&[u8]> = read.messages.iter().map(|m| &m.payload()[..]).collect();
                assert_eq!(got.len(), want.len(), "from {from}, max {max}");
                for (g, w) in got.iter().zip(want) {
                    assert_eq!(g, w, "from {from}, max {max}");
                }
                assert_eq!(read.messages[0].offset(), from as u64);
            }
        }
    }

    /// The zeros written ahead of the records are no torn record: an open
    /// after a crash cuts them without a word, and a torn record before
    /// them is counted without them.
    #[test]
    fn zeros_written_ahead_are_cut_silently_and_a_torn_record_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment::file_name(0));
        let end = {
            let log = TopicLog::create(topic(), dir.path().to_owned()).unwrap();
            for p in [&b"one"[..], b"two", b"three"] {
                log.append(vec![new(p)], ROLL, false, &NO).unwrap();
            }
            log.segments()[0].1
        };
        let len = fs::metadata(&path).unwrap().len();
        assert!(
            len > end && len <= end + segment::PREALLOCATE,
            "zeros ahead: {len}"
        );
        let (log, recovered) = reopen(dir.path());
        assert_eq!(recovered.truncated_bytes, 0);
        assert_eq!(all(&log), ["one", "two", "three"]);
        assert_eq!(fs::metadata(&path).unwrap().len(), end, "cut at open");
        // The next append writes zeros ahead again, then a crash tears it.
        log.append(vec![new(b"torn")], ROLL, false, &NO).unwrap();
        drop(log);
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xab; 10], end).unwrap();
        file.write_all_at(&vec![0; (segment::PREALLOCATE + 40) as usize], end + 10)
            .unwrap();
        let (log, recovered) = reopen(dir.path());
        assert_eq!(recovered.truncated_bytes, 10, "the torn part only");
        assert_eq!(all(&log), ["one", "two", "three"]);
    }

    /// A segment closed with its zeros still ahead (its descriptor given
    /// back) rolls all the same: the zeros are cut through a descriptor
    /// opened for writing.
    #[test]
    fn a_closed_segment_with_zeros_ahead_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let log = TopicLog::create(topic(), dir.path().to_owned()).unwrap();
        let small = Rolling {
            bytes: 200,
            age: Duration::from_secs(3600),
        };
        // Full at once, so the next append rolls before it writes.
        log.append(vec![new(&[b'f'; 300])], small, false, &NO)
            .unwrap();
        log.state.lock().segments.last().unwrap().seal();
        for i in 0..10u8 {
            log.append(vec![new(&[b'a' + i; 40])], small, false, &NO)
                .unwrap();
        }
        let segments = log.segments();
        assert!(segments.len() > 1, "{segments:?}");
        for &(base, end) in &segments[..segments.len() - 1] {
            let path = dir.path().join(segment::file_name(base));
            assert_eq!(fs::metadata(path).unwrap().len(), end, "sealed whole");
        }
        assert_eq!(all(&log).len(), 11);
    }

    #[test]
    fn a_torn_last_record_is_cut_at_every_byte_position() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bounds, ids) = three(dir.path());
        let whole = fs::read(&path).unwrap();
        for cut in bounds[2]..bounds[3] {
            let scratch = tempfile::tempdir().unwrap();
            fs::write(
                scratch.path().join(segment::file_name(0)),
                &whole[..cut as usize],
            )
            .unwrap();
            let (log, recovered) = reopen(scratch.path());
            // Counted up to its last byte that is not zero: zeros at the
            // end are taken for those written ahead.
            let torn = &whole[bounds[2] as usize..cut as usize];
            let counted = torn.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            assert_eq!(recovered.truncated_bytes, counted as u64, "cut at {cut}");
            assert_eq!(all(&log), ["first", "second"], "cut at {cut}");
            assert_eq!(log.bounds(), (0, 2));
            // The next append takes the next offset, with the same ids.
            let (m, _) = log.append(vec![new(b"again")], ROLL, false, &NO).unwrap();
            assert_eq!(m[0].offset(), 2);
            assert_eq!(m[0].id()[..16], ids[0][..16]);
            let (log, recovered) = reopen(scratch.path());
            assert_eq!(recovered, Recovered::default());
            assert_eq!(all(&log), ["first", "second", "again"]);
        }
    }

    #[test]
    fn a_corrupt_byte_anywhere_in_the_last_record_cuts_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bounds, _) = three(dir.path());
        let whole = fs::read(&path).unwrap();
        for at in bounds[2]..bounds[3] {
            let scratch = tempfile::tempdir().unwrap();
            let mut bytes = whole.clone();
            bytes[at as usize] ^= 0x5a;
            fs::write(scratch.path().join(segment::file_name(0)), &bytes).unwrap();
            let (log, recovered) = reopen(scratch.path());
            assert_eq!(
                recovered.truncated_bytes,
                bounds[3] - bounds[2],
                "byte {at}"
            );
            assert_eq!(all(&log), ["first", "second"], "byte {at}");
        }
    }

    #[test]
    fn garbage_after_whole_records_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bounds, _) = three(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        fs::write(&path, &bytes).unwrap();
        let (log, recovered) = reopen(dir.path());
        assert_eq!(recovered.truncated_bytes, 7);
        assert_eq!(all(&log).len(), 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), bounds[3]);
    }

    #[test]
    fn segments_roll_reads_cross_them_and_retention_drops_whole_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = TopicLog::create(topic(), dir.path().to_owned()).unwrap();
        let small = Rolling {
            bytes: 200,
            age: Duration::from_secs(3600),
        };
        for i in 0..20u32 {
            log.append(
                vec![new(format!("message {i:02}").as_bytes())],
                small,
                false,
                &NO,
            )
            .unwrap();
        }
        let segments = log.segments();
        assert!(segments.len() > 3, "{segments:?}");
        // Only the newest segment holds an open file.
        let open_here = || {
            fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.starts_with(dir.path()))
                .count()
        };
        assert_eq!(open_here(), 1);
        // An idle topic gives back even that one; the next append opens
        // it again.
        log.state
            .lock()
            .segments
            .last()
            .unwrap()
            .newest_ms
            .store(1, Ordering::Relaxed);
        // Only the newest has zeros written ahead; sealed ones hold none.
        let lengths = |log: &TopicLog| -> Vec<(u64, u64)> {
            log.segments()
                .iter()
                .map(|&(base, end)| {
                    let path = dir.path().join(segment::file_name(base));
                    (fs::metadata(path).unwrap().len(), end)
                })
                .collect()
        };
        let before = lengths(&log);
        let (newest, sealed) = before.split_last().unwrap();
        assert!(sealed.iter().all(|(len, end)| len == end), "{before:?}");
        assert!(newest.0 > newest.1, "{before:?}");
        log.sweep(Duration::from_secs(3600), u64::MAX, &NO).unwrap();
        assert_eq!(open_here(), 0);
        // Idle: its zeros go too.
        assert!(lengths(&log).iter().all(|(len, end)| len == end));
        log.append(vec![new(b"message 19b")], small, false, &NO)
            .unwrap();
        assert_eq!(open_here(), 1);
        // Reads start anywhere and cross segments, in order, bounded.
        let read = log.read(7, 5, usize::MAX).unwrap();
        let offsets: Vec<u64> = read.messages.iter().map(|m| m.offset()).collect();
        assert_eq!(offsets, [7, 8, 9, 10, 11]);
        assert_eq!(log.bounds().1, 21);
        assert_eq!(read.messages[0].payload().as_ref(), b"message 07");
        assert_eq!(
            read.messages[0].content_type().unwrap().as_bytes(),
            b"text/plain"
        );
        // Reopened: sealed segments are indexed on first read.
        drop(log);
        let (log, _) = reopen(dir.path());
        let read = log.read(13, 100, usize::MAX).unwrap();
        assert_eq!(read.messages.len(), 8);
        assert_eq!(read.messages[0].offset(), 13);
        // Retention by bytes keeps whole segments, never the newest.
        let removed = log.sweep(Duration::from_secs(3600), 300, &NO).unwrap();
        assert!(removed > 0);
        let (first, next) = log.bounds();
        assert!(first > 0 && next == 21, "{first} {next}");
        assert_eq!(
            log.read(0, 1, usize::MAX).unwrap().messages[0].offset(),
            first
        );
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, log.segments().len());
        // Retention by age takes everything but an empty newest segment;
        // offsets go on.
        std::thread::sleep(Duration::from_millis(20));
        log.sweep(Duration::from_millis(1), u64::MAX, &NO).unwrap();
        assert_eq!(log.bounds(), (21, 21));
        assert!(log.read(0, 10, usize::MAX).unwrap().messages.is_empty());
        let (m, _) = log.append(vec![new(b"later")], small, false, &NO).unwrap();
        assert_eq!(m[0].offset(), 21);
        drop(log);
        let (log, _) = reopen(dir.path());
        assert_eq!(log.bounds(), (21, 22));
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = three(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[6] = 99;
        fs::write(&path, &bytes).unwrap();
        match TopicLog::open(topic(), dir.path().to_owned(), None) {
            Err(StoreError::Format { found, .. }) => assert!(found.contains("99"), "{found}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// A log whose only segment is in format 1 (an older build's): its
    /// records read with no event type, the next append starts a segment
    /// in this format, and both read back, also after a restart. An empty
    /// old segment is replaced, not followed.
    #[test]
    fn an_old_format_segment_is_read_and_the_next_append_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            base: 0,
            prefix: "0123456789ab".into(),
            version: 1,
        };
        let mut bytes = encode_header(&header).to_vec();
        segment::encode_record_v1(&mut bytes, 0, now_ms(), b"text/plain", b"old 0");
        segment::encode_record_v1(&mut bytes, 1, now_ms(), b"", b"old 1");
        fs::write(dir.path().join(segment::file_name(0)), &bytes).unwrap();

        let (log, recovered) = reopen(dir.path());
        assert_eq!(recovered.truncated_bytes, 0);
        let mut typed = new(b"new 2");
        typed.event_type = Some(broker_core::EventType::new("invoice.paid").unwrap());
        let trace = broker_core::TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("congo=t61rcWkgMzE"),
        );
        typed.trace = trace.clone();
        let (m, _) = log.append(vec![typed], ROLL, false, &NO).unwrap();
        assert_eq!(m[0].id(), message_id("0123456789ab", 2));
        assert_eq!(log.segments().len(), 2, "a new segment for the new format");
        for log in [log, reopen(dir.path()).0] {
            let read = log.read(0, 10, usize::MAX).unwrap();
            let got: Vec<_> = read
                .messages
                .iter()
                .map(|m| (m.payload().clone(), m.event_type().map(|t| t.to_string())))
                .collect();
            assert_eq!(
                got,
                vec![
                    (Bytes::from("old 0"), None),
                    (Bytes::from("old 1"), None),
                    (Bytes::from("new 2"), Some("invoice.paid".to_owned())),
                ]
            );
            assert_eq!(read.messages[0].content_type().unwrap(), "text/plain");
            assert_eq!(read.messages[1].content_type(), None);
            let traces: Vec<_> = read.messages.iter().map(|m| m.trace().cloned()).collect();
            assert_eq!(traces, [None, None, trace.clone()], "kept in format 4");
        }

        // An empty segment of the old format: replaced in place.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(segment::file_name(0)),
            encode_header(&header),
        )
        .unwrap();
        let (log, _) = reopen(dir.path());
        log.append(vec![new(b"first")], ROLL, false, &NO).unwrap();
        assert_eq!(log.segments().len(), 1);
        let read = reopen(dir.path()).0.read(0, 10, usize::MAX).unwrap();
        assert_eq!(read.messages.len(), 1);
        assert_eq!(read.messages[0].id(), message_id("0123456789ab", 0));
    }

    /// A crash right after a roll created the newest segment, before its
    /// header reached the disk: the header is written again and the log
    /// goes on from its base, the older segments kept, ids and all.
    #[test]
    fn a_torn_header_of_the_newest_segment_keeps_the_segments_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = TopicLog::create(topic(), dir.path().to_owned()).unwrap();
        let tiny = Rolling {
            bytes: 64,
            age: Duration::from_secs(3600),
        };
        let mut ids = Vec::new();
        for n in 0..4 {
            let (m, _) = log
                .append(vec![new(format!("m{n}").as_bytes())], tiny, false, &NO)
                .unwrap();
            ids.push(m[0].id().to_owned());
        }
        // The next append rolls first: a fifth segment, empty.
        log.append(vec![new(b"m4")], tiny, false, &NO).unwrap();
        let newest = *log.segments().last().unwrap();
        assert_eq!(newest.0, 4, "{:?}", log.segments());
        drop(log);
        let path = dir.path().join(segment::file_name(newest.0));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10)
            .unwrap();

        let (log, _) = reopen(dir.path());
        let read = log.read(0, 10, usize::MAX).unwrap();
        let got: Vec<&str> = read.messages.iter().map(|m| m.id()).collect();
        assert_eq!(got, ids, "the older segments are all there");
        let (m, _) = log.append(vec![new(b"again")], ROLL, false, &NO).unwrap();
        assert_eq!(m[0].offset(), 4);
        assert_eq!(
            m[0].id()[..16],
            ids[0][..16],
            "the same log, the same prefix"
        );
    }

    /// At open, a keyed log's keys are read back newest segment first,
    /// and no further than the table keeps: the newest keys are answered,
    /// the older ones are not remembered.
    #[test]
    fn keys_are_read_back_newest_first_up_to_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let limits = broker_core::IdempotencyLimits {
            max_keys: 2,
            ..broker_core::IdempotencyLimits::default()
        };
        let keys = KeyTable::new(limits, MemoryBudget::new(1 << 20));
        let log = TopicLog::create(topic(), dir.path().to_owned()).unwrap();
        let tiny = Rolling {
            bytes: 64,
            age: Duration::from_secs(3600),
        };
        let keyed = |n: u64| NewMessage {
            idempotency: Some(Keyed {
                key: IdempotencyKey::new(&format!("k{n}")).unwrap(),
                fingerprint: n,
                subscribers: 1,
            }),
            ..new(b"x")
        };
        for n in 0..5 {
            log.append_keyed(vec![keyed(n)], tiny, false, &NO, &keys)
                .unwrap();
        }
        assert_eq!(log.segments().len(), 5);
        drop(log);
        let keys = KeyTable::new(limits, MemoryBudget::new(1 << 20));
        let (log, _) = TopicLog::open(topic(), dir.path().to_owned(), Some(&keys)).unwrap();
        assert_eq!(keys.len(), 2);
        for (n, replayed) in [(4, true), (3, true), (2, false)] {
            let (got, _) = log
                .append_keyed(vec![keyed(n)], ROLL, false, &NO, &keys)
                .unwrap();
            assert_eq!(got[0].new_message().is_none(), replayed, "k{n}");
        }
    }

    #[test]
    fn unsynced_appends_are_not_read_until_synced() {
        let dir = tempfile::tempdir().unwrap();
        let log = TopicLog::create(topic(), dir.path().to_owned()).unwrap();
        let (_, next) = log
            .append(vec![new(b"a"), new(b"b")], ROLL, true, &NO)
            .unwrap();
        assert_eq!(next, 2);
        assert_eq!(log.bounds(), (0, 0));
        assert!(log.read(0, 10, usize::MAX).unwrap().messages.is_empty());
        log.sync().unwrap();
        assert_eq!(log.bounds(), (0, 2));
        assert_eq!(all(&log), ["a", "b"]);
    }
}
