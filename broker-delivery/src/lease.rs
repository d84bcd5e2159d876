//! Sharing delivery work between replicas of one broker (a store that
//! several processes share: [`broker_core::Cluster`]).
//!
//! Each subscriber's deliveries are owned by one replica at a time, which
//! holds a lease on it (a TTL, [`DeliveryConfig::lease_ttl`](super::DeliveryConfig::lease_ttl)).
//! Every tick (a fifteenth of the TTL, at most 1 s) each replica:
//!
//! 1. says it is alive and learns who else is ([`Cluster::heartbeat`]);
//! 2. works out which subscribers are its share: rendezvous hashing of the
//!    subscribers' ids over the live replicas with bounded load
//!    ([`assign`](crate::assign::assign)), so all agree, shares differ by at most
//!    one, and a replica joining or leaving moves mostly its own share;
//! 3. takes or renews the leases of its share ([`Cluster::claim`]); one
//!    that another replica still holds is tried again next tick;
//! 4. stops the workers of what is no longer its share, and once each has
//!    committed its cursor, releases the lease so the new owner starts at
//!    once ([`Cluster::release`]);
//! 5. starts the workers of what it gained, from the cursor committed by
//!    the last owner ([`Broker::take_over`]), with its pending retries.
//!
//! A replica killed outright holds its leases until they expire: its share
//! moves once its heartbeat and leases have run out (about the TTL), and
//! the new owner delivers again what was in flight (the same
//! `webhook-id`: at least once). A replica that cannot reach the store for
//! a whole TTL stops delivering, since its leases may have gone to
//! another. One stopping gracefully ([`super::WebhookNotifier::leave`])
//! hands everything back at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use broker_core::{Broker, Cluster, Subscriber, WeakBroker};
use parking_lot::RwLock;
use tokio::time::Instant;

use super::{worker, Shared};

/// Which subscribers this replica delivers.
pub(crate) struct Leases {
    cluster: Arc<dyn Cluster>,
    ttl: Duration,
    /// Ids of the subscribers whose lease this replica holds. Read by
    /// every wake-up (a short read lock), written once a tick.
    owned: RwLock<HashSet<String>>,
    /// Set when the replica leaves: it owns nothing from then on.
    leaving: AtomicBool,
    /// Tells the tick loop to stop.
    stop: tokio::sync::Notify,
}

impl Leases {
    pub(crate) fn new(cluster: Arc<dyn Cluster>, ttl: Duration) -> Self {
        Leases {
            cluster,
            ttl,
            owned: RwLock::default(),
            leaving: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
        }
    }

    /// Whether this replica delivers `id` now.
    pub(crate) fn owns(&self, id: &str) -> bool {
        !self.leaving.load(Ordering::Acquire) && self.owned.read().contains(id)
    }

    /// How many subscribers this replica delivers.
    pub(crate) fn count(&self) -> usize {
        self.owned.read().len()
    }

