//! What the API asks of the deliveries, through the notifier: circuits
//! and leases, so the HTTP, WebSocket and TCP fronts get them from the
//! broker alone, without knowing which notifier delivers. (Pacing needs no
//! asking: every publish waits for [`Notifier::pace`](crate::Notifier::pace)
//! before it returns.)

use super::Broker;
use crate::{Circuit, Subscriber};

impl Broker {
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
        let pacer = std::sync::Arc::new(Pacer::default());
        let broker = Broker::new(pacer.clone());
        assert_eq!(broker.owned_deliveries(), Some(3));
        // Every publish waits for the pace once, an empty batch not.
        let p = broker.register_publisher("t", "p").await.unwrap().item;
        let token = p.token().expose();
        broker.publish("t", token, None, "a".into()).await.unwrap();
        broker.publish_batch("t", token, Vec::new()).await.unwrap();
        broker
            .publish_batch(
                "t",
                token,
                vec![
                    crate::Draft::new(None, "b".into()),
                    crate::Draft::new(None, "c".into()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(pacer.0.load(Ordering::Relaxed), 2);

        let plain = Broker::new(Quiet);
        assert_eq!(plain.owned_deliveries(), None);

        // A pair: open if either says so, paced if either waited.
        let pair = Broker::new((Quiet, Pacer::default()));
        assert!(!pair.shared.notifier.pace().await);
        assert!(pair.shared.notifier.pace().await);
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
