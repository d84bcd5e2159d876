//! Consumer groups: competing consumers pulling a topic's log, each
//! message leased to one puller at a time until it is acked.
//!
//! A group is a cursor over the log with leases: `floor` (every offset
//! below is done: acked or dead-lettered), `next` (the next offset never
//! leased), the offsets done above the floor, the leases out, and the
//! offsets whose lease expired (leased again first). Everything is under
//! one short `parking_lot` lock per group, never held across an `.await`:
//! a pull decides what to lease under it, then reads the log without it.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::{sync::Notify, time::Instant};

use crate::TopicName;

/// Offsets a group may have between its floor and its next new offset:
/// past it, a pull hands out only redeliveries until the oldest is done.
/// Bounds the group's memory whatever its pullers do.
pub const MAX_WINDOW: u64 = 10_000;

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    /// At the oldest retained message.
    Earliest,
    /// At the end of the log: only messages published from now on.
    Latest,
}

/// A group's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// How long a pulled message is leased to its puller: not acked by
    /// then, it is delivered again. Default 30 s.
    pub ack_timeout: Duration,
    /// Deliveries of one message at most: after the last one's lease
    /// expires, it goes to the group's dead letters. Default 5.
    pub max_deliveries: u32,
    /// Which messages it takes (`None`: all). A pull skips the others:
    /// done with for the group at once, counted in
    /// [`Group::filtered`].
    pub filter: Option<std::sync::Arc<crate::Filter>>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            ack_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            filter: None,
        }
    }
}

/// A consumer group of a topic (see [`Broker::create_group`](crate::Broker::create_group)).
#[derive(Debug)]
pub struct Group {
    pub(crate) id: String,
    pub(crate) topic: TopicName,
    pub(crate) name: String,
    pub(crate) config: GroupConfig,
    pub(crate) order: u64,
    pub(crate) state: Mutex<GroupState>,
    /// Wakes waiting pulls when a lease is given back (an expiry is
    /// waited for by time, a publish by the topic's own signal).
    pub(crate) returned: Notify,
    /// Orders the writes of its progress (an `.await` on the store).
    pub(crate) persist: tokio::sync::Mutex<()>,
    /// Messages its filter skipped (since it was loaded here).
    pub(crate) filtered: std::sync::atomic::AtomicU64,
}

/// A message leased by [`Broker::pull`](crate::Broker::pull).
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The message.
    pub message: std::sync::Arc<crate::Message>,
    /// What acks it: valid while the lease lasts.
    pub receipt: String,
    /// Its deliveries so far, this one included.
    pub deliveries: u32,
}

