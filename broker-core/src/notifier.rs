//! The pluggable delivery side of the broker.

use std::sync::Arc;

use async_trait::async_trait;

use crate::Publish;

/// Receives every publish, with the snapshot of the topic's subscribers, and
/// gets it to them.
///
/// Shaped like a `Service`: `&self` and a `Send` future, with impls for
/// `Arc<N>` and `Box<N>`. One call per publish (not per subscriber), so a
/// notifier can fan out without an allocation per delivery.
///
/// [`Broker::publish`](crate::Broker::publish) awaits `notify` before it
/// answers the publisher, so an implementation must only hand the work off
/// (enqueue it) and never wait on a subscriber's I/O.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use broker_core::{Notifier, Publish};
///
/// #[derive(Default)]
/// struct Counting(AtomicUsize);
///
/// #[async_trait::async_trait]
/// impl Notifier for Counting {
///     async fn notify(&self, publish: Publish) {
///         self.0.fetch_add(publish.subscribers.len(), Ordering::Relaxed);
///     }
/// }
/// ```
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Hands one publish over for delivery.
    async fn notify(&self, publish: Publish);

    /// Called once, when the broker is built (after
    /// [`Broker::open`](crate::Broker::open) has registered everything its
    /// store holds): a notifier that reads the log keeps
    /// [`Broker::downgrade`](crate::Broker::downgrade) and resumes
    /// subscribers whose cursor is behind. The default does nothing.
    fn attach(&self, broker: &crate::Broker) {
        let _ = broker;
    }

    /// Called when a subscriber is deregistered, disabled or enabled
    /// ([`Subscriber::is_active`](crate::Subscriber::is_active) and
    /// [`Subscriber::is_enabled`](crate::Subscriber::is_enabled) say which
    /// by then), so that a notifier can stop or resume its deliveries at
    /// once. The default does nothing.
    fn changed(&self, subscriber: &Arc<crate::Subscriber>) {
        let _ = subscriber;
    }

    /// Delivers these dead letters of `subscriber` again, with a fresh
    /// retry schedule ([`Broker::redrive`](crate::Broker::redrive)). The
    /// default does nothing.
    fn redrive(&self, subscriber: &Arc<crate::Subscriber>, dead: Vec<crate::DeadLetter>) {
        let _ = (subscriber, dead);
    }

    /// Delivers `subscriber`'s messages again from offset `from` on
    /// ([`Broker::replay_subscriber`](crate::Broker::replay_subscriber)).
    /// The default does nothing.
    fn rewind(&self, subscriber: &Arc<crate::Subscriber>, from: u64) {
        let _ = (subscriber, from);
    }

    /// Called when `topic` is deleted ([`Broker::delete_topic`](crate::Broker::delete_topic)),
    /// after its subscribers were told [`changed`](Self::changed): a
    /// notifier ends what it serves on it (live connections). The default
    /// does nothing.
    fn topic_deleted(&self, topic: &crate::TopicName) {
        let _ = topic;
    }

    /// Another process sharing the store appended to `topic` (its log now
    /// ends at or after the messages it reported): a notifier that reads
    /// the log itself wakes the readers it runs here for `subscribers`.
    /// The default does nothing.
    fn appended_elsewhere(&self, topic: &crate::TopicName, subscribers: &crate::Subscribers) {
        let _ = (topic, subscribers);
    }

    /// Whether messages another process appended to `topic` should be read
    /// and handed to [`notify`](Self::notify) here (a notifier with live
    /// listeners on it says yes). The default: no.
    fn wants_appended_elsewhere(&self, topic: &crate::TopicName) -> bool {
        let _ = topic;
        false
    }

    /// Waits while publishers should be paced, because deliveries are
    /// falling behind for want of CPU; returns whether it waited. Every
    /// publish ([`Broker::publish`](crate::Broker::publish), batches too,
    /// from any front) waits for it once its messages are in the log,
    /// before it returns. The default never waits.
    async fn pace(&self) -> bool {
        false
    }

    /// `subscriber`'s circuit breaker, for the topic detail and the
    /// metrics. The default: [`Circuit::Closed`](crate::Circuit::Closed).
    fn circuit(&self, subscriber: &crate::Subscriber) -> crate::Circuit {
        let _ = subscriber;
        crate::Circuit::Closed
    }

    /// With replicas sharing a store: how many subscribers' deliveries
    /// this process holds the lease of. The default: `None`.
    fn owned(&self) -> Option<usize> {
        None
    }
}

