//! Pacing publishers while the broker runs out of CPU for its deliveries.
//!
//! Publishing is cheaper than delivering to many subscribers: under a
//! closed loop (publishers sending as fast as they are answered) the
//! publishes take the CPU the deliveries need, the log grows and the
//! deliveries fall behind for good. So a publish is answered a little
//! later (a bounded wait, never a refusal) while both hold:
//!
//! - the process is out of CPU: it used at least 85 % of the cores it may
//!   use over the last 100 ms (`/proc/self/stat`, measured by a probe
//!   task; a slow endpoint costs no CPU and never sets this);
//! - subscribers that are delivering (one delivered within the last
//!   second, circuit closed) are behind as a whole by more than
//!   [`DeliveryConfig::pace_after`](super::DeliveryConfig::pace_after)
//!   messages, each counting at most [`PER_SUBSCRIBER`]: one subscriber,
//!   however far behind, never paces anyone, and a hanging or failing one
//!   never counts.
//!
//! A paced publish waits until the backlog is back under the threshold,
//! at most [`DeliveryConfig::pace_at_most`](super::DeliveryConfig::pace_at_most).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// The most one subscriber's backlog counts for.
pub(crate) const PER_SUBSCRIBER: u64 = 1_024;
/// How often the probe measures the CPU used.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The share of its cores from which the process counts as saturated.
const SATURATED: f64 = 0.85;

#[derive(Debug)]
pub(crate) struct Pace {
    after: u64,
    at_most: Duration,
    /// The capped backlogs of the subscribers that are delivering.
    behind: AtomicU64,
    /// Set by the probe.
    saturated: AtomicBool,
    probing: AtomicBool,
    /// Wakes paced publishes when the backlog falls under the threshold.
    eased: Notify,
    /// Publishes paced so far.
    paced: AtomicU64,
}

impl Pace {
    pub(crate) fn new(after: u64, at_most: Duration) -> Self {
        Pace {
            after,
            at_most,
            behind: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            eased: Notify::new(),
            paced: AtomicU64::new(0),
        }
    }

    /// A worker's counted backlog went from `old` to `new`.
    pub(crate) fn moved(&self, old: u64, new: u64) {
        if new >= old {
            self.behind.fetch_add(new - old, Ordering::AcqRel);
        } else {
            let now = self.behind.fetch_sub(old - new, Ordering::AcqRel) - (old - new);
            if now <= self.after {
                self.eased.notify_waiters();
            }
        }
    }

    fn pressing(&self) -> bool {
        self.after > 0
            && self.saturated.load(Ordering::Acquire)
            && self.behind.load(Ordering::Acquire) > self.after
    }

    pub(crate) fn backlog(&self) -> u64 {
        self.behind.load(Ordering::Acquire)
    }

    /// Publishes paced so far.
    pub(crate) fn paced(&self) -> u64 {
        self.paced.load(Ordering::Relaxed)
    }

    /// Waits while pacing applies, at most `at_most`. Returns whether it
    /// waited.
    pub(crate) async fn wait(self: &Arc<Self>) -> bool {
        if self.after == 0 {
            return false;
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(Arc::downgrade(self)));
        }
        if !self.pressing() {
            return false;
        }
        self.paced.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.at_most;
        loop {
            let eased = self.eased.notified();
            tokio::pin!(eased);
            eased.as_mut().enable();
            if !self.pressing() {
                return true;
            }
            tokio::select! {
                _ = eased => {}
                _ = tokio::time::sleep_until(deadline) => return true,
            }
        }
    }
}

/// Measures the CPU the process uses, while the pace lives: saturated
/// when it uses at least 85 % of the cores it may use (`/proc/self/stat`;
/// where there is none, never saturated, so never paced).
async fn probe(pace: Weak<Pace>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut last = (std::time::Instant::now(), cpu_seconds());
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(pace) = pace.upgrade() else {
            return;
        };
        let now = (std::time::Instant::now(), cpu_seconds());
        let saturated = match (last.1, now.1) {
            (Some(before), Some(after)) => {
                let wall = now.0.duration_since(last.0).as_secs_f64();
                wall > 0.0 && (after - before) / wall >= SATURATED * cores
            }
            _ => false,
        };
        last = now;
        pace.saturated.store(saturated, Ordering::Release);
        if !saturated {
            pace.eased.notify_waiters();
        }
    }
}

/// The CPU time the process has used (user and system), from
/// `/proc/self/stat` (in clock ticks of 1/100 s, Linux's fixed `USER_HZ`).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command may hold spaces: the fields start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_only_while_saturated_and_behind() {
        let pace = Arc::new(Pace::new(100, Duration::from_secs(5)));
        // The test sets `saturated` itself: no probe.
        pace.probing.store(true, Ordering::Release);
        pace.moved(0, 150);
        // Behind, but the runtime has CPU to spare: no wait.
        assert!(!pace.wait().await);
        pace.saturated.store(true, Ordering::Release);
        let waiting = tokio::spawn({
            let pace = pace.clone();
            async move { pace.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The backlog falls under the threshold: the paced publish goes.
        pace.moved(150, 90);
        assert!(waiting.await.unwrap());
        assert_eq!(pace.paced(), 1);
        // Off entirely.
        let off = Arc::new(Pace::new(0, Duration::from_secs(5)));
        off.moved(0, 1_000_000);
        off.saturated.store(true, Ordering::Release);
        assert!(!off.wait().await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_publish_waits_at_most_its_bound() {
        let pace = Arc::new(Pace::new(10, Duration::from_millis(100)));
        pace.probing.store(true, Ordering::Release);
        pace.moved(0, 50);
        pace.saturated.store(true, Ordering::Release);
        let started = Instant::now();
        assert!(pace.wait().await);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_millis(200));
    }
}
