//! Deleting a topic while publishers publish on it (issue 26), with the
//! disk store: once the deletion returns, no publish that started before
//! it returns accepted afterwards, none fails with a storage error,
//! nothing of the topic is left on disk, and a topic made again with the
//! same name reads none of the old messages.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use broker_core::{Broker, Error, Limits, Notifier, Publish};
use broker_store::{DiskStore, Fsync, Options};

struct Nobody;

#[async_trait]
impl Notifier for Nobody {
    async fn notify(&self, _: Publish) {}
}

/// One run: three publishers, a deletion once they are under way.
async fn one_run(run: usize) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        fsync: Fsync::Never,
        ..Options::default()
    };
    let store = DiskStore::open(dir.path(), options).unwrap();
    let broker = Broker::open(Nobody, Limits::default(), store)
        .await
        .unwrap();
    broker.create_topic("t").await.unwrap();
    let token = broker
        .register_publisher("t", "p")
        .await
        .unwrap()
        .item
        .token()
        .expose()
        .to_owned();
    // Single-threaded: a task runs from one await to the next, so the
    // order of the ticks is the order in which calls returned.
    let clock = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            let (broker, token, clock, accepted) = (
                broker.clone(),
                token.clone(),
                clock.clone(),
                accepted.clone(),
            );
            tokio::spawn(async move {
                let mut last_accepted = 0;
                for n in 0.. {
                    let body = format!("old {run}/{p}/{n}");
                    match broker.publish("t", &token, None, body.into()).await {
                        Ok(_) => {
                            last_accepted = clock.fetch_add(1, Ordering::SeqCst);
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::TopicNotFound | Error::Unauthorized) => break,
                        Err(e) => panic!("run {run}: publish failed with {e:?}"),
                    }
                    // The disk store may append without a pending await:
                    // let the others (and the deletion) run.
                    tokio::task::yield_now().await;
                }
                last_accepted
            })
        })
        .collect();
    while accepted.load(Ordering::SeqCst) < 30 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    broker.delete_topic("t").await.unwrap();
    let deleted = clock.fetch_add(1, Ordering::SeqCst);
    for p in publishers {
        let last = p.await.unwrap();
        assert!(
            last < deleted,
            "run {run}: a publish was accepted after the deletion returned"
        );
    }
    assert!(
        !dir.path().join("topics").join("t").exists(),
        "run {run}: the deleted topic's log is back on disk"
    );
    // Made again: empty (its offsets may go on, never its data).
    broker.create_topic("t").await.unwrap();
    let read = broker.read("t", 0, 1_000, usize::MAX).await.unwrap();
    assert!(
        read.messages.is_empty(),
        "run {run}: the new topic reads {} old messages",
        read.messages.len()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_deleted_topic_stays_deleted_while_publishers_race_it() {
    for run in 0..50 {
        one_run(run).await;
    }
}