    fn tick(&self) -> Duration {
        (self.ttl / 15).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Keeps this replica's share of the leases until it leaves or the broker
/// is gone.
pub(crate) async fn keep(leases: Arc<Leases>, shared: Arc<Shared>, broker: WeakBroker) {
    let mut tick = tokio::time::interval(leases.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    // Ids no longer ours whose lease is still to be given back.
    let mut releasing: HashSet<String> = HashSet::new();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = leases.stop.notified() => return,
        }
        if leases.leaving.load(Ordering::Acquire) {
            return;
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        match round(&leases, &shared, &broker, &mut releasing).await {
            Ok(()) => {
                renewed = Instant::now();
                if failing {
                    tracing::info!("delivery leases renewed again");
                    failing = false;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::error!(%error, "renewing delivery leases failed");
                    failing = true;
                }
                if renewed.elapsed() >= leases.ttl {
                    // Our leases may be another replica's by now.
                    let lost: Vec<String> = leases.owned.write().drain().collect();
                    if !lost.is_empty() {
                        tracing::warn!(
                            subscribers = lost.len(),
                            "delivery leases expired while the store was unreachable; \
                             stopping those deliveries"
                        );
                    }
                    stop_workers(&broker, &shared, &lost);
                }
            }
        }
    }
}

/// One tick: heartbeat, claim the share, hand back the rest.
async fn round(
    leases: &Leases,
    shared: &Arc<Shared>,
    broker: &Broker,
    releasing: &mut HashSet<String>,
) -> Result<(), broker_core::Error> {
    let cluster = &leases.cluster;
    let me = cluster.replica().to_owned();
    let replicas = cluster.heartbeat(leases.ttl).await?;
    let subscribers: HashMap<String, Arc<Subscriber>> = broker
        .subscribers()
        .into_iter()
        .map(|s| (s.id().to_owned(), s))
        .collect();
    let delivered: Vec<&str> = subscribers
        .values()
        .filter(|s| s.is_active() && s.is_enabled())
        .map(|s| s.id())
        .collect();
    let mine = replicas.iter().position(|r| *r == me);
    let share: Vec<String> = delivered
        .iter()
        .zip(crate::assign::assign(&delivered, &replicas))
        .filter(|(_, owner)| Some(*owner) == mine)
        .map(|(id, _)| (*id).to_owned())
        .collect();
    let held = cluster.claim(&share, leases.ttl).await?;
    let now: HashSet<String> = share
        .into_iter()
        .zip(held)
        .filter_map(|(id, held)| held.then_some(id))
        .collect();
    let (gained, lost): (Vec<String>, Vec<String>) = {
        let mut owned = leases.owned.write();
        let gained = now.difference(&owned).cloned().collect();
        let lost = owned.difference(&now).cloned().collect();
        // What is gained is owned only once its cursor is read (below): a
        // publish waking its worker before would start it from this
        // replica's stale copy of the cursor.
        owned.retain(|id| now.contains(id));
        (gained, lost)
    };
    if !lost.is_empty() {
        tracing::debug!(
            subscribers = lost.len(),
            "handing deliveries to other replicas"
        );
        stop_workers(broker, shared, &lost);
        releasing.extend(lost);
    }
    // Given back once the worker stopped (its cursor committed).
    let done: Vec<String> = releasing
        .iter()
        .filter(|id| {
            subscribers
                .get(id.as_str())
                .is_none_or(|s| !worker::is_running(s, shared))
        })
        .cloned()
        .collect();
    if !done.is_empty() {
        cluster.release(&done).await?;
        for id in &done {
            releasing.remove(id);
        }
    }
    for id in gained {
        let Some(subscriber) = subscribers.get(&id) else {
            continue;
        };
        if let Err(error) = broker.take_over(subscriber).await {
            // Not ours until we know where the last owner stopped: tried
            // again next tick.
            tracing::error!(subscriber = %id, %error, "reading the committed cursor failed");
            continue;
        }
        worker::taken_over(subscriber, shared);
        leases.owned.write().insert(id);
        worker::wake(subscriber, shared);
    }
    Ok(())
}

/// Wakes the workers of `ids` so they see they no longer own them and
/// stop (committing their cursors).
fn stop_workers(broker: &Broker, shared: &Arc<Shared>, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    for subscriber in broker.subscribers() {
        if ids.contains(subscriber.id()) {
            worker::nudge(&subscriber, shared);
        }
    }
}

/// Leaves: owns nothing from now on, waits (up to `deadline`) for the
/// workers to stop and commit, then gives every lease back and leaves the
/// set of live replicas, so the others take over at their next tick.
pub(crate) async fn leave(
    leases: &Leases,
    shared: &Arc<Shared>,
    broker: Option<Broker>,
    deadline: Duration,
) -> Result<usize, broker_core::Error> {
    leases.leaving.store(true, Ordering::Release);
    leases.stop.notify_one();
    let owned: Vec<String> = leases.owned.write().drain().collect();
    if let Some(broker) = &broker {
        stop_workers(broker, shared, &owned);
    }
    let stopped = async {
        loop {
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if shared.running.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    };
    let _ = tokio::time::timeout(deadline, stopped).await;
    leases.cluster.release(&owned).await?;
    leases.cluster.leave().await?;
    Ok(owned.len())
}

/// Whether `subscriber` may be delivered here: always without a cluster.
pub(crate) fn may_deliver(subscriber: &Subscriber, shared: &Shared) -> bool {
    match shared.leases.get() {
        Some(leases) => leases.owns(subscriber.id()),
        None => true,
    }
}
