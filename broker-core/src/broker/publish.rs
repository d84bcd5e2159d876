//! Publishing on a topic's log, and reading it back: fetches, reads and
//! live listeners' replays.

use std::{
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use bytes::Bytes;
use http::HeaderValue;

use super::Broker;
use crate::{
    fingerprint,
    stats::{Publishing, TopicStats, Waiting},
    store::{NewMessage, Read},
    Appended, BatchReceipt, Draft, Error, Keyed, Message, Publish, Receipt, Replay, ReplayFrom,
    Role, TopicName,
};

impl Broker {
    /// Publishes `payload` on `topic` with a publisher's `token`: appends
    /// it to the topic's log (answering once the store has it as durably
    /// as it promises), then hands it to the notifier with the topic's
    /// current subscribers. Never waits on a subscriber; returns after
    /// the notifier's [`pace`](crate::Notifier::pace) (a wait only while
    /// deliveries fall behind for want of CPU). A publish racing
    /// [`Broker::delete_topic`] either returns before the deletion does,
    /// or fails with [`Error::TopicNotFound`]: nothing is appended to a
    /// topic being deleted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`]; [`Error::Unauthorized`] when the token is
    /// not a registered publisher's; [`Error::Forbidden`] when it is another
    /// topic's; for a verified token ([`Broker::verify_token`]),
    /// [`Error::InvalidToken`], [`Error::InsufficientScope`] when its
    /// grants do not cover `topic`, and [`Error::TopicNotFound`] when
    /// nothing made the topic yet, or it is being deleted; [`Error::Closed`] after [`Broker::close`];
    /// [`Error::Overloaded`] while deliveries hold more message bytes than
    /// the whole [`MemoryBudget`](crate::MemoryBudget) (see
    /// [`MemoryBudget::is_full`](crate::MemoryBudget::is_full); nothing is
    /// kept, retry shortly); [`Error::Storage`] when the log could not take
    /// it.
    pub async fn publish(
        &self,
        topic: &str,
        token: &str,
        content_type: Option<HeaderValue>,
        payload: Bytes,
    ) -> Result<Receipt, Error> {
        self.publish_draft(topic, token, Draft::new(content_type, payload))
            .await
    }

    /// Publishes one [`Draft`]: [`Broker::publish`] with an event type.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    pub async fn publish_draft(
        &self,
        topic: &str,
        token: &str,
        draft: Draft,
    ) -> Result<Receipt, Error> {
        let batch = self.publish_batch(topic, token, vec![draft]).await?;
        batch
            .messages
            .into_iter()
            .next()
            .ok_or_else(|| Error::storage("the store numbered no message"))
    }

    /// Publishes several messages on `topic` at once, all or nothing: they
    /// get consecutive offsets, in order, in one append to the log; then
    /// each is handed to the notifier like a single publish. A message
    /// with an idempotency key the log remembers for `topic` is not
    /// appended again: its receipt is the first one's, marked
    /// [`replayed`](Receipt::replayed).
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`]; [`Error::IdempotencyKeyReused`] (nothing
    /// published) when a key the log remembers, or an earlier message of
    /// the batch, came with another payload or event type. An empty batch
    /// publishes nothing and is not an error.
    pub async fn publish_batch(
        &self,
        topic: &str,
        token: &str,
        messages: Vec<Draft>,
    ) -> Result<BatchReceipt, Error> {
        crate::topic::validate(topic)?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.shared.memory.is_full() {
            return Err(Error::Overloaded {
                used: self.shared.memory.pinned(),
                limit: self.shared.memory.limit(),
            });
        }
        let (topic, subscribers, stats) = self.publish_target(topic, token).await?;
        // Held until the publish is answered, pacing included: a deletion
        // of the topic waits for it, and one under way refuses it.
        let _publishing = Publishing::on(&stats).ok_or(Error::TopicNotFound)?;
        let receipt = self
            .publish_to(topic, subscribers, &stats, messages)
            .await?;
        // Answered once the deliveries keep up (the message is in the log);
        // an empty batch published nothing to keep up with.
        if !receipt.messages.is_empty() {
            self.shared.notifier.pace().await;
        }
        Ok(receipt)
    }

    /// Appends `messages` to `topic`'s log and hands each new one to the
    /// notifier with `subscribers`: the publish once its target is known
    /// (and authorised), under the caller's [`Publishing`] guard. Not
    /// paced.
    pub(super) async fn publish_to(
        &self,
        topic: TopicName,
        subscribers: crate::Subscribers,
        stats: &Arc<TopicStats>,
        messages: Vec<Draft>,
    ) -> Result<BatchReceipt, Error> {
        if messages.is_empty() {
            return Ok(BatchReceipt {
                messages: Vec::new(),
                subscribers: subscribers.len(),
            });
        }
        let now = SystemTime::now();
        let count = subscribers.len();
        // The publishers' trace contexts, for the publish spans.
        let given: Vec<Option<crate::TraceContext>> = if self.is_tracing() {
            messages.iter().map(|d| d.trace.clone()).collect()
        } else {
            Vec::new()
        };
        let new = messages
            .into_iter()
            .map(|draft| NewMessage {
                idempotency: draft.idempotency_key.map(|key| Keyed {
                    key,
                    fingerprint: fingerprint(draft.event_type.as_ref(), &draft.payload),
                    subscribers: u32::try_from(count).unwrap_or(u32::MAX),
                }),
                content_type: draft.content_type,
                payload: draft.payload,
                published_at: now,
                event_type: draft.event_type,
                trace: self.publish_context(draft.trace.as_ref()),
            })
            .collect();
        let appended = self.shared.store.append(&topic, new).await?;
        let receipt = BatchReceipt {
            messages: appended
                .iter()
                .map(|a| match a {
                    Appended::New(m) => Receipt {
                        id: m.id.clone(),
                        offset: m.offset,
                        subscribers: count,
                        replayed: false,
                    },
                    Appended::Replayed(o) => Receipt {
                        id: o.id.clone(),
                        offset: o.offset,
                        subscribers: o.subscribers as usize,
                        replayed: true,
                    },
                })
                .collect(),
            subscribers: count,
        };
        if !given.is_empty() {
            for (a, given) in appended.iter().zip(&given) {
                if let Appended::New(m) = a {
                    self.publish_span(m, given.as_ref(), now);
                }
            }
        }
        let appended: Vec<Arc<Message>> = appended
            .into_iter()
            .filter_map(|a| match a {
                Appended::New(m) => Some(m),
                Appended::Replayed(_) => None,
            })
            .collect();
        let Some(last) = appended.last() else {
            // Every message a replay: nothing new to hand out.
            return Ok(receipt);
        };
        stats
            .published
            .fetch_add(appended.len() as u64, Ordering::Relaxed);
        // SeqCst with `Waiting::on` and the waiters' load of `log_end`: a
        // waiter either sees the new end or is counted here (no lost wake).
        stats.log_end.fetch_max(last.offset + 1, Ordering::SeqCst);
        if stats.waiting.load(Ordering::SeqCst) > 0 {
            stats.appended.notify_waiters();
        }
        for message in appended {
            self.shared
                .notifier
                .notify(Publish {
                    message,
                    subscribers: subscribers.clone(),
                })
                .await;
        }
        Ok(receipt)
    }

    /// Whether `token` may publish on `topic` now, without publishing: for
    /// a front to refuse a wrong token before it reads a body.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`], but for storage.
    pub async fn authorize_publisher(&self, topic: &str, token: &str) -> Result<(), Error> {
        crate::topic::validate(topic)?;
        self.publish_target(topic, token).await.map(|_| ())
    }

    /// [`publishing_on`](Self::publishing_on) after verifying a JWT, and
    /// once more after learning a token another replica issued a moment
    /// ago.
    async fn publish_target(
        &self,
        topic: &str,
        token: &str,
    ) -> Result<(TopicName, crate::Subscribers, Arc<TopicStats>), Error> {
        if topic == crate::EVENTS_TOPIC {
            // Only the broker publishes there.
            return Err(Error::ReservedTopic);
        }
        // Verified before the lock is taken: a signature check may be slow.
        let grants = self.verify_token(token)?;
        match self.publishing_on(topic, token, grants.as_ref()) {
            // Issued by another replica a moment ago?
            Err(Error::Unauthorized) if self.learn_token(token).await => {
                self.publishing_on(topic, token, grants.as_ref())
            }
            found => found,
        }
    }

    /// What a publish with `token` on `topic` goes to: the topic's name,
    /// subscribers and counters, or why not.
    #[allow(clippy::type_complexity)]
    fn publishing_on(
        &self,
        topic: &str,
        token: &str,
        grants: Option<&crate::Grants>,
    ) -> Result<(TopicName, crate::Subscribers, Arc<TopicStats>), Error> {
        let registry = self.shared.registry.read();
        let t = match &grants {
            // A token that no registration made publishes on a topic
            // that something else made (its log is there to append to).
            Some(grants) if grants.may_publish(topic) => {
                registry.topics.get(topic).ok_or(Error::TopicNotFound)?
            }
            Some(_) => {
                return Err(Error::InsufficientScope {
                    needed: format!("publish:{topic}"),
                })
            }
            None => {
                let publisher = registry.authenticate(token, Role::Publish)?;
                if publisher.topic.as_str() != topic {
                    return Err(Error::Forbidden);
                }
                registry
                    .topics
                    .get(topic)
                    .expect("a registered publisher's topic exists")
            }
        };
        Ok((t.name.clone(), t.subscribers.clone(), t.stats.clone()))
    }

    /// Up to `limit` messages of `topic` from `offset` on (from the oldest
    /// retained one when `offset` is older: [`Read::first`] shows the
    /// gap), at most `max_bytes` of payload (at least one message). When
    /// there is nothing at `offset` yet, waits up to `wait` for a publish
    /// and answers as soon as one lands.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::TopicNotFound`], or
    /// [`Error::Storage`].
    pub async fn fetch(
        &self,
        topic: &str,
        offset: u64,
        limit: usize,
        max_bytes: usize,
        wait: std::time::Duration,
    ) -> Result<Read, Error> {
        crate::topic::validate(topic)?;
        let (name, stats) = {
            let registry = self.shared.registry.read();
            let t = registry.topics.get(topic).ok_or(Error::TopicNotFound)?;
            (t.name.clone(), t.stats.clone())
        };
        let read = self
            .shared
            .store
            .read(&name, offset, limit, max_bytes)
            .await?;
        if !read.messages.is_empty() || wait.is_zero() {
            return Ok(read);
        }
        // Nothing there yet: wait for a publish past `offset`.
        let deadline = tokio::time::Instant::now() + wait;
        let want = offset.max(read.next);
        let waiting = Waiting::on(&stats);
        let arrived = async {
            loop {
                let appended = stats.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                if stats.log_end.load(Ordering::SeqCst) > want {
                    return;
                }
                appended.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, arrived).await;
        drop(waiting);
        self.shared
            .store
            .read(&name, offset, limit, max_bytes)
            .await
    }

    /// Up to `max_messages` messages of `topic` from offset `from` on,
    /// straight from its log (see [`Logs::read`](crate::Logs::read)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], or [`Error::Storage`].
    pub async fn read(
        &self,
        topic: &str,
        from: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Read, Error> {
        let name = TopicName::new(topic)?;
        self.shared
            .store
            .read(&name, from, max_messages, max_bytes)
            .await
    }

    /// The part of `topic`'s log that `from` asks a live listener be
    /// replayed: `[start, end)`, where `end` is the log's end now. A
    /// listener attaches first, then takes the range, reads it page by
    /// page ([`Broker::read`]), and skips live messages below `end`.
    ///
    /// - [`ReplayFrom::Last`]`(n)`: the last `n` retained, at most
    ///   [`Limits::replay_messages`](crate::Limits::replay_messages).
    /// - [`ReplayFrom::After`]`(id)`: everything retained after the
    ///   message with that id; an id not of this topic's log is taken as
    ///   `Last(replay_messages)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`], [`Error::TopicNotFound`], or
    /// [`Error::Storage`].
    ///
    /// # Examples
    ///
    /// ```
    /// use broker_core::{Broker, Publish, ReplayFrom};
    ///
    /// struct Nobody;
    /// #[async_trait::async_trait]
    /// impl broker_core::Notifier for Nobody {
    ///     async fn notify(&self, _: Publish) {}
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let broker = Broker::new(Nobody);
    /// let token = broker.register_publisher("t", "p").await?.item.token().expose().to_owned();
    /// let mut ids = Vec::new();
    /// for n in 0..3 {
    ///     ids.push(broker.publish("t", &token, None, format!("{n}").into()).await?.id);
    /// }
    /// let last_two = broker.replay_range("t", ReplayFrom::Last(2)).await?;
    /// assert_eq!((last_two.start, last_two.end), (1, 3));
    /// let after_first = broker.replay_range("t", ReplayFrom::After(&ids[0])).await?;
    /// let read = broker.read("t", after_first.start, 10, usize::MAX).await?;
    /// assert_eq!(read.messages[0].id(), ids[1]);
    /// # Ok::<_, broker_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn replay_range(&self, topic: &str, from: ReplayFrom<'_>) -> Result<Replay, Error> {
        crate::topic::validate(topic)?;
        let name = {
            let registry = self.shared.registry.read();
            let t = registry.topics.get(topic).ok_or(Error::TopicNotFound)?;
            t.name.clone()
        };
        let store = &self.shared.store;
        let limit = self.shared.limits.replay_messages as u64;
        let (first, end) = store.bounds(&name).await?;
        let newest = end.saturating_sub(limit).max(first);
        let start = match from {
            ReplayFrom::Last(n) => end.saturating_sub((n as u64).min(limit)).max(first),
            ReplayFrom::After(id) => match crate::store::claimed_offset(id) {
                // Whether the id is of this log: compared with the message
                // at its offset, or, when that one is gone, with the oldest
                // retained one (all of a log's ids share their prefix).
                Some(offset) if offset < end => {
                    let probe = store.read(&name, offset, 1, 0).await?;
                    match probe.messages.first() {
                        Some(m) if m.offset == offset && m.id == id => offset + 1,
                        Some(m) if m.offset > offset && crate::store::same_log(&m.id, id) => {
                            m.offset
                        }
                        _ => newest,
                    }
                }
                _ => newest,
            },
        };
        Ok(Replay {
            start: start.min(end),
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::test_support::{broker, endpoint, Recorder};
    use crate::{Limits, MemoryStore};

    #[tokio::test]
    async fn only_a_registered_publishers_token_publishes_on_its_topic() {
        let (b, rec) = broker();
        let p = b.register_publisher("t", "p").await.unwrap().item;
        let q = b.register_publisher("u", "q").await.unwrap().item;
        b.register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap();
        {
            let token = p.token().expose();
            let r = b.publish("t", token, None, "x".into()).await.unwrap();
            assert_eq!(r.subscribers, 1);
            for bad in [
                "",
                "nope",
                "pub_x.y",
                &token[..token.len() - 1],
                &format!("{token}x"),
            ] {
                assert_eq!(
                    b.publish("t", bad, None, "x".into()).await.unwrap_err(),
                    Error::Unauthorized,
                    "{bad:?}"
                );
            }
            let forbidden = b.publish("t", q.token().expose(), None, "x".into()).await;
            assert_eq!(forbidden.unwrap_err(), Error::Forbidden);
            // A valid token on a topic that does not exist is still
            // another topic's token.
            let absent = b.publish("zzz", token, None, "x".into()).await;
            assert_eq!(absent.unwrap_err(), Error::Forbidden);
            let invalid = b.publish("a/b", token, None, "x".into()).await;
            assert!(matches!(invalid, Err(Error::InvalidTopic { .. })));
        }
        assert_eq!(rec.0.lock().len(), 1);
        assert_eq!(b.topic("t").unwrap().published, 1);
    }

    #[tokio::test]
    async fn a_publish_keeps_its_snapshot() {
        let (b, _) = broker();
        let s = b
            .register_subscriber("t", endpoint(&b, "http://h/1"))
            .await
            .unwrap()
            .item;
        let snapshot = b.shared.registry.read().topics["t"].subscribers.clone();
        b.deregister_subscriber("t", s.id()).await.unwrap();
        b.register_subscriber("t", endpoint(&b, "http://h/2"))
            .await
            .unwrap();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].id(), s.id());
    }

    #[tokio::test]
    async fn closed_broker_refuses_publishes() {
        let (b, _) = broker();
        let p = b.register_publisher("t", "p").await.unwrap().item;
        b.close();
        let r = b.publish("t", p.token().expose(), None, "x".into()).await;
        assert_eq!(r.unwrap_err(), Error::Closed);
    }

    async fn publish_n(b: &Broker, topic: &str, sizes: &[usize]) -> Vec<String> {
        let token = b.register_publisher(topic, "p").await.unwrap().item;
        let mut ids = Vec::new();
        for &n in sizes {
            let r = b.publish(topic, token.token().expose(), None, vec![b'x'; n].into());
            ids.push(r.await.unwrap().id);
        }
        ids
    }

    async fn ids_from(b: &Broker, topic: &str, range: Replay) -> Vec<String> {
        let read = b
            .read(topic, range.start, usize::MAX, usize::MAX)
            .await
            .unwrap();
        read.messages
            .iter()
            .filter(|m| m.offset() < range.end)
            .map(|m| m.id().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn last_n_is_bounded_by_replay_messages() {
        let limits = Limits {
            replay_messages: 3,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        let ids = publish_n(&b, "t", &[1, 1, 1, 1]).await;
        let all = b
            .replay_range("t", ReplayFrom::Last(usize::MAX))
            .await
            .unwrap();
        assert_eq!(all, Replay { start: 1, end: 4 });
        assert_eq!(all.up_to(), Some(3));
        assert_eq!(ids_from(&b, "t", all).await, ids[1..]);
        let two = b.replay_range("t", ReplayFrom::Last(2)).await.unwrap();
        assert_eq!(ids_from(&b, "t", two).await, ids[2..]);
        let none = b.replay_range("t", ReplayFrom::Last(0)).await.unwrap();
        assert!(none.is_empty());
        assert_eq!(none.up_to(), Some(3));
        assert_eq!(
            b.replay_range("zz", ReplayFrom::Last(1)).await.unwrap_err(),
            Error::TopicNotFound
        );
    }

    #[tokio::test]
    async fn replay_after_an_id_resumes_after_it_whatever_the_count() {
        let limits = Limits {
            replay_messages: 2,
            ..Limits::default()
        };
        let b = Broker::with_limits(Recorder::default(), limits);
        let ids = publish_n(&b, "t", &[1, 1, 1, 1, 1]).await;
        let after = |id: String| {
            let b = b.clone();
            async move {
                let range = b.replay_range("t", ReplayFrom::After(&id)).await.unwrap();
                ids_from(&b, "t", range).await
            }
        };
        // Everything retained after it, not only `replay_messages`.
        assert_eq!(after(ids[0].clone()).await, ids[1..]);
        assert!(after(ids[4].clone()).await.is_empty());
        // Ids not of this topic's log replay the newest `replay_messages`.
        let other = publish_n(&b, "u", &[1]).await;
        for foreign in [
            "",
            "msg_",
            "nonsense",
            "msg_000000000000000000000001",
            &other[0],
        ] {
            assert_eq!(after(foreign.to_owned()).await, ids[3..], "{foreign:?}");
        }
        // Replay off still covers the log.
        let off = Broker::with_limits(
            Recorder::default(),
            Limits {
                replay_messages: 0,
                ..Limits::default()
            },
        );
        publish_n(&off, "t", &[1]).await;
        let r = off.replay_range("t", ReplayFrom::Last(5)).await.unwrap();
        assert!(r.is_empty() && r.up_to() == Some(0));
    }

    #[tokio::test]
    async fn an_id_whose_message_retention_removed_resumes_at_the_oldest_retained() {
        let store = MemoryStore::new(
            crate::Retention {
                bytes_per_topic: 2 * (1 + crate::memory::MESSAGE_OVERHEAD as u64),
                ..crate::Retention::default()
            },
            1 << 20,
        );
        let b = Broker::open(Recorder::default(), Limits::default(), store)
            .await
            .unwrap();
        let ids = publish_n(&b, "t", &[1, 1, 1, 1]).await;
        let range = b
            .replay_range("t", ReplayFrom::After(&ids[0]))
            .await
            .unwrap();
        assert_eq!(range, Replay { start: 2, end: 4 });
        assert_eq!(ids_from(&b, "t", range).await, ids[2..]);
    }
}
