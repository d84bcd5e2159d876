//! Several broker processes as one: what a shared store tells each of them
//! about the others ([`Cluster`]), and how a broker takes it in.
//!
//! A store that several processes share (Redis) hands out a [`Cluster`]
//! ([`Store::cluster`](crate::Store::cluster)). The broker then runs one
//! task that waits for [`Cluster::changes`] and applies them:
//!
//! - a registration put or removed elsewhere is read again from the store
//!   (under the broker's registration lock, so a local change to the same
//!   id is never undone by an older remote one) and applied to the
//!   registry; the notifier hears of subscribers as for a local change;
//! - messages appended elsewhere move the topic's log end (waking fetch
//!   and pull waiters), wake the topic's delivery workers
//!   ([`Notifier::appended_elsewhere`](crate::Notifier::appended_elsewhere))
//!   and, when the notifier asks for them (live listeners here), are read
//!   and handed to [`Notifier::notify`](crate::Notifier::notify);
//! - a topic deleted elsewhere goes here too, live connections included;
//! - after a gap in the feed (a reconnection), everything is loaded again
//!   and compared ([`Changes::resync`]).
//!
//! Delivery work is shared with leases ([`Cluster::claim`]): the notifier
//! decides which subscribers this process delivers (see `broker-http`).

use std::time::Duration;

use async_trait::async_trait;

use crate::{Error, Record, TopicName};

/// What other processes sharing the store changed since the last
/// [`Cluster::changes`], coalesced: each registration id once, each topic's
/// appends as one range.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The feed may have missed something: load every registration again,
    /// and every topic's bounds.
    pub resync: bool,
    /// Topics deleted (applied before the registrations).
    pub deleted: Vec<TopicName>,
    /// Ids of registrations put or removed (read them again).
    pub registrations: Vec<String>,
    /// Messages appended: topic, first offset, next offset.
    pub appended: Vec<(TopicName, u64, u64)>,
}

impl Changes {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        !self.resync
            && self.deleted.is_empty()
            && self.registrations.is_empty()
            && self.appended.is_empty()
    }
}

/// The processes sharing one store: their changes, their liveness, and
/// leases on delivery work. Shaped like a `Service` (`&self`, `Send`
/// futures); implemented by `broker-redis`.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This process's id among the replicas (random per process start).
    fn replica(&self) -> &str;

    /// Waits until another process changed something, and returns it all
    /// (coalesced); `None` once the store is closed. Bounded: a feed that
    /// falls behind reports [`Changes::resync`] instead of queueing
    /// without end.
    async fn changes(&self) -> Option<Changes>;

    /// The registration stored under `id`, if any (read now).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    async fn record(&self, id: &str) -> Result<Option<Record>, Error>;

    /// Says this replica is alive for `ttl`, and returns the ids of every
    /// replica alive now (this one included), sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    async fn heartbeat(&self, ttl: Duration) -> Result<Vec<String>, Error>;

    /// Takes (when free) or renews (when this replica's) the lease on each
    /// id for `ttl`; returns, per id, whether this replica holds it now.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    async fn claim(&self, ids: &[String], ttl: Duration) -> Result<Vec<bool>, Error>;

    /// Writes the progress buffered for `ids` (cursors, retries), then
    /// gives up their leases (those this replica holds), so that another
    /// replica takes them at once.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    async fn release(&self, ids: &[String]) -> Result<(), Error>;

    /// Leaves: this replica is no longer counted alive.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    async fn leave(&self) -> Result<(), Error>;

    /// Takes the lock `name` for at most `ttl`, waiting for it as long as
    /// the store waits for anything; returns the token that unlocks it.
    /// Consumer groups are shared this way: a pull or an ack takes the
    /// group's lock, reads its state, changes it and writes it back.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`], also when the lock stayed taken too long.
    async fn lock(&self, name: &str, ttl: Duration) -> Result<String, Error>;

    /// Gives the lock `name` back, if `token` still holds it.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] (the lock then expires after its TTL).
    async fn unlock(&self, name: &str, token: &str) -> Result<(), Error>;

    /// The cursor committed for `subscriber` by whichever replica
    /// delivered it last (what this process buffered written first).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    async fn cursor(&self, subscriber: &str) -> Result<Option<u64>, Error>;
}
