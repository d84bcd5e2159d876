//! Retries for subscribers that opt in: exponential backoff with jitter,
//! `Retry-After` honoured, and which failures are worth another attempt.

use std::time::{Duration, SystemTime};

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
/// `attempts`-th attempt (1-based) of at most `max_attempts`: `None` when
/// this was the last one (delivered, refused, a failure not worth a retry,
/// or no attempt left). A `Retry-After` is honoured, capped at
/// `backoff.max`; otherwise the wait is [`Backoff::delay`] with `unit` as
/// its random number.
pub(crate) fn next_wait(
    result: Attempt,
    attempts: u32,
    max_attempts: u32,
    backoff: Backoff,
    unit: f64,
) -> Option<Duration> {
    let Attempt::Failed {
        retryable: true,
        retry_after,
    } = result
    else {
        return None;
    };
    if attempts >= max_attempts {
        return None;
    }
    Some(
        retry_after
            .map(|after| after.min(backoff.max))
            .unwrap_or_else(|| backoff.delay(attempts, unit)),
    )
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

    fn fail(retry_after: Option<u64>) -> Attempt {
        Attempt::Failed {
            retryable: true,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn retries_back_off_until_the_last_attempt() {
        for attempts in 1..5 {
            let wait = next_wait(fail(None), attempts, 5, BACKOFF, 0.5).unwrap();
            let full = Duration::from_secs(1 << (attempts - 1));
            assert!(
                wait > full / 2 && wait < full,
                "after attempt {attempts}: {wait:?}"
            );
        }
        assert_eq!(next_wait(fail(None), 5, 5, BACKOFF, 0.5), None);
        assert_eq!(next_wait(fail(None), 1, 1, BACKOFF, 0.5), None);
    }

    #[test]
    fn honours_retry_after_capped_at_the_maximum() {
        assert_eq!(
            next_wait(fail(Some(20)), 1, 3, BACKOFF, 0.5),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            next_wait(fail(Some(3600)), 1, 3, BACKOFF, 0.5),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn delivered_refused_and_final_failures_are_not_retried() {
        let final_failure = Attempt::Failed {
            retryable: false,
            retry_after: None,
        };
        for result in [Attempt::Delivered, Attempt::Refused, final_failure] {
            assert_eq!(next_wait(result, 1, 5, BACKOFF, 0.5), None, "{result:?}");
        }
    }
}
