//! Retry policies and the duration syntax of the API and the flags.

use std::{sync::Arc, time::Duration};

/// The most waits a retry schedule may list.
pub const MAX_SCHEDULE: usize = 20;
/// The longest wait of a retry schedule.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How a subscriber's failed deliveries are attempted again.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use broker_core::Retry;
///
/// assert_eq!(Retry::Attempts(1).max_attempts(), 1);
/// let standard = Retry::standard();
/// assert_eq!(standard.max_attempts(), 8);
/// assert_eq!(standard.longest_wait(), Some(Duration::from_secs(10 * 3600)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// This many attempts in all, with exponential backoff between them
    /// (1: no retry, the spec's fire-and-forget).
    Attempts(u32),
    /// The waits between attempts, in order: one attempt more than waits.
    Schedule(Arc<[Duration]>),
}

impl Retry {
    /// The Standard Webhooks schedule (as Svix): attempts at once, then
    /// after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h: eight attempts
    /// over about 27.6 hours.
    pub fn standard() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Retry::Schedule(Arc::from(
            &[
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ][..],
        ))
    }

    /// Attempts per delivery in all.
    pub fn max_attempts(&self) -> u32 {
        match self {
            Retry::Attempts(n) => *n,
            Retry::Schedule(waits) => waits.len() as u32 + 1,
        }
    }

    /// The schedule's longest wait (`None` for [`Retry::Attempts`]).
    pub fn longest_wait(&self) -> Option<Duration> {
        match self {
            Retry::Attempts(_) => None,
            Retry::Schedule(waits) => waits.iter().max().copied(),
        }
    }
}

/// Parses a duration as the API and the flags write them: a whole number
/// with `ms`, `s`, `m`, `h` or `d` (a bare number is seconds).
///
/// # Errors
///
/// A sentence saying what is wrong, when `text` is not such a duration.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use broker_core::parse_duration;
///
/// assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("1.5h").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        "d" => Ok(Duration::from_secs(n.saturating_mul(86_400))),
        other => Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    }
}

/// Writes a duration in the largest unit that is exact: `5s`, `30m`,
/// `2h`, `1d`, `1500ms`. [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s != 0 && s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_refuse_the_rest() {
        for text in ["5s", "5m", "30m", "2h", "10h", "1d", "1500ms", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        for bad in ["", "s", "1w", "-1s", "1.5s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