impl Group {
    /// `grp_<topic>/<name>`: the key the store keeps it under.
    pub fn id_of(topic: &str, name: &str) -> String {
        format!("{}{topic}/{name}", crate::RecordKind::Group.prefix())
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Messages its filter skipped, since this process loaded it.
    pub fn filtered(&self) -> u64 {
        self.filtered.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Its topic.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Messages leased right now, and the offsets done above the floor.
    pub fn outstanding(&self) -> (usize, u64) {
        let state = self.state.lock();
        (state.leases.len(), state.floor)
    }
}

/// One lease: who holds the message (the nonce in its receipt) and until
/// when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub(crate) nonce: u64,
    pub(crate) until: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct GroupState {
    /// Every offset below is done.
    pub(crate) floor: u64,
    /// The next offset never leased (since the start or a restart).
    pub(crate) next: u64,
    /// Offsets done at or above the floor.
    pub(crate) done: BTreeSet<u64>,
    /// Leases out, by offset.
    pub(crate) leases: HashMap<u64, Lease>,
    /// Lease expiries, soonest first (stale entries skipped).
    pub(crate) expiries: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// Offsets to lease again first: their lease expired, or redriven.
    pub(crate) ready: BTreeSet<u64>,
    /// Deliveries so far of offsets not done.
    pub(crate) deliveries: HashMap<u64, u32>,
    /// Redriven dead letters (below the floor, not in `done`): acked, they
    /// leave the dead letters.
    pub(crate) redriven: BTreeSet<u64>,
}

/// What a pull leased: offsets with their receipt nonce and delivery count.
pub(crate) struct Leased {
    pub(crate) offset: u64,
    pub(crate) nonce: u64,
    pub(crate) deliveries: u32,
}

impl GroupState {
    /// Takes back the leases expired by `now`: each is leased again, or,
    /// its deliveries spent, dead (returned, marked done).
    pub(crate) fn expire(&mut self, now: Instant, max_deliveries: u32) -> Vec<(u64, u32)> {
        let mut dead = Vec::new();
        while let Some(Reverse((until, offset, nonce))) = self.expiries.peek().copied() {
            if until > now {
                break;
            }
            self.expiries.pop();
            if self.leases.get(&offset).is_none_or(|l| l.nonce != nonce) {
                continue; // acked, or leased again since
            }
            self.leases.remove(&offset);
            let deliveries = self.deliveries.get(&offset).copied().unwrap_or(0);
            if deliveries >= max_deliveries {
                self.finish(offset);
                dead.push((offset, deliveries));
            } else {
                self.ready.insert(offset);
            }
        }
        dead
    }

    /// Marks `offset` done, moving the floor past what is done.
    pub(crate) fn finish(&mut self, offset: u64) {
        self.deliveries.remove(&offset);
        self.ready.remove(&offset);
        if offset < self.floor {
            self.redriven.remove(&offset);
            return;
        }
        self.done.insert(offset);
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        self.next = self.next.max(self.floor);
    }

    /// Leases up to `max` offsets: those to lease again first, then new
    /// ones below `end` (the log's end) within the window. Returns them.
    pub(crate) fn lease(
        &mut self,
        max: usize,
        end: u64,
        now: Instant,
        ack_timeout: Duration,
    ) -> Vec<Leased> {
        let mut out = Vec::new();
        let until = now + ack_timeout;
        let take = |state: &mut GroupState, offset: u64| {
            // Unguessable, so a receipt cannot be forged from an offset.
            let nonce = getrandom::u64().expect("the operating system's random source failed");
            let deliveries = {
                let d = state.deliveries.entry(offset).or_insert(0);
                *d += 1;
                *d
            };
            state.leases.insert(offset, Lease { nonce, until });
            state.expiries.push(Reverse((until, offset, nonce)));
            Leased {
                offset,
                nonce,
                deliveries,
            }
        };
        while out.len() < max {
            let Some(offset) = self.ready.pop_first() else {
                break;
            };
            out.push(take(self, offset));
        }
        let window_end = self.floor.saturating_add(MAX_WINDOW).min(end);
        while out.len() < max && self.next < window_end {
            let offset = self.next;
            self.next += 1;
            if self.done.contains(&offset) || self.leases.contains_key(&offset) {
                continue; // done before a restart, or leased already
            }
            out.push(take(self, offset));
        }
        out
    }

    /// When the soonest lease expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiries.peek().map(|Reverse((until, _, _))| *until)
    }
}

/// Milliseconds since the epoch.
fn epoch_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl GroupState {
    /// The state a stored record holds (leases by wall-clock time, read
    /// against this process's clocks).
    pub(crate) fn of_record(g: &crate::GroupRecord) -> Self {
        let (now, wall) = (Instant::now(), epoch_ms(std::time::SystemTime::now()));
        let mut state = GroupState {
            floor: g.floor,
            next: g.next.max(g.floor),
            done: g.done.iter().copied().filter(|&o| o >= g.floor).collect(),
            deliveries: g.deliveries.iter().copied().collect(),
            ready: g.ready.iter().copied().collect(),
            redriven: g.redriven.iter().copied().collect(),
            ..GroupState::default()
        };
        for &(offset, nonce, until_ms) in &g.leases {
            let until = now + Duration::from_millis(until_ms.saturating_sub(wall));
            state.leases.insert(offset, Lease { nonce, until });
            state.expiries.push(Reverse((until, offset, nonce)));
        }
        state
    }

    /// What a record keeps of the lease state (for replicas sharing the
    /// group): next, leases by wall-clock time, ready, redriven.
    #[allow(clippy::type_complexity)]
    pub(crate) fn shared_parts(&self) -> (u64, Vec<(u64, u64, u64)>, Vec<u64>, Vec<u64>) {
        let (now, wall) = (Instant::now(), epoch_ms(std::time::SystemTime::now()));
        let leases = self
            .leases
            .iter()
            .map(|(&offset, lease)| {
                let left = lease.until.saturating_duration_since(now);
                let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                (offset, lease.nonce, wall.saturating_add(left))
            })
            .collect();
        (
            self.next,
            leases,
            self.ready.iter().copied().collect(),
            self.redriven.iter().copied().collect(),
        )
    }
}

/// A receipt: the offset and the lease's nonce, `<offset>.<nonce>` in hex.
pub(crate) fn receipt(offset: u64, nonce: u64) -> String {
    format!("{offset:x}.{nonce:016x}")
}

/// The (offset, nonce) of a receipt, if it is one.
pub(crate) fn parse_receipt(receipt: &str) -> Option<(u64, u64)> {
    let (offset, nonce) = receipt.split_once('.')?;
    Some((
        u64::from_str_radix(offset, 16).ok()?,
        u64::from_str_radix(nonce, 16).ok()?,
    ))
}

/// Whether `name` may name a group: 1–128 of `[A-Za-z0-9._-]`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_disjoint_expire_and_die_after_max_deliveries() {
        let now = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut state = GroupState::default();
        let a = state.lease(3, 10, now, timeout);
        let b = state.lease(3, 10, now, timeout);
        let offsets: Vec<u64> = a.iter().chain(&b).map(|l| l.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4, 5], "disjoint, in order");
        // 1 is done; the rest expire and come back first.
        state.leases.remove(&1);
        state.finish(1);
        assert!(state.expire(now + timeout, 2).is_empty());
        let again = state.lease(10, 6, now + timeout, timeout);
        let offsets: Vec<(u64, u32)> = again.iter().map(|l| (l.offset, l.deliveries)).collect();
        assert_eq!(offsets, [(0, 2), (2, 2), (3, 2), (4, 2), (5, 2)]);
        // A second expiry with 2 deliveries spent: all dead, floor moves.
        let dead = state.expire(now + 2 * timeout, 2);
        assert_eq!(dead.len(), 5);
        assert_eq!(state.floor, 6);
        assert!(state.done.is_empty() && state.deliveries.is_empty());
    }

    #[test]
    fn the_window_bounds_new_leases() {
        let now = Instant::now();
        let mut state = GroupState::default();
        let first = state.lease(usize::MAX, u64::MAX, now, Duration::from_secs(60));
        assert_eq!(first.len() as u64, MAX_WINDOW);
        assert!(state
            .lease(10, u64::MAX, now, Duration::from_secs(60))
            .is_empty());
        state.leases.remove(&0);
        state.finish(0);
        assert_eq!(
            state
                .lease(10, u64::MAX, now, Duration::from_secs(60))
                .len(),
            1
        );
    }

    #[test]
    fn receipts_round_trip_and_junk_is_none() {
        assert_eq!(parse_receipt(&receipt(42, 7)), Some((42, 7)));
        for junk in ["", "x", "1.", ".1", "g.1", "1.1.1"] {
            assert_eq!(parse_receipt(junk), None, "{junk}");
        }
    }
}
