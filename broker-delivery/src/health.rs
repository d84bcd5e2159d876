//! An endpoint's health: the circuit breaker, and since when every
//! attempt has failed (what `disable_after` goes by).
//!
//! After `circuit_after` failed attempts in a row the circuit opens for
//! `circuit_open_for`: nothing is attempted. Then it is half open: one
//! attempt at a time, the probe. A delivered attempt closes it; a failed
//! probe opens it again for twice as long, up to [`OPEN_AT_MOST`]. Only a
//! probe's failure doubles it: attempts that were already in flight when
//! the circuit opened (after a restart, a page of retries due at once)
//! fail together without each counting as a failed probe. A person's
//! action (redrive, replay, enable) closes it: that is the best probe.

use std::{
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use broker_core::Circuit;
use tokio::time::Instant;

/// The longest a circuit stays open (the first opening lasts
/// `DeliveryConfig::circuit_open_for`, each failed probe doubles it).
pub(crate) const OPEN_AT_MOST: Duration = Duration::from_secs(300);

/// A [`Circuit`] that a worker writes and the API reads.
#[derive(Default)]
pub(crate) struct CircuitCell(AtomicU8);

impl CircuitCell {
    pub(crate) fn set(&self, circuit: Circuit) {
        self.0.store(circuit as u8, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Circuit {
        match self.0.load(Ordering::Relaxed) {
            x if x == Circuit::Open as u8 => Circuit::Open,
            x if x == Circuit::HalfOpen as u8 => Circuit::HalfOpen,
            _ => Circuit::Closed,
        }
    }
}

/// How an endpoint has been answering. Outlives a worker run (kept in the
/// subscriber's notifier slot).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Health {
    /// Since when every attempt has failed (none delivered since).
    pub(crate) failing_since: Option<Instant>,
    /// Failed attempts in a row.
    failures: u32,
    /// While the circuit is open: until when; then one probe at a time.
    open_until: Option<Instant>,
    /// How long it opens next.
    open_for: Duration,
    /// The first opening's length.
    base: Duration,
}

impl Health {
    /// A healthy endpoint whose circuit opens for `open_for` at first.
    pub(crate) fn new(open_for: Duration) -> Self {
        Health {
            failing_since: None,
            failures: 0,
            open_until: None,
            open_for,
            base: open_for,
        }
    }

    /// The circuit at `now`.
    pub(crate) fn circuit(&self, now: Instant) -> Circuit {
        match self.open_until {
            None => Circuit::Closed,
            Some(until) if now < until => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
        }
    }

    /// Until when nothing is attempted, while the circuit is open.
    pub(crate) fn open_until(&self, now: Instant) -> Option<Instant> {
        self.open_until.filter(|&until| now < until)
    }

    /// How many attempts may be in flight at `now`, of `max`.
    pub(crate) fn limit(&self, now: Instant, max: usize) -> usize {
        match self.circuit(now) {
            Circuit::Closed => max,
            Circuit::Open => 0,
            Circuit::HalfOpen => 1,
        }
    }

    /// An attempt was delivered: healthy again.
    pub(crate) fn delivered(&mut self) {
        *self = Health::new(self.base);
    }

    /// An attempt failed; `probe` when it went out while the circuit was
    /// half open. Returns whether this failure opened the circuit.
    pub(crate) fn failed(&mut self, probe: bool, after: u32, now: Instant) -> bool {
        self.failures += 1;
        self.failing_since.get_or_insert(now);
        if self.open_until.is_some() {
            if probe {
                // A failed probe: open again, for longer.
                self.open_for = (self.open_for * 2).min(OPEN_AT_MOST);
                self.open_until = Some(now + self.open_for);
            }
            // Otherwise it was in flight when the circuit opened: the
            // opening already counts it.
            return false;
        }
        if after > 0 && self.failures >= after {
            self.open_until = Some(now + self.open_for);
            return true;
        }
        false
    }

    /// Whether the circuit is closed (not open, nor half open).
    pub(crate) fn is_closed(&self) -> bool {
        self.open_until.is_none()
    }

    /// Failed attempts in a row.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A person asked for deliveries (redrive, replay, enable): the
    /// circuit closes and attempts go out at once. Since when it has been
    /// failing is kept (`disable_after` goes by attempts, not by people).
    pub(crate) fn close(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.open_for = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_the_threshold_and_stays_closed_below_it() {
        let now = Instant::now();
        let mut health = Health::new(OPEN);
        for _ in 0..4 {
            assert!(!health.failed(false, 5, now));
        }
        assert_eq!(health.circuit(now), Circuit::Closed);
        assert_eq!(health.limit(now, 8), 8);
        assert!(health.failed(false, 5, now));
        assert_eq!(health.circuit(now), Circuit::Open);
        assert_eq!(health.limit(now, 8), 0);
        assert_eq!(health.open_until(now), Some(now + OPEN));
        assert_eq!(health.circuit(now + OPEN), Circuit::HalfOpen);
        assert_eq!(health.limit(now + OPEN, 8), 1);
    }

    #[test]
    fn failures_in_flight_when_it_opened_do_not_lengthen_it() {
        let now = Instant::now();
        let mut health = Health::new(OPEN);
        for _ in 0..5 {
            health.failed(false, 5, now);
        }
        // Three more of the same page fail a moment later.
        for _ in 0..3 {
            assert!(!health.failed(false, 5, now + Duration::from_millis(5)));
        }
        assert_eq!(health.open_until(now), Some(now + OPEN), "not doubled");
        assert_eq!(health.failures(), 8);
    }

    #[test]
    fn each_failed_probe_doubles_it_up_to_the_cap() {
        let now = Instant::now();
        let mut health = Health::new(OPEN);
        for _ in 0..5 {
            health.failed(false, 5, now);
        }
        let mut at = now + OPEN;
        let mut expect = OPEN;
        for _ in 0..6 {
            assert_eq!(health.circuit(at), Circuit::HalfOpen);
            health.failed(true, 5, at);
            expect = (expect * 2).min(OPEN_AT_MOST);
            assert_eq!(health.open_until(at), Some(at + expect));
            at += expect;
        }
        assert_eq!(expect, OPEN_AT_MOST);
    }

    #[test]
    fn a_delivery_or_a_person_closes_it() {
        let now = Instant::now();
        let mut health = Health::new(OPEN);
        for _ in 0..5 {
            health.failed(false, 5, now);
        }
        health.close();
        assert_eq!(health.circuit(now), Circuit::Closed);
        assert!(health.failing_since.is_some(), "still failing since then");
        for _ in 0..4 {
            assert!(!health.failed(false, 5, now));
        }
        assert!(health.failed(false, 5, now), "five more open it again");
        health.delivered();
        assert_eq!(health.circuit(now), Circuit::Closed);
        assert!(health.failing_since.is_none());
        assert_eq!(health.failures(), 0);
    }

    #[test]
    fn zero_never_opens_it() {
        let now = Instant::now();
        let mut health = Health::new(OPEN);
        for _ in 0..100 {
            assert!(!health.failed(false, 0, now));
        }
        assert_eq!(health.circuit(now), Circuit::Closed);
    }
}
