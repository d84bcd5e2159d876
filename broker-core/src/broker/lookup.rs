//! Message lookup: one message by id, with where each subscriber's
//! delivery of it stands, read from the subscriber's cursor, filter,
//! attempt log and dead letters.

use std::{sync::Arc, time::SystemTime};

use super::Broker;
use crate::{AttemptQuery, Error, Message, Subscriber};

/// Where one subscriber's delivery of a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not attempted yet, or an attempt is under way.
    Pending,
    /// The endpoint took it.
    Delivered,
    /// Attempted and failed; another attempt is owed.
    Retrying,
    /// Given up on and kept as a dead letter.
    DeadLettered,
    /// The subscriber's filter does not take it.
    Filtered,
    /// Given up on, its dead letter no longer kept (evicted past the cap).
    Dropped,
}

impl DeliveryState {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Retrying => "retrying",
            DeliveryState::DeadLettered => "dead_lettered",
            DeliveryState::Filtered => "filtered",
            DeliveryState::Dropped => "dropped",
        }
    }
}

/// One subscriber's delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The subscriber.
    pub subscriber_id: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts recorded in its attempt log.
    pub attempts: u32,
    /// The status of the last, if one came.
    pub last_status: Option<u16>,
    /// When the last was made.
    pub last_attempt_at: Option<SystemTime>,
}

/// A message and its deliveries.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The message.
    pub message: Arc<Message>,
    /// One per subscriber it was owed to, in registration order.
    pub deliveries: Vec<Delivery>,
}

impl Broker {
    /// The message `id` on `topic`, with each subscriber's delivery of it.
    /// A subscriber registered after it is not listed (it was never owed
    /// the message), nor, when it has an attempt log, one whose cursor
    /// passed it with no attempt recorded (registered after it, or its
    /// attempts at it rotated out of the log).
    ///
    /// # Errors
    ///
    /// [`Error::MessageNotFound`] when the topic's log does not hold it
    /// (never published, or no longer retained); [`Error::Storage`].
    pub async fn lookup(&self, topic: &str, id: &str) -> Result<Lookup, Error> {
        let offset = crate::store::claimed_offset(id).ok_or(Error::MessageNotFound)?;
        let read = self.read(topic, offset, 1, usize::MAX).await?;
        let message = read
            .messages
            .into_iter()
            .find(|m| m.offset() == offset && m.id() == id)
            .ok_or(Error::MessageNotFound)?;
        let subscribers: Vec<Arc<Subscriber>> = {
            let registry = self.shared.registry.read();
            registry
                .topics
                .get(topic)
                .map(|t| t.subscribers.iter().cloned().collect())
                .unwrap_or_default()
        };
        let keep = self.shared.limits.attempt_log;
        let mut deliveries = Vec::with_capacity(subscribers.len());
        for subscriber in subscribers {
            if let Some(delivery) = self.delivery_of(&subscriber, &message, keep).await? {
                deliveries.push(delivery);
            }
        }
        Ok(Lookup {
            message,
            deliveries,
        })
    }

    async fn delivery_of(
        &self,
        subscriber: &Subscriber,
        message: &Message,
        keep: usize,
    ) -> Result<Option<Delivery>, Error> {
        let store = &self.shared.store;
        let attempts = if keep == 0 {
            Vec::new()
        } else {
            let query = AttemptQuery {
                limit: keep,
                message_id: Some(message.id().to_owned()),
                ..AttemptQuery::default()
            };
            store
                .attempts(subscriber.topic(), &subscriber.id, &query)
                .await?
        };
        let last = attempts.first();
        let mut delivery = Delivery {
            subscriber_id: subscriber.id.clone(),
            state: DeliveryState::Pending,
            attempts: u32::try_from(attempts.len()).unwrap_or(u32::MAX),
            last_status: last.and_then(|a| a.status),
            last_attempt_at: last.map(crate::AttemptRecord::at),
        };
        let endpoint = subscriber.endpoint();
        let passed = subscriber.cursor() > message.offset();
        delivery.state = if !endpoint.wants(message) {
            DeliveryState::Filtered
        } else if last.is_some_and(crate::AttemptRecord::succeeded) {
            DeliveryState::Delivered
        } else if let Some(last) = last {
            let dead = store
                .dead_letters(&subscriber.id, self.shared.limits.max_dead_letters)
                .await?
                .iter()
                .any(|d| d.offset == message.offset());
            let retryable = last.status.is_none_or(|s| s >= 500 || s == 408 || s == 429);
            if dead {
                DeliveryState::DeadLettered
            } else if retryable && last.attempt < endpoint.retry().max_attempts() {
                DeliveryState::Retrying
            } else if passed {
                DeliveryState::Dropped
            } else {
                // Its last attempt is being settled.
                DeliveryState::Pending
            }
        } else if !passed {
            DeliveryState::Pending
        } else if keep == 0 {
            // No attempt log: the cursor passed it.
            let dead = store
                .dead_letters(&subscriber.id, self.shared.limits.max_dead_letters)
                .await?
                .iter()
                .any(|d| d.offset == message.offset());
            if dead {
                DeliveryState::DeadLettered
            } else {
                DeliveryState::Delivered
            }
        } else {
            return Ok(None);
        };
        Ok(Some(delivery))
    }
}
