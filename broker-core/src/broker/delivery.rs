//! What the API asks of the deliveries, through the notifier: pacing,
//! circuits, leases. So the HTTP, WebSocket and TCP fronts get them from
//! the broker alone, without knowing which notifier delivers.

use super::Broker;
use crate::{Circuit, Subscriber};

impl Broker {
    /// Waits while publishers should be paced (the notifier's deliveries
    /// are falling behind for want of CPU); returns whether it waited.
    /// Every publish path calls it after a publish is accepted and before
    /// answering, so a publisher that outruns the deliveries slows down
    /// instead of growing the log. See [`Notifier::pace`](crate::Notifier::pace).
    pub async fn pace(&self) -> bool {
        self.shared.notifier.pace().await
    }

    /// `subscriber`'s circuit breaker, as its notifier reports it.
    pub fn circuit(&self, subscriber: &Subscriber) -> Circuit {
        self.shared.notifier.circuit(subscriber)
    }

    /// With replicas sharing a store: how many subscribers' deliveries
    /// this process holds the lease of; `None` otherwise.
    pub fn owned_deliveries(&self) -> Option<usize> {
        self.shared.notifier.owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::{Notifier, Publish};

    /// Notifies no one and keeps every default.
    struct Quiet;

    #[async_trait]
    impl Notifier for Quiet {
        async fn notify(&self, _: Publish) {}
    }

    /// Paces every other publish and reports every circuit open.
    #[derive(Default)]
    struct Pacer(AtomicUsize);

    #[async_trait]
    impl Notifier for Pacer {
        async fn notify(&self, _: Publish) {}
        async fn pace(&self) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed) % 2 == 1
        }
        fn circuit(&self, _: &Subscriber) -> Circuit {
            Circuit::Open
        }
        fn owned(&self) -> Option<usize> {
            Some(3)
        }
    }

    #[tokio::test]
    async fn the_broker_asks_its_notifier_and_a_pair_asks_both() {
        let broker = Broker::new(Pacer::default());
        assert!(!broker.pace().await);
        assert!(broker.pace().await);
        assert_eq!(broker.owned_deliveries(), Some(3));

        let plain = Broker::new(Quiet);
        assert!(!plain.pace().await);
        assert_eq!(plain.owned_deliveries(), None);

        // A pair: open if either says so, paced if either waited.
        let pair = Broker::new((Quiet, Pacer::default()));
        assert!(!pair.pace().await);
        assert!(pair.pace().await);
        assert_eq!(pair.owned_deliveries(), Some(3));
        let endpoint = crate::Endpoint::new(
            "http://127.0.0.1:9/hook",
            None,
            [("x-k", "v")],
            pair.limits(),
        )
        .unwrap();
        let sub = pair.register_subscriber("t", endpoint).await.unwrap().item;
        assert_eq!(pair.circuit(&sub), Circuit::Open);
        assert_eq!(plain.circuit(&sub), Circuit::Closed);
    }
}
