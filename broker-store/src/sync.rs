//! The store's two threads: the syncer (group commit) and the sweeper
//! (cursors every 100 ms, retention).
//!
//! The syncer waits for logs with unsynced appends, takes all of them at
//! once, and fsyncs each: every append written before an fsync starts is
//! covered by it, so N concurrent publishers share one fsync rather than
//! paying one each. With [`Fsync::Every`](crate::Fsync::Every) it wakes on
//! its period instead of on each request.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use parking_lot::{Condvar, Mutex};

use crate::{log::TopicLog, Fsync, Shared};

/// Logs waiting for an fsync. The queue holds each log at most once (its
/// `dirty` flag), so it is bounded by the number of topics.
#[derive(Default)]
pub(crate) struct Syncer {
    queue: Mutex<Vec<Arc<TopicLog>>>,
    wake: Condvar,
}

impl Syncer {
    /// Queues `log` for the next fsync; `now` wakes the syncer at once.
    pub(crate) fn request(&self, log: &Arc<TopicLog>, now: bool) {
        if !log.dirty.swap(true, Ordering::AcqRel) {
            self.queue.lock().push(log.clone());
        }
        if now {
            self.wake.notify_one();
        }
    }
}

/// The running threads; stopped by [`Background::stop`].
pub(crate) struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    stopping: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Background {
    pub(crate) fn start(shared: &Arc<Shared>) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if shared.options.fsync != Fsync::Never {
            let (shared, stopping) = (shared.clone(), stopping.clone());
            threads.push(
                thread::Builder::new()
                    .name("broker-fsync".into())
                    .spawn(move || syncer(&shared, &stopping))
                    .expect("spawn the fsync thread"),
            );
        }
        {
            let (shared, stop) = (shared.clone(), stop.clone());
            threads.push(
                thread::Builder::new()
                    .name("broker-retention".into())
                    .spawn(move || sweeper(&shared, &stop))
                    .expect("spawn the retention thread"),
            );
        }
        Background {
            stop,
            stopping,
            threads,
        }
    }

    pub(crate) fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn syncer(shared: &Shared, stopping: &AtomicBool) {
    let syncer = &shared.syncer;
    let period = match shared.options.fsync {
        Fsync::Every(d) => Some(d),
        _ => None,
    };
    loop {
        let batch = {
            let mut queue = syncer.queue.lock();
            match period {
                Some(d) => {
                    syncer.wake.wait_for(&mut queue, d);
                }
                None => {
                    while queue.is_empty() && !stopping.load(Ordering::Acquire) {
                        // Bounded, so that a stop is seen without a wake-up.
                        syncer.wake.wait_for(&mut queue, Duration::from_millis(100));
                    }
                }
            }
            std::mem::take(&mut *queue)
        };
        for log in batch {
            log.dirty.store(false, Ordering::Release);
            if let Err(e) = log.sync() {
                tracing::error!(topic = %log.name, error = %e, "fsync failed; the topic takes no more publishes");
            }
        }
        if stopping.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Writes moved cursors every [`CURSOR_FLUSH`](crate::CURSOR_FLUSH), and
/// applies retention every quarter of it (between 100 ms and a minute).
fn sweeper(shared: &Shared, stop: &(Mutex<bool>, Condvar)) {
    let retention = shared.options.retention;
    let every = (retention.age / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut last_sweep = std::time::Instant::now();
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, crate::CURSOR_FLUSH);
            }
            if *stopped {
                return;
            }
        }
        if let Err(e) = shared.flush_cursors() {
            tracing::error!(error = %e, "writing cursors failed");
        }
        if last_sweep.elapsed() < every {
            continue;
        }
        last_sweep = std::time::Instant::now();
        for log in shared.all_logs() {
            if let Err(e) = log.sweep(retention.age, retention.bytes_per_topic, &shared.cache) {
                tracing::error!(topic = %log.name, error = %e, "retention failed");
            }
        }
    }
}