#[async_trait]
impl<N: Notifier + ?Sized> Notifier for Arc<N> {
    async fn notify(&self, publish: Publish) {
        (**self).notify(publish).await
    }
    fn attach(&self, broker: &crate::Broker) {
        (**self).attach(broker)
    }
    fn changed(&self, subscriber: &Arc<crate::Subscriber>) {
        (**self).changed(subscriber)
    }
    fn redrive(&self, subscriber: &Arc<crate::Subscriber>, dead: Vec<crate::DeadLetter>) {
        (**self).redrive(subscriber, dead)
    }
    fn rewind(&self, subscriber: &Arc<crate::Subscriber>, from: u64) {
        (**self).rewind(subscriber, from)
    }
    fn topic_deleted(&self, topic: &crate::TopicName) {
        (**self).topic_deleted(topic)
    }
    fn appended_elsewhere(&self, topic: &crate::TopicName, subscribers: &crate::Subscribers) {
        (**self).appended_elsewhere(topic, subscribers)
    }
    fn wants_appended_elsewhere(&self, topic: &crate::TopicName) -> bool {
        (**self).wants_appended_elsewhere(topic)
    }
    async fn pace(&self) -> bool {
        (**self).pace().await
    }
    fn circuit(&self, subscriber: &crate::Subscriber) -> crate::Circuit {
        (**self).circuit(subscriber)
    }
    fn owned(&self) -> Option<usize> {
        (**self).owned()
    }
}

#[async_trait]
impl<N: Notifier + ?Sized> Notifier for Box<N> {
    async fn notify(&self, publish: Publish) {
        (**self).notify(publish).await
    }
    fn attach(&self, broker: &crate::Broker) {
        (**self).attach(broker)
    }
    fn changed(&self, subscriber: &Arc<crate::Subscriber>) {
        (**self).changed(subscriber)
    }
    fn redrive(&self, subscriber: &Arc<crate::Subscriber>, dead: Vec<crate::DeadLetter>) {
        (**self).redrive(subscriber, dead)
    }
    fn rewind(&self, subscriber: &Arc<crate::Subscriber>, from: u64) {
        (**self).rewind(subscriber, from)
    }
    fn topic_deleted(&self, topic: &crate::TopicName) {
        (**self).topic_deleted(topic)
    }
    fn appended_elsewhere(&self, topic: &crate::TopicName, subscribers: &crate::Subscribers) {
        (**self).appended_elsewhere(topic, subscribers)
    }
    fn wants_appended_elsewhere(&self, topic: &crate::TopicName) -> bool {
        (**self).wants_appended_elsewhere(topic)
    }
    async fn pace(&self) -> bool {
        (**self).pace().await
    }
    fn circuit(&self, subscriber: &crate::Subscriber) -> crate::Circuit {
        (**self).circuit(subscriber)
    }
    fn owned(&self) -> Option<usize> {
        (**self).owned()
    }
}

/// Two notifiers in one: each publish goes to both, `A` first. The snapshot
/// and message are shared (`Publish` is two `Arc`s), not copied.
///
/// # Examples
///
/// ```
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
/// use broker_core::{Broker, Notifier, Publish};
///
/// #[derive(Default)]
/// struct Count(AtomicUsize);
///
/// #[async_trait::async_trait]
/// impl Notifier for Count {
///     async fn notify(&self, _: Publish) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
/// let broker = Broker::new((a.clone(), b.clone()));
/// let token = broker.register_publisher("t", "p").await?.item.token().expose().to_owned();
/// broker.publish("t", &token, None, "x".into()).await?;
/// assert_eq!((a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)), (1, 1));
/// # Ok::<_, broker_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
impl<A: Notifier, B: Notifier> Notifier for (A, B) {
    async fn notify(&self, publish: Publish) {
        self.0.notify(publish.clone()).await;
        self.1.notify(publish).await
    }
    fn attach(&self, broker: &crate::Broker) {
        self.0.attach(broker);
        self.1.attach(broker);
    }
    fn changed(&self, subscriber: &Arc<crate::Subscriber>) {
        self.0.changed(subscriber);
        self.1.changed(subscriber);
    }
    fn redrive(&self, subscriber: &Arc<crate::Subscriber>, dead: Vec<crate::DeadLetter>) {
        self.0.redrive(subscriber, dead.clone());
        self.1.redrive(subscriber, dead);
    }
    fn rewind(&self, subscriber: &Arc<crate::Subscriber>, from: u64) {
        self.0.rewind(subscriber, from);
        self.1.rewind(subscriber, from);
    }
    fn topic_deleted(&self, topic: &crate::TopicName) {
        self.0.topic_deleted(topic);
        self.1.topic_deleted(topic);
    }
    fn appended_elsewhere(&self, topic: &crate::TopicName, subscribers: &crate::Subscribers) {
        self.0.appended_elsewhere(topic, subscribers);
        self.1.appended_elsewhere(topic, subscribers);
    }
    fn wants_appended_elsewhere(&self, topic: &crate::TopicName) -> bool {
        self.0.wants_appended_elsewhere(topic) || self.1.wants_appended_elsewhere(topic)
    }
    async fn pace(&self) -> bool {
        let a = self.0.pace().await;
        let b = self.1.pace().await;
        a || b
    }
    fn circuit(&self, subscriber: &crate::Subscriber) -> crate::Circuit {
        match self.0.circuit(subscriber) {
            crate::Circuit::Closed => self.1.circuit(subscriber),
            open => open,
        }
    }
    fn owned(&self) -> Option<usize> {
        self.0.owned().or_else(|| self.1.owned())
    }
}
