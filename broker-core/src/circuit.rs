//! A subscriber's circuit breaker state, as a notifier reports it
//! ([`Notifier::circuit`](crate::Notifier::circuit)) and the API shows it.

use serde::Serialize;

/// A subscriber's circuit, as the topic detail and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    /// Attempts go out as usual (also when no worker ever ran).
    Closed,
    /// Nothing is attempted until the open time ends.
    Open,
    /// One attempt at a time, the probe.
    HalfOpen,
}

impl Circuit {
    /// The name the API gives it: `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}
