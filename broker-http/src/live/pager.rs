//! A replay read from the topic's log a page at a time, so a listener that
//! resumes far back holds one page in memory, never the whole backlog.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use broker_core::{Broker, Message, Read, Replay, TopicName};

/// Messages read from the log at once.
const PAGE: u64 = 256;

type Reading = Pin<Box<dyn Future<Output = Result<Read, broker_core::Error>> + Send>>;

/// The offsets `[next, end)` of one topic still to replay.
pub(crate) struct Pager {
    broker: Broker,
    topic: TopicName,
    next: u64,
    end: u64,
    page_bytes: usize,
    /// The read in flight, kept across polls so that a caller polling
    /// other things in between never restarts it. (A `Mutex` only to make
    /// the pager `Sync`, as a response body must be; it is never locked,
    /// only reached through `&mut`.)
    reading: Option<Mutex<Reading>>,
}

impl Pager {
    pub(crate) fn new(broker: Broker, topic: TopicName, range: Replay) -> Self {
        let page_bytes = broker.limits().replay_bytes;
        Pager {
            broker,
            topic,
            next: range.start,
            end: range.end,
            page_bytes,
            reading: None,
        }
    }

    /// The topic it replays.
    pub(crate) fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The next page, oldest first; an empty page when the replay is done.
    /// Messages retention removed meanwhile are skipped.
    pub(crate) fn poll_page(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Vec<Arc<Message>>, broker_core::Error>> {
        loop {
            if self.next >= self.end {
                return Poll::Ready(Ok(Vec::new()));
            }
            let reading = self.reading.get_or_insert_with(|| {
                let (broker, topic) = (self.broker.clone(), self.topic.clone());
                let (from, count, bytes) =
                    (self.next, (self.end - self.next).min(PAGE), self.page_bytes);
                Mutex::new(Box::pin(async move {
                    broker
                        .read(topic.as_str(), from, count as usize, bytes)
                        .await
                }))
            });
            let polled = reading
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_mut()
                .poll(cx);
            let read = ready!(polled);
            self.reading = None;
            let read = read?;
            let end = self.end;
            let page: Vec<_> = read
                .messages
                .into_iter()
                .take_while(|m| m.offset() < end)
                .collect();
            match page.last() {
                Some(last) => {
                    self.next = last.offset() + 1;
                    return Poll::Ready(Ok(page));
                }
                // Retention removed the rest of a page: go on from the
                // oldest retained.
                None if read.first > self.next => self.next = read.first,
                None => self.next = self.end,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use broker_core::{Limits, Publish, ReplayFrom};

    use super::*;

    struct Nobody;
    #[async_trait::async_trait]
    impl broker_core::Notifier for Nobody {
        async fn notify(&self, _: Publish) {}
    }

    #[tokio::test]
    async fn a_long_replay_comes_in_bounded_pages_in_order() {
        let limits = Limits {
            replay_bytes: 100,
            ..Limits::default()
        };
        let broker = Broker::with_limits(Nobody, limits);
        let token = broker.register_publisher("t", "p").await.unwrap().item;
        let mut ids = Vec::new();
        for n in 0..600 {
            let body = format!("message {n:03}");
            let r = broker.publish("t", token.token().expose(), None, body.into());
            ids.push(r.await.unwrap().id);
        }
        let range = broker
            .replay_range("t", ReplayFrom::After(&ids[9]))
            .await
            .unwrap();
        assert_eq!((range.start, range.end), (10, 600));
        let mut pager = Pager::new(broker.clone(), TopicName::new("t").unwrap(), range);
        let mut seen = Vec::new();
        loop {
            let page = std::future::poll_fn(|cx| pager.poll_page(cx))
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            // 100 bytes a page: nine 11-byte messages.
            assert!(page.len() <= 9, "{}", page.len());
            seen.extend(page.iter().map(|m| m.id().to_owned()));
        }
        assert_eq!(seen, ids[10..]);
    }
}
