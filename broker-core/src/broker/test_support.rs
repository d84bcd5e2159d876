//! What the broker's unit tests share.

use std::sync::Arc;

use parking_lot::Mutex;

use super::Broker;
use crate::{Endpoint, Notifier, Publish};

/// Records every (message id, subscriber id) it is handed.
#[derive(Default)]
pub(super) struct Recorder(pub(super) Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl Notifier for Recorder {
    async fn notify(&self, publish: Publish) {
        let mut seen = self.0.lock();
        for s in publish.subscribers.iter() {
            seen.push((publish.message.id().to_owned(), s.id().to_owned()));
        }
    }
}

pub(super) fn broker() -> (Broker, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    (Broker::new(recorder.clone()), recorder)
}

pub(super) fn endpoint(broker: &Broker, url: &str) -> Endpoint {
    Endpoint::new(url, None, [("x-k", "v")], broker.limits()).unwrap()
}
