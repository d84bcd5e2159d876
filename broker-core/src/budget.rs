//! One memory budget for the whole broker: the bytes of messages it holds.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// The bytes of messages the broker holds in memory, against one limit
/// (`--max-memory-bytes`): a cheap-to-clone handle every holder charges.
///
/// - The in-memory log ([`MemoryStore`](crate::MemoryStore)) charges what
///   it retains and evicts its oldest messages while the total is over the
///   limit; a durable store's tail cache does the same.
/// - Deliveries charge the messages they have read and have in flight, so
///   a message the log evicted while a hanging endpoint still holds its
///   request is counted, not hidden. A message both retained and in flight
///   counts twice: the budget errs on the side of holding less.
/// - [`Broker::publish`](crate::Broker::publish) refuses with
///   [`Error::Overloaded`](crate::Error::Overloaded) while what cannot be
///   evicted (deliveries in flight) is over the limit on its own
///   ([`is_full`](Self::is_full)).
///
/// Charges are plain counters, not reservations: a holder may pass the
/// limit by the message in hand; the others then make room.
///
/// # Examples
///
/// ```
/// use broker_core::MemoryBudget;
///
/// let budget = MemoryBudget::new(1_000);
/// let held = budget.charge(600);
/// assert!(!budget.is_over());
/// let more = budget.charge(600);
/// assert!(budget.is_over());
/// drop(more);
/// assert_eq!(budget.used(), 600);
/// drop(held);
/// assert_eq!(budget.used(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limit: usize,
    /// Everything charged.
    used: AtomicUsize,
    /// The part of `used` a log or cache can evict.
    cached: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            shared: Arc::new(Shared {
                limit,
                used: AtomicUsize::new(0),
                cached: AtomicUsize::new(0),
            }),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// The bytes charged now, by every holder.
    pub fn used(&self) -> usize {
        self.shared.used.load(Ordering::Relaxed)
    }

    /// Whether more is charged than the limit: logs and caches evict.
    pub fn is_over(&self) -> bool {
        self.used() > self.shared.limit
    }

    /// The bytes charged that no log or cache can evict: messages held by
    /// deliveries (read ahead or in flight).
    pub fn pinned(&self) -> usize {
        self.used()
            .saturating_sub(self.shared.cached.load(Ordering::Relaxed))
    }

    /// Whether what cannot be evicted is over the limit on its own:
    /// [`Broker::publish`](crate::Broker::publish) refuses then.
    pub fn is_full(&self) -> bool {
        self.pinned() > self.shared.limit
    }

    /// Counts `bytes` as held until the returned charge is dropped.
    pub fn charge(&self, bytes: usize) -> Charge {
        self.add(bytes);
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    /// Counts `bytes` as held, for a holder keeping its own count (it
    /// must [`release`](Self::release) exactly as much).
    pub fn add(&self, bytes: usize) {
        self.shared.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Releases `bytes` counted with [`add`](Self::add).
    pub fn release(&self, bytes: usize) {
        self.shared.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` a log or cache holds and evicts while the budget
    /// [`is_over`](Self::is_over).
    pub fn add_cached(&self, bytes: usize) {
        self.shared.cached.fetch_add(bytes, Ordering::Relaxed);
        self.shared.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Releases `bytes` counted with [`add_cached`](Self::add_cached).
    pub fn release_cached(&self, bytes: usize) {
        self.shared.used.fetch_sub(bytes, Ordering::Relaxed);
        self.shared.cached.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Default for MemoryBudget {
    /// 512 MiB, the server's default `--max-memory-bytes`.
    fn default() -> Self {
        MemoryBudget::new(512 << 20)
    }
}

/// Bytes counted against a [`MemoryBudget`] until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: MemoryBudget,
    bytes: usize,
}

impl Charge {
    /// The bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_count() {
        let budget = MemoryBudget::new(10);
        let other = budget.clone();
        other.add(7);
        assert_eq!(budget.used(), 7);
        let charge = budget.charge(4);
        assert!(other.is_over());
        assert_eq!(charge.bytes(), 4);
        drop(charge);
        other.release(7);
        assert_eq!(budget.used(), 0);
        assert!(!budget.is_over());
    }

    #[test]
    fn only_what_cannot_be_evicted_makes_it_full() {
        let budget = MemoryBudget::new(10);
        budget.add_cached(30);
        assert!(budget.is_over());
        assert!(!budget.is_full(), "a log can make room");
        let pinned = budget.charge(11);
        assert_eq!(budget.pinned(), 11);
        assert!(budget.is_full());
        drop(pinned);
        budget.release_cached(30);
        assert_eq!((budget.used(), budget.pinned()), (0, 0));
    }
}
