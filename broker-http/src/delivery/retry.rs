//! Retries for subscribers that opt in: exponential backoff with jitter,
//! `Retry-After` honoured, and which failures are worth another attempt.

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

use http::{header, HeaderMap, StatusCode};

/// The result of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// 2xx.
    Delivered,
    /// The destination policy refused the address: never retried.
    Refused,
    /// Anything else; `retryable` for timeouts, connection errors, 408,
    /// 429 and 5xx; `retry_after` from a 429 or 503 that said when.
    Failed {
        retryable: bool,
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    /// Classifies an HTTP answer.
    pub(crate) fn from_response(status: StatusCode, headers: &HeaderMap) -> Self {
        if status.is_success() {
            return Attempt::Delivered;
        }
        let retryable = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(headers, SystemTime::now())
            }
            _ => None,
        };
        Attempt::Failed {
            retryable,
            retry_after,
        }
    }
}

/// The final outcome of a delivery, and how many attempts were retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finished {
    pub(crate) last: Attempt,
    pub(crate) retries: u32,
}

/// Backoff timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// The first retry waits between `base / 2` and `base`.
    pub(crate) base: Duration,
    /// No wait is longer, whatever `Retry-After` says.
    pub(crate) max: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (1-based): "equal jitter", a
    /// uniformly random point in the upper half of `base * 2^(retry-1)`,
    /// capped at `max`. `unit` is a random number in [0, 1).
    pub(crate) fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(20))
            .min(self.max);
        exp / 2 + exp.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }
}

/// Runs `attempt` up to `max_attempts` times, waiting between failures that
/// are worth a retry, while `still_wanted()` holds (a deregistered
/// subscriber is not retried).
pub(crate) async fn with_retries<F, Fut>(
    max_attempts: u32,
    backoff: Backoff,
    mut still_wanted: impl FnMut() -> bool,
    mut attempt: F,
) -> Finished
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut retries = 0;
    loop {
        let last = attempt().await;
        let Attempt::Failed {
            retryable: true,
            retry_after,
        } = last
        else {
            return Finished { last, retries };
        };
        if retries + 1 >= max_attempts || !still_wanted() {
            return Finished { last, retries };
        }
        retries += 1;
        let wait = retry_after
            .map(|after| after.min(backoff.max))
            .unwrap_or_else(|| backoff.delay(retries, fastrand::f64()));
        tokio::time::sleep(wait).await;
        if !still_wanted() {
            return Finished { last, retries };
        }
    }
}

/// A `Retry-After` header: delay-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    #[test]
    fn backoff_grows_exponentially_within_jitter_bounds() {
        for (retry, full) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (40, 30)] {
            let full = Duration::from_secs(full);
            assert_eq!(BACKOFF.delay(retry, 0.0), full / 2, "retry {retry}");
            assert_eq!(BACKOFF.delay(retry, 1.0), full, "retry {retry}");
            let mid = BACKOFF.delay(retry, 0.5);
            assert!(mid > full / 2 && mid < full);
        }
    }

    #[test]
    fn classifies_statuses() {
        let h = HeaderMap::new();
        let failed = |retryable| Attempt::Failed {
            retryable,
            retry_after: None,
        };
        for (status, want) in [
            (200, Attempt::Delivered),
            (204, Attempt::Delivered),
            (301, failed(false)),
            (400, failed(false)),
            (404, failed(false)),
            (410, failed(false)),
            (408, failed(true)),
            (429, failed(true)),
            (500, failed(true)),
            (503, failed(true)),
        ] {
            let got = Attempt::from_response(StatusCode::from_u16(status).unwrap(), &h);
            assert_eq!(got, want, "{status}");
        }
    }

    #[test]
    fn parses_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        h.insert(header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(42)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(42));
        h.insert(header::RETRY_AFTER, past.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    /// Runs `with_retries` over scripted attempt results and returns when
    /// each attempt started, relative to the first.
    async fn run(max_attempts: u32, script: Vec<Attempt>) -> (Finished, Vec<Duration>) {
        let start = Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut script = script.into_iter();
        let t = times.clone();
        let finished = with_retries(
            max_attempts,
            BACKOFF,
            || true,
            || {
                t.lock().unwrap().push(start.elapsed());
                let next = script.next().expect("no more attempts were scripted");
                async move { next }
            },
        )
        .await;
        let times = times.lock().unwrap().clone();
        (finished, times)
    }

    fn fail(retry_after: Option<u64>) -> Attempt {
        Attempt::Failed {
            retryable: true,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_delivered() {
        let (finished, times) = run(
            5,
            vec![fail(None), fail(None), fail(None), Attempt::Delivered],
        )
        .await;
        assert_eq!(
            finished,
            Finished {
                last: Attempt::Delivered,
                retries: 3
            }
        );
        assert_eq!(times.len(), 4);
        for (i, window) in times.windows(2).enumerate() {
            let gap = window[1] - window[0];
            let full = Duration::from_secs(1 << i);
            assert!(
                gap >= full / 2 && gap <= full,
                "retry {} waited {gap:?}",
                i + 1
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_capped_at_the_maximum() {
        let (finished, times) = run(3, vec![fail(Some(20)), fail(Some(3600)), fail(None)]).await;
        assert_eq!(finished.retries, 2);
        assert_eq!(finished.last, fail(None));
        assert_eq!(times[1] - times[0], Duration::from_secs(20));
        assert_eq!(times[2] - times[1], Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts_and_on_final_failures() {
        let (finished, times) = run(2, vec![fail(None), fail(None)]).await;
        assert_eq!((finished.retries, times.len()), (1, 2));

        let final_failure = Attempt::Failed {
            retryable: false,
            retry_after: None,
        };
        let (finished, times) = run(5, vec![final_failure]).await;
        assert_eq!((finished.retries, times.len()), (0, 1));

        let (finished, times) = run(5, vec![Attempt::Refused]).await;
        assert_eq!((finished.last, times.len()), (Attempt::Refused, 1));

        let (finished, times) = run(1, vec![fail(None)]).await;
        assert_eq!((finished.retries, times.len()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_no_longer_wanted() {
        let mut attempts = 0;
        let finished = with_retries(
            10,
            BACKOFF,
            || false,
            || {
                attempts += 1;
                async { fail(None) }
            },
        )
        .await;
        assert_eq!((finished.retries, attempts), (0, 1));
    }
}
