//! Retries for subscribers that opt in: exponential backoff with jitter,
//! `Retry-After` honoured, and which failures are worth another attempt.

use std::time::{Duration, SystemTime};

use broker_core::Retry;

use http::{header, HeaderMap, StatusCode};

/// The result of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// 2xx.
    Delivered,
    /// The destination policy refused the address: never retried.
    Refused,
    /// Anything else; `retryable` for timeouts, connection errors, 408,
    /// 429 and 5xx; `retry_after` from a 429 or 503 that said when;
    /// `status` when a response came, else `error` says what happened.
    Failed {
        retryable: bool,
        retry_after: Option<Duration>,
        status: Option<u16>,
        error: &'static str,
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
            status: Some(status.as_u16()),
            error: "the endpoint answered with an error status",
        }
    }
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

/// How long to wait before attempting again after `result`, the
/// `attempts`-th attempt (1-based) under `retry`: `None` when this was the
/// last one (delivered, refused, a failure not worth a retry, or no attempt
/// left).
///
/// - [`Retry::Attempts`]: [`Backoff::delay`], `unit` its random number; a
///   `Retry-After` is honoured up to `backoff.max`.
/// - [`Retry::Schedule`]: the schedule's wait ±20 % (`unit` picks where);
///   a `Retry-After` is honoured up to the schedule's longest wait.
pub(crate) fn next_wait(
    result: Attempt,
    attempts: u32,
    retry: &Retry,
    backoff: Backoff,
    unit: f64,
) -> Option<Duration> {
    let Attempt::Failed {
        retryable: true,
        retry_after,
        ..
    } = result
    else {
        return None;
    };
    if attempts >= retry.max_attempts() {
        return None;
    }
    let unit = unit.clamp(0.0, 1.0);
    Some(match retry {
        Retry::Attempts(_) => retry_after
            .map(|after| after.min(backoff.max))
            .unwrap_or_else(|| backoff.delay(attempts, unit)),
        Retry::Schedule(waits) => {
            let longest = waits.iter().max().copied().unwrap_or_default();
            retry_after
                .map(|after| after.min(longest))
                .unwrap_or_else(|| {
                    let wait = waits[attempts as usize - 1];
                    wait.mul_f64(0.8 + 0.4 * unit)
                })
        }
    })
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
        let failed = |retryable, status| Attempt::Failed {
            retryable,
            retry_after: None,
            status: Some(status),
            error: "the endpoint answered with an error status",
        };
        for (status, want) in [
            (200, Attempt::Delivered),
            (204, Attempt::Delivered),
            (301, failed(false, 301)),
            (400, failed(false, 400)),
            (404, failed(false, 404)),
            (410, failed(false, 410)),
            (408, failed(true, 408)),
            (429, failed(true, 429)),
            (500, failed(true, 500)),
            (503, failed(true, 503)),
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

    fn fail(retry_after: Option<u64>) -> Attempt {
        Attempt::Failed {
            retryable: true,
            retry_after: retry_after.map(Duration::from_secs),
            status: None,
            error: "connection failed",
        }
    }

    #[test]
    fn retries_back_off_until_the_last_attempt() {
        let five = Retry::Attempts(5);
        for attempts in 1..5 {
            let wait = next_wait(fail(None), attempts, &five, BACKOFF, 0.5).unwrap();
            let full = Duration::from_secs(1 << (attempts - 1));
            assert!(
                wait > full / 2 && wait < full,
                "after attempt {attempts}: {wait:?}"
            );
        }
        assert_eq!(next_wait(fail(None), 5, &five, BACKOFF, 0.5), None);
        let one = Retry::Attempts(1);
        assert_eq!(next_wait(fail(None), 1, &one, BACKOFF, 0.5), None);
    }

    #[test]
    fn a_schedule_waits_its_waits_within_twenty_percent() {
        let standard = Retry::standard();
        let Retry::Schedule(waits) = &standard else {
            unreachable!()
        };
        for (i, wait) in waits.iter().enumerate() {
            let attempts = i as u32 + 1;
            let low = next_wait(fail(None), attempts, &standard, BACKOFF, 0.0).unwrap();
            let high = next_wait(fail(None), attempts, &standard, BACKOFF, 1.0).unwrap();
            assert_eq!(low, wait.mul_f64(0.8), "after attempt {attempts}");
            assert_eq!(high, wait.mul_f64(1.2), "after attempt {attempts}");
        }
        assert_eq!(next_wait(fail(None), 8, &standard, BACKOFF, 0.5), None);
        // Retry-After: honoured up to the schedule's longest wait (10 h).
        assert_eq!(
            next_wait(fail(Some(7)), 1, &standard, BACKOFF, 0.5),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            next_wait(fail(Some(86_400)), 1, &standard, BACKOFF, 0.5),
            Some(Duration::from_secs(36_000))
        );
    }

    #[test]
    fn honours_retry_after_capped_at_the_maximum() {
        let three = Retry::Attempts(3);
        assert_eq!(
            next_wait(fail(Some(20)), 1, &three, BACKOFF, 0.5),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            next_wait(fail(Some(3600)), 1, &three, BACKOFF, 0.5),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn delivered_refused_and_final_failures_are_not_retried() {
        let final_failure = Attempt::Failed {
            retryable: false,
            retry_after: None,
            status: Some(404),
            error: "the endpoint answered with an error status",
        };
        for result in [Attempt::Delivered, Attempt::Refused, final_failure] {
            assert_eq!(
                next_wait(result, 1, &Retry::Attempts(5), BACKOFF, 0.5),
                None,
                "{result:?}"
            );
        }
    }
}
