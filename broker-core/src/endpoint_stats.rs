//! A subscriber's endpoint stats: attempts that succeeded and failed, and
//! their latency, over the last 5 minutes, hour and 24 hours.
//!
//! Kept in time buckets: one a minute for the last hour, one a quarter
//! of an hour for the last day, each with its counts and a latency
//! histogram of 32 log-spaced bins (two a power of two, from 1 ms
//! to 46 s; beyond is the last). A bucket is made only for a period with
//! attempts, so a subscriber holds at most 156 of them, about 21 KiB, and
//! an idle one none. The 24-hour window is whole quarters: it may reach
//! up to 15 minutes further back.
//!
//! Why not a histogram crate: HdrHistogram's smallest useful histogram is
//! some kilobytes, times 156 buckets per subscriber; quantiles within a
//! bin's width (about ±20 %) are what a dashboard needs here.

use std::{
    collections::VecDeque,
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;

/// Latency bins per bucket.
const BINS: usize = 32;

const MINUTES: u64 = 60;
const QUARTERS: u64 = 96;

/// One window's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Attempts the endpoint took (2xx).
    pub succeeded: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// The median latency, ms (within a bin's width); none without
    /// attempts.
    pub p50_ms: Option<u64>,
    /// The 99th percentile latency, ms.
    pub p99_ms: Option<u64>,
}

/// The three windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsWindows {
    /// The last 5 minutes.
    pub last_5m: Window,
    /// The last hour.
    pub last_1h: Window,
    /// The last 24 hours.
    pub last_24h: Window,
}

#[derive(Debug, Clone)]
struct Bucket {
    /// The period's number (unix minutes, or quarter hours).
    key: u64,
    succeeded: u32,
    failed: u32,
    latency: [u32; BINS],
}

impl Bucket {
    fn new(key: u64) -> Self {
        Bucket {
            key,
            succeeded: 0,
            failed: 0,
            latency: [0; BINS],
        }
    }
}

/// The bin of a latency: `floor(2 log2(ms + 1))`, the last for anything
/// longer.
fn bin(ms: u64) -> usize {
    let x = (ms + 1) as f64;
    ((2.0 * x.log2()) as usize).min(BINS - 1)
}

/// A bin's middle, ms.
fn middle(bin: usize) -> u64 {
    (2f64.powf((bin as f64 + 0.5) / 2.0) - 1.0).round() as u64
}

/// Bucketed attempts, appended in time order, older ones expired.
#[derive(Debug, Default)]
struct Series {
    buckets: VecDeque<Bucket>,
}

impl Series {
    fn observe(&mut self, key: u64, span: u64, succeeded: bool, ms: u64) {
        let newest = self.buckets.back().map_or(key, |b| b.key.max(key));
        while self.buckets.front().is_some_and(|b| b.key + span <= newest) {
            self.buckets.pop_front();
        }
        if key + span <= newest {
            return; // Older than the series keeps.
        }
        let at = match self.buckets.iter().rposition(|b| b.key <= key) {
            Some(i) if self.buckets[i].key == key => i,
            Some(i) => {
                self.buckets.insert(i + 1, Bucket::new(key));
                i + 1
            }
            None => {
                self.buckets.push_front(Bucket::new(key));
                0
            }
        };
        let b = &mut self.buckets[at];
        if succeeded {
            b.succeeded += 1;
        } else {
            b.failed += 1;
        }
        b.latency[bin(ms)] += 1;
    }

    /// The window of the buckets whose key is after `from`.
    fn window(&self, from: u64) -> Window {
        let mut w = Window::default();
        let mut latency = [0u64; BINS];
        for b in self.buckets.iter().filter(|b| b.key > from) {
            w.succeeded += u64::from(b.succeeded);
            w.failed += u64::from(b.failed);
            for (sum, n) in latency.iter_mut().zip(b.latency) {
                *sum += u64::from(n);
            }
        }
        let total = w.succeeded + w.failed;
        let quantile = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            latency.iter().enumerate().find_map(|(i, n)| {
                seen += n;
                (seen >= rank).then(|| middle(i))
            })
        };
        if total > 0 {
            w.p50_ms = quantile(0.5);
            w.p99_ms = quantile(0.99);
        }
        w
    }
}

/// A subscriber's endpoint stats.
#[derive(Debug, Default)]
pub struct EndpointStats {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    minutes: Series,
    quarters: Series,
}

fn minute(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl EndpointStats {
    /// Counts an attempt made at `at` that took `ms`.
    pub fn observe(&self, at: SystemTime, succeeded: bool, ms: u64) {
        let m = minute(at);
        let mut inner = self.inner.lock();
        inner.minutes.observe(m, MINUTES, succeeded, ms);
        inner.quarters.observe(m / 15, QUARTERS, succeeded, ms);
    }

    /// The windows as of `now`.
    pub fn windows(&self, now: SystemTime) -> StatsWindows {
        let m = minute(now);
        let inner = self.inner.lock();
        StatsWindows {
            last_5m: inner.minutes.window(m.saturating_sub(5)),
            last_1h: inner.minutes.window(m.saturating_sub(MINUTES)),
            last_24h: inner.quarters.window((m / 15).saturating_sub(QUARTERS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn windows_count_what_is_in_them_and_estimate_quantiles() {
        let stats = EndpointStats::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_795_430_227);
        let ago = |mins: u64| now - Duration::from_secs(60 * mins);
        for _ in 0..98 {
            stats.observe(ago(1), true, 10);
        }
        stats.observe(ago(2), false, 1_000);
        stats.observe(ago(2), false, 1_000);
        stats.observe(ago(30), true, 100);
        stats.observe(ago(600), false, 5);
        stats.observe(ago(2_000), true, 5); // Beyond a day: gone.
        let w = stats.windows(now);
        assert_eq!((w.last_5m.succeeded, w.last_5m.failed), (98, 2));
        assert_eq!((w.last_1h.succeeded, w.last_1h.failed), (99, 2));
        assert_eq!((w.last_24h.succeeded, w.last_24h.failed), (99, 3));
        let p50 = w.last_5m.p50_ms.unwrap();
        assert!((8..=12).contains(&p50), "{p50}");
        let p99 = w.last_5m.p99_ms.unwrap();
        assert!((800..=1_200).contains(&p99), "{p99}");
        let idle = EndpointStats::default().windows(now);
        assert_eq!(idle.last_24h, Window::default());
        assert_eq!(stats.inner.lock().minutes.buckets.len(), 3, "the hour's");
    }

    #[test]
    fn bins_cover_one_ms_to_tens_of_seconds() {
        assert_eq!(bin(0), 0);
        assert!(bin(1) < bin(3));
        assert_eq!(bin(10_000_000), BINS - 1);
        for ms in [1, 10, 100, 1_000, 10_000] {
            let mid = middle(bin(ms)) as f64;
            assert!((mid / ms as f64 - 1.0).abs() < 0.45, "{ms}: {mid}");
        }
    }
}
