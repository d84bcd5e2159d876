//! `RedisStore` against a real `redis-server` (one per test, on a free
//! port, append-only file fsynced at every write).

mod support;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use broker_core::{
    Change, CredentialRecord, DeadLetter, Logs, NewMessage, PendingRetry, Progress, Record,
    Registrations, Retention, Role, Store, SubscriberRecord, TopicName,
};
use broker_redis::{Options, RedisStore, RedisStoreError};
use http::HeaderValue;
use support::RedisServer;

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

/// The messages an append made (none of these tests' are replays).
fn fresh(appended: Vec<broker_core::Appended>) -> Vec<std::sync::Arc<broker_core::Message>> {
    appended
        .into_iter()
        .map(|a| a.into_new().expect("no replay"))
        .collect()
}

fn new(payload: impl Into<bytes::Bytes>) -> NewMessage {
    NewMessage {
        content_type: None,
        payload: payload.into(),
        published_at: SystemTime::now(),
        event_type: None,
        trace: None,
        idempotency: None,
    }
}

async fn open(server: &RedisServer, options: Options) -> RedisStore {
    RedisStore::open(&server.url(), options)
        .await
        .expect("the store opens")
}

/// Waits (bounded) until `check` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_many_tasks_and_two_stores_get_dense_unique_offsets() {
    let server = RedisServer::start();
    // Two stores on one Redis: two broker processes.
    let stores = [
        Arc::new(open(&server, Options::default()).await),
        Arc::new(open(&server, Options::default()).await),
    ];
    let t = topic("orders");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, t) = (stores[i % 2].clone(), t.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for n in 0..40 {
                    // Batches of 1 and 3.
                    let batch = if n % 4 == 0 {
                        vec![
                            new(format!("{i}.{n}a")),
                            new(format!("{i}.{n}b")),
                            new(format!("{i}.{n}c")),
                        ]
                    } else {
                        vec![new(format!("{i}.{n}"))]
                    };
                    let numbered = fresh(store.append(&t, batch).await.unwrap());
                    // A batch is consecutive.
                    for pair in numbered.windows(2) {
                        assert_eq!(pair[1].offset(), pair[0].offset() + 1);
                    }
                    got.extend(
                        numbered
                            .iter()
                            .map(|m| (m.offset(), m.id().to_owned(), m.payload().clone())),
                    );
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let total = 16 * (30 + 10 * 3);
    all.sort_by_key(|(offset, _, _)| *offset);
    let offsets: Vec<u64> = all.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(offsets, (0..total).collect::<Vec<_>>(), "dense and unique");
    let ids: HashSet<&String> = all.iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids.len(), all.len(), "unique ids");
    // One log, one prefix, whoever appended.
    let prefix = &all[0].1[..16];
    assert!(all.iter().all(|(_, id, _)| id.starts_with(prefix)));
    for store in &stores {
        assert_eq!(store.bounds(&t).await.unwrap(), (0, total));
    }
    // Either store reads back every message, with the same ids.
    let mut from = 0;
    while from < total {
        let read = stores[1].read(&t, from, 100, usize::MAX).await.unwrap();
        assert!(!read.messages.is_empty());
        for m in &read.messages {
            let (offset, id, payload) = &all[m.offset() as usize];
            assert_eq!(
                (m.offset(), m.id(), m.payload()),
                (*offset, id.as_str(), payload)
            );
        }
        from = read.messages.last().unwrap().offset() + 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_page_by_count_and_by_bytes_and_keep_everything_but_nanoseconds() {
    let server = RedisServer::start();
    let store = open(&server, Options::default()).await;
    let t = topic("t");
    let at = UNIX_EPOCH + Duration::from_nanos(1_795_430_227_250_123_456);
    let batch: Vec<NewMessage> = (0..10)
        .map(|n| NewMessage {
            content_type: (n % 2 == 0).then(|| HeaderValue::from_static("application/json")),
            payload: vec![b'0' + n as u8; 100].into(),
            published_at: at,
            event_type: None,
            trace: None,
            idempotency: None,
        })
        .collect();
    let appended = fresh(store.append(&t, batch).await.unwrap());
    assert_eq!(appended[9].offset(), 9);

    let read = store.read(&t, 0, 3, usize::MAX).await.unwrap();
    assert_eq!(read.messages.len(), 3);
    assert_eq!((read.first, read.next), (0, 10));
    // 250 bytes: two messages of 100; a third would pass the limit.
    let read = store.read(&t, 4, 100, 250).await.unwrap();
    let offsets: Vec<u64> = read.messages.iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, [4, 5]);
    // At least one, whatever the limit.
    assert_eq!(store.read(&t, 7, 100, 0).await.unwrap().messages.len(), 1);
    // Past the end: nothing, with the bounds.
    let read = store.read(&t, 10, 100, usize::MAX).await.unwrap();
    assert!(read.messages.is_empty());
    assert_eq!((read.first, read.next), (0, 10));
    let read = store.read(&t, u64::MAX, 100, usize::MAX).await.unwrap();
    assert!(read.messages.is_empty());
    // An unknown topic reads as an empty log.
    let read = store
        .read(&topic("none"), 0, 100, usize::MAX)
        .await
        .unwrap();
    assert!(read.messages.is_empty());
    assert_eq!((read.first, read.next), (0, 0));
    assert_eq!(store.bounds(&topic("none")).await.unwrap(), (0, 0));

    // A second store reads the same messages, ids and all.
    let other = open(&server, Options::default()).await;
    let read = other.read(&t, 0, 1000, usize::MAX).await.unwrap();
    assert_eq!(read.messages.len(), 10);
    for (a, b) in appended.iter().zip(&read.messages) {
        assert_eq!(a.id(), b.id());
        assert_eq!(a.offset(), b.offset());
        assert_eq!(a.payload(), b.payload());
        assert_eq!(a.content_type(), b.content_type());
        assert_eq!(a.topic(), b.topic());
        // To the millisecond, in both.
        assert_eq!(a.published_at(), b.published_at());
        assert_eq!(
            b.published_at(),
            UNIX_EPOCH + Duration::from_millis(1_795_430_227_250)
        );
    }
    assert_eq!(read.messages[0].content_type().unwrap(), "application/json");
    assert!(read.messages[1].content_type().is_none());
    // Pages of many small messages, read in several chunks: the byte
    // limit holds exactly.
    let small = topic("small");
    let sizes: Vec<usize> = (0..200).map(|n| if n % 7 == 0 { 95 } else { 10 }).collect();
    let batch = sizes.iter().map(|&n| new(vec![b's'; n])).collect();
    store.append(&small, batch).await.unwrap();
    for (from, max_bytes) in [(0, 1_500), (3, 777), (0, usize::MAX), (150, 40)] {
        let read = store.read(&small, from, 1_000, max_bytes).await.unwrap();
        let mut want = Vec::new();
        let mut bytes = 0;
        for (offset, &n) in sizes.iter().enumerate().skip(from as usize) {
            bytes += n;
            if bytes > max_bytes && !want.is_empty() {
                break;
            }
            want.push(offset as u64);
        }
        let got: Vec<u64> = read.messages.iter().map(|m| m.offset()).collect();
        assert_eq!(got, want, "from {from}, {max_bytes} bytes");
    }
    // Binary payloads come back as they went.
    let binary: Vec<u8> = (0..=255).collect();
    let m = store.append(&t, vec![new(binary.clone())]).await.unwrap();
    let read = other.read(&t, m[0].offset(), 1, usize::MAX).await.unwrap();
    assert_eq!(read.messages[0].payload().as_ref(), binary.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_bytes_drops_the_oldest_and_offsets_go_on() {
    let server = RedisServer::start();
    let store = open(
        &server,
        Options {
            retention: Retention {
                age: Duration::from_secs(3600),
                bytes_per_topic: 1_000,
            },
            ..Options::default()
        },
    )
    .await;
    let t = topic("t");
    for n in 0..25u8 {
        store.append(&t, vec![new(vec![n; 100])]).await.unwrap();
    }
    store.sweep().await.unwrap();
    // 1,000 bytes: the newest ten messages of 100.
    assert_eq!(store.bounds(&t).await.unwrap(), (15, 25));
    let read = store.read(&t, 0, 100, usize::MAX).await.unwrap();
    assert_eq!((read.first, read.next), (15, 25));
    assert_eq!(read.messages[0].offset(), 15);
    assert_eq!(read.messages[0].payload()[0], 15);
    assert_eq!(read.messages.len(), 10);
    // Offsets go on; the next sweep keeps the newest ten again.
    let m = store.append(&t, vec![new(vec![0; 300])]).await.unwrap();
    assert_eq!(m[0].offset(), 25);
    store.sweep().await.unwrap();
    assert_eq!(store.bounds(&t).await.unwrap(), (18, 26));
    // A log far over its limit is cut in several steps of one sweep, in
    // batches and alone alike.
    let big = topic("big");
    for _ in 0..25 {
        let batch = (0..1_000).map(|_| new(vec![7u8; 10])).collect();
        store.append(&big, batch).await.unwrap();
    }
    store.sweep().await.unwrap();
    assert_eq!(store.bounds(&big).await.unwrap(), (24_900, 25_000));
    let read = store.read(&big, 0, 1_000, usize::MAX).await.unwrap();
    assert_eq!(read.messages.len(), 100);
    assert_eq!(read.messages[0].offset(), 24_900);
    assert_eq!(store.bounds(&t).await.unwrap(), (18, 26));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_runs_in_the_background() {
    let server = RedisServer::start();
    let store = open(
        &server,
        Options {
            retention: Retention {
                age: Duration::from_millis(800),
                bytes_per_topic: 1 << 30,
            },
            ..Options::default()
        },
    )
    .await;
    let t = topic("t");
    for _ in 0..5 {
        store.append(&t, vec![new("old")]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    let fresh = store.append(&t, vec![new("fresh")]).await.unwrap();
    assert_eq!(fresh[0].offset(), 5);
    // The sweeper runs every 200 ms here (a quarter of the age).
    eventually("the old messages are dropped", || async {
        store.bounds(&t).await.unwrap().0 >= 5
    })
    .await;
    let read = store.read(&t, 0, 100, usize::MAX).await.unwrap();
    if read.first == 5 {
        assert_eq!(read.messages[0].id(), fresh[0].id());
    }
    // In time the fresh one goes too; the log is then empty at 6.
    eventually("everything expires", || async {
        store.bounds(&t).await.unwrap() == (6, 6)
    })
    .await;
    let read = store.read(&t, 0, 100, usize::MAX).await.unwrap();
    assert!(read.messages.is_empty());
    assert_eq!((read.first, read.next), (6, 6));
    assert_eq!(
        store.append(&t, vec![new("x")]).await.unwrap()[0].offset(),
        6
    );
}

fn publisher() -> Record {
    Record::Credential(CredentialRecord {
        id: "pub_1".into(),
        topic: "t".into(),
        name: "p".into(),
        role: Role::Publish,
        token: "pub_1.secret".into(),
        order: 0,
    })
}

fn subscriber(id: &str, order: u64) -> Record {
    Record::Subscriber(SubscriberRecord {
        id: id.into(),
        topic: "t".into(),
        // One URL per subscriber: a name is one registration.
        url: format!("http://h/{id}"),
        method: "PUT".into(),
        headers: vec![("x-k".into(), "v".into())],
        max_attempts: 3,
        schedule: Some(vec![Duration::from_secs(5), Duration::from_millis(1500)]),
        ordered: true,
        filter: None,
        enabled: true,
        secret: "whsec_x".into(),
        previous_secret: Some((
            "whsec_y".into(),
            UNIX_EPOCH + Duration::from_millis(1_795_430_227_250),
        )),
        order,
        cursor: 7,
    })
}

fn with_cursor(record: &Record, cursor: u64) -> Record {
    let Record::Subscriber(mut s) = record.clone() else {
        unreachable!()
    };
    s.cursor = cursor;
    Record::Subscriber(s)
}

async fn loaded(store: &RedisStore) -> Vec<Record> {
    let mut records = store.load().await.unwrap();
    records.sort_by_key(Record::order);
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_cursors_round_trip_through_a_second_store() {
    let server = RedisServer::start();
    let listener = Record::Credential(CredentialRecord {
        id: "lis_1".into(),
        role: Role::Listen,
        order: 1,
        ..match publisher() {
            Record::Credential(c) => c,
            _ => unreachable!(),
        }
    });
    let sub = subscriber("sub_1", 2);
    {
        let store = open(&server, Options::default()).await;
        for r in [&publisher(), &listener, &sub] {
            store.save(Change::Put(r)).await.unwrap();
        }
        store.save(Change::Remove { id: "lis_1" }).await.unwrap();
        // Cursors move forward only, and are written in the background.
        store.save_cursor("sub_1", 40).await.unwrap();
        store.save_cursor("sub_1", 30).await.unwrap();
        // Not a registration: never written.
        store.save_cursor("sub_gone", 5).await.unwrap();
        let other = open(&server, Options::default()).await;
        eventually("the cursor is flushed within 100 ms or so", || async {
            loaded(&other).await.contains(&with_cursor(&sub, 40))
        })
        .await;
        assert_eq!(loaded(&other).await, [publisher(), with_cursor(&sub, 40)]);
        // Another process with an older cursor never moves it back.
        other.save_cursor("sub_1", 35).await.unwrap();
        other.flush().await.unwrap();
        assert_eq!(loaded(&store).await[1], with_cursor(&sub, 40));
        // A store dropped writes what it buffered.
        store.save_cursor("sub_1", 41).await.unwrap();
    }
    let store = open(&server, Options::default()).await;
    eventually("the last cursor is written on drop", || async {
        loaded(&store).await.contains(&with_cursor(&sub, 41))
    })
    .await;
    let keys: Vec<String> = redis_keys(&server).await;
    assert!(!keys.iter().any(|k| k.contains("gone")), "{keys:?}");
    // Removing a subscriber removes its cursor: put again, it starts at
    // its registration's cursor.
    store.save(Change::Remove { id: "sub_1" }).await.unwrap();
    assert_eq!(loaded(&store).await, [publisher()]);
    store.save(Change::Put(&sub)).await.unwrap();
    assert_eq!(loaded(&store).await, [publisher(), sub.clone()]);
}

async fn redis_keys(server: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    keys.sort();
    keys
}

async fn hash(server: &RedisServer, key: &str) -> Vec<(String, String)> {
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut all: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_round_trip_and_go_with_their_subscriber() {
    let server = RedisServer::start();
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    let retry = |offset: u64, attempts: u32| PendingRetry {
        offset,
        attempts,
        due: at(1_795_430_227_000 + offset),
    };
    {
        let store = open(&server, Options::default()).await;
        store
            .save(Change::Put(&subscriber("sub_1", 0)))
            .await
            .unwrap();
        store.save_retry("sub_1", retry(7, 2)).await.unwrap();
        store.save_retry("sub_1", retry(3, 1)).await.unwrap();
        store.save_retry("sub_1", retry(3, 4)).await.unwrap();
        store.save_retry("sub_1", retry(9, 1)).await.unwrap();
        store.forget_retry("sub_1", 9).await.unwrap();
        // Not a registration: never written.
        store.save_retry("sub_gone", retry(1, 1)).await.unwrap();
        // Buffered writes are read back at once.
        assert_eq!(
            store.pending_retries("sub_1").await.unwrap(),
            [retry(3, 4), retry(7, 2)]
        );
        store.save_retry("sub_1", retry(12, 5)).await.unwrap();
        // Dropped without a read: the background flush has it.
    }
    let store = open(&server, Options::default()).await;
    eventually("the last retry is written", || async {
        store.pending_retries("sub_1").await.unwrap().len() == 3
    })
    .await;
    assert_eq!(
        store.pending_retries("sub_1").await.unwrap(),
        [retry(3, 4), retry(7, 2), retry(12, 5)]
    );
    assert!(store.pending_retries("sub_gone").await.unwrap().is_empty());
    assert_eq!(
        hash(&server, "broker:{r}:retries:sub_1").await,
        [
            ("12".to_owned(), format!("5:{}", 1_795_430_227_012u64)),
            ("3".to_owned(), format!("4:{}", 1_795_430_227_003u64)),
            ("7".to_owned(), format!("2:{}", 1_795_430_227_007u64)),
        ]
    );
    store.save(Change::Remove { id: "sub_1" }).await.unwrap();
    assert!(store.pending_retries("sub_1").await.unwrap().is_empty());
}

fn dead(offset: u64) -> DeadLetter {
    DeadLetter {
        message_id: format!("msg_{offset}"),
        offset,
        attempts: 8,
        last_status: Some(500),
        last_error: "the endpoint answered with an error status".into(),
        failed_at: UNIX_EPOCH + Duration::from_millis(1_795_430_227_250),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_bounded_oldest_first_and_counted() {
    let server = RedisServer::start();
    let offsets = |v: Vec<DeadLetter>| v.iter().map(|d| d.offset).collect::<Vec<_>>();
    let small = Options::default();
    {
        let store = open(&server, small.clone()).await;
        for id in ["sub_1", "sub_10"] {
            store.save(Change::Put(&subscriber(id, 0))).await.unwrap();
        }
        let mut evicted = Vec::new();
        for offset in [9, 2, 5, 11, 4] {
            evicted.push(
                store
                    .put_dead_letter("sub_1", &dead(offset), 3)
                    .await
                    .unwrap(),
            );
        }
        // The fourth drops offset 2; the fifth is itself the oldest.
        assert_eq!(evicted, [0, 0, 0, 1, 1]);
        assert_eq!(
            offsets(store.dead_letters("sub_1", 10).await.unwrap()),
            [5, 9, 11]
        );
        // Replacing one is no new one; a removed one makes room.
        let mut again = dead(9);
        again.attempts = 9;
        assert_eq!(store.put_dead_letter("sub_1", &again, 3).await.unwrap(), 0);
        store.remove_dead_letter("sub_1", 5).await.unwrap();
        assert_eq!(
            store.put_dead_letter("sub_1", &dead(20), 3).await.unwrap(),
            0
        );
        store.put_dead_letter("sub_10", &dead(1), 3).await.unwrap();
        assert_eq!(
            store.dead_letters("sub_1", 1).await.unwrap(),
            [again.clone()]
        );
        assert_eq!(
            store.dead_letters("sub_1", 10).await.unwrap(),
            [again, dead(11), dead(20)]
        );
    }
    // Another store sees them; a removed subscriber's go with it.
    let store = open(&server, small).await;
    assert_eq!(
        offsets(store.dead_letters("sub_1", 100).await.unwrap()),
        [9, 11, 20]
    );
    assert!(store.dead_letters("sub_1", 0).await.unwrap().is_empty());
    store.save(Change::Remove { id: "sub_1" }).await.unwrap();
    assert!(store.dead_letters("sub_1", 100).await.unwrap().is_empty());
    assert_eq!(store.dead_letters("sub_10", 100).await.unwrap(), [dead(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_under_concurrent_writers() {
    let server = RedisServer::start();
    let store = Arc::new(open(&server, Options::default()).await);
    let max = broker_core::MAX_DEAD_LETTERS as u64;
    // Many at once (one multiplexed connection pipelines them).
    let tasks: Vec<_> = (0..8u64)
        .map(|part| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut evicted = 0;
                for offset in (part..max + 5).step_by(8) {
                    evicted += store
                        .put_dead_letter("sub_1", &dead(offset), broker_core::MAX_DEAD_LETTERS)
                        .await
                        .unwrap();
                }
                evicted
            })
        })
        .collect();
    let mut evicted = 0;
    for t in tasks {
        evicted += t.await.unwrap();
    }
    assert_eq!(evicted, 5);
    let kept = store.dead_letters("sub_1", usize::MAX).await.unwrap();
    assert_eq!(kept.len() as u64, max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_starts_a_new_log_with_new_ids() {
    let server = RedisServer::start();
    let store = open(&server, Options::default()).await;
    let other = open(&server, Options::default()).await;
    let (t, kept) = (topic("t"), topic("kept"));
    let before = store
        .append(&t, vec![new("a"), new("b"), new("c")])
        .await
        .unwrap();
    store.append(&kept, vec![new("k")]).await.unwrap();
    // Deleted by another process.
    other.delete_topic(&t).await.unwrap();
    assert_eq!(store.bounds(&t).await.unwrap(), (0, 0));
    assert!(store
        .read(&t, 0, 10, usize::MAX)
        .await
        .unwrap()
        .messages
        .is_empty());
    // This process learned the old log: its appends do not make it again.
    assert!(matches!(
        store.append(&t, vec![new("late")]).await,
        Err(broker_core::Error::TopicNotFound)
    ));
    assert!(redis_keys(&server)
        .await
        .iter()
        .all(|k| !k.contains("{t:t}")));
    // Registered again (by the other process): a new log.
    let record = Record::Topic(broker_core::TopicRecord {
        id: broker_core::TopicRecord::id_of("t"),
        name: "t".to_owned(),
        order: 1,
    });
    other.save(Change::Put(&record)).await.unwrap();
    // Learned as a replica learns a registration announced.
    let cluster = store.cluster().expect("a Redis store is a cluster");
    assert!(cluster.record(record.id()).await.unwrap().is_some());
    let after = store.append(&t, vec![new("new")]).await.unwrap();
    assert_eq!(after[0].offset(), 0);
    assert_ne!(after[0].id(), before[0].id(), "a new log, a new id prefix");
    assert_eq!(store.bounds(&kept).await.unwrap(), (0, 1));
    // Deleting what is not there is fine.
    store.delete_topic(&topic("never")).await.unwrap();
    let keys = redis_keys(&server).await;
    assert!(keys.contains(&"broker:{t:t}:log".to_owned()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("never")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_in_bounded_time_and_nothing_acknowledged_is_lost() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_secs(1);
    let store = open(
        &server,
        Options {
            timeout,
            ..Options::default()
        },
    )
    .await;
    let t = topic("t");
    let mut acked = Vec::new();
    for n in 0..50 {
        acked.extend(fresh(
            store.append(&t, vec![new(format!("m{n}"))]).await.unwrap(),
        ));
    }
    store.save(Change::Put(&publisher())).await.unwrap();
    let sub = subscriber("sub_1", 1);
    store.save(Change::Put(&sub)).await.unwrap();
    server.kill();

    // Every operation fails with Storage, each within the timeout (and
    // a little).
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.append(&t, vec![new("lost")]).await.unwrap_err();
        assert!(matches!(err, broker_core::Error::Storage { .. }), "{err:?}");
        assert_eq!(err.code(), "storage_unavailable");
        assert!(
            started.elapsed() < timeout + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let err = store
        .save(Change::Put(&subscriber("sub_2", 2)))
        .await
        .unwrap_err();
    assert!(matches!(err, broker_core::Error::Storage { .. }), "{err:?}");
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
    assert!(store.read(&t, 0, 10, usize::MAX).await.is_err());
    // Cursor moves and retry changes are buffered meanwhile: a flush
    // fails and keeps them (under newer changes), and they are written
    // once Redis is back.
    let retry = |offset: u64| PendingRetry {
        offset,
        attempts: 2,
        due: UNIX_EPOCH + Duration::from_millis(1_795_430_227_000 + offset),
    };
    store.save_cursor("sub_1", 33).await.unwrap();
    store.save_retry("sub_1", retry(7)).await.unwrap();
    store.save_retry("sub_1", retry(8)).await.unwrap();
    assert!(store.flush().await.is_err());
    store.save_cursor("sub_1", 20).await.unwrap(); // cursors only move on
    store.forget_retry("sub_1", 7).await.unwrap(); // the newer change wins
    assert!(store.flush().await.is_err());

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let resumed = loop {
        match store.append(&t, vec![new("after")]).await {
            Ok(m) => break m,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the store did not come back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Nothing acknowledged before the kill is lost; offsets go on.
    assert_eq!(resumed[0].offset(), 50);
    let read = store.read(&t, 0, 100, usize::MAX).await.unwrap();
    assert_eq!(read.messages.len(), 51);
    for (a, b) in acked.iter().zip(&read.messages) {
        assert_eq!((a.id(), a.payload()), (b.id(), b.payload()));
    }
    assert_eq!(read.messages[50].id(), resumed[0].id());
    eventually("the buffered cursor is written", || async {
        loaded(&store).await == [publisher(), with_cursor(&sub, 33)]
    })
    .await;
    assert_eq!(store.pending_retries("sub_1").await.unwrap(), [retry(8)]);
}

#[tokio::test]
async fn unreachable_at_start_is_a_clear_error_without_the_password() {
    let port = support::closed_port();
    let started = Instant::now();
    let err = RedisStore::open(
        &format!("redis://app:hunter2@127.0.0.1:{port}/0"),
        Options::default(),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, RedisStoreError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot reach Redis at redis://app:***@127.0.0.1:{port}/0"
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    // Not a URL at all.
    let err = RedisStore::open("http://nope", Options::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RedisStoreError::Url { .. }), "{err:?}");
    let err = RedisStore::open(
        "redis://127.0.0.1:1/",
        Options {
            namespace: "a{b}".into(),
            ..Options::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RedisStoreError::Options { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_brokers_apart_on_one_redis() {
    let server = RedisServer::start();
    let a = open(&server, Options::default()).await;
    let b = open(
        &server,
        Options {
            namespace: "staging".into(),
            ..Options::default()
        },
    )
    .await;
    let t = topic("t");
    a.append(&t, vec![new("a")]).await.unwrap();
    assert_eq!(b.bounds(&t).await.unwrap(), (0, 0));
    assert_eq!(b.append(&t, vec![new("b")]).await.unwrap()[0].offset(), 0);
    a.save(Change::Put(&publisher())).await.unwrap();
    assert!(b.load().await.unwrap().is_empty());
    let keys = redis_keys(&server).await;
    assert!(keys.contains(&"staging:{t:t}:log".to_owned()), "{keys:?}");
}

/// A name (a publisher's topic and name, a subscriber's topic, method and
/// URL) is one registration across the stores sharing a Redis: another id
/// for it is refused with the id that holds it, until that one is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_one_registration_across_stores() {
    let server = RedisServer::start();
    let (a, b) = (
        open(&server, Options::default()).await,
        open(&server, Options::default()).await,
    );
    let credential = |id: &str| {
        Record::Credential(CredentialRecord {
            id: id.into(),
            topic: "t".into(),
            name: "checkout".into(),
            role: Role::Publish,
            token: format!("{id}.secret"),
            order: 0,
        })
    };
    a.save(Change::Put(&credential("pub_a"))).await.unwrap();
    // The same record again (an update) is fine.
    a.save(Change::Put(&credential("pub_a"))).await.unwrap();
    assert_eq!(
        b.save(Change::Put(&credential("pub_b"))).await,
        Err(broker_core::Error::AlreadyRegistered { id: "pub_a".into() })
    );
    assert_eq!(b.save(Change::Put(&subscriber("sub_1", 0))).await, Ok(()));
    let mut other = subscriber("sub_2", 1);
    if let Record::Subscriber(s) = &mut other {
        s.url = "http://h/sub_1".into();
    }
    assert_eq!(
        a.save(Change::Put(&other)).await,
        Err(broker_core::Error::AlreadyRegistered { id: "sub_1".into() })
    );
    // Removed, the name is free again.
    a.save(Change::Remove { id: "pub_a" }).await.unwrap();
    b.save(Change::Put(&credential("pub_b"))).await.unwrap();
    let ids: HashSet<String> = a
        .load()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    assert_eq!(ids, HashSet::from(["pub_b".into(), "sub_1".into()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_progress_is_kept_with_the_group_and_not_announced() {
    let server = RedisServer::start();
    let store = open(&server, Options::default()).await;
    let version = || async {
        let client = redis::Client::open(server.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let v: Option<u64> = redis::cmd("GET")
            .arg("broker:{r}:version")
            .query_async(&mut con)
            .await
            .unwrap();
        v.unwrap_or(0)
    };
    let mut group = broker_core::GroupRecord {
        id: "grp_t/g".into(),
        topic: "t".into(),
        name: "g".into(),
        ack_timeout: Duration::from_secs(30),
        max_deliveries: 5,
        filter: None,
        order: 1,
        floor: 0,
        done: Vec::new(),
        deliveries: Vec::new(),
        next: 0,
        leases: Vec::new(),
        ready: Vec::new(),
        redriven: Vec::new(),
    };
    // Made: a registration change, announced.
    store
        .save(Change::Put(&Record::Group(group.clone())))
        .await
        .unwrap();
    let made = version().await;
    assert!(made > 0);
    // Progress: kept where the group is, not announced.
    for n in 1..=20u64 {
        group.floor = n;
        group.next = n + 3;
        group.done = vec![n + 2];
        store.save_group(group.clone()).await.unwrap();
    }
    assert_eq!(version().await, made);
    let again = open(&server, Options::default()).await;
    assert_eq!(loaded(&again).await, [Record::Group(group)]);
}

struct Nobody;

#[async_trait::async_trait]
impl broker_core::Notifier for Nobody {
    async fn notify(&self, _: broker_core::Publish) {}
}

/// Deleting a topic while three publishers publish on it (issue 26), 50
/// times: once the deletion returns no publish is accepted afterwards,
/// none fails with a storage error, no key of the topic is left, and the
/// topic made again reads none of the old messages. Single-threaded, so
/// the order of the ticks is the order in which the calls returned.
#[tokio::test(flavor = "current_thread")]
async fn a_deleted_topic_stays_deleted_while_publishers_race_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let server = RedisServer::start();
    for run in 0..50 {
        let store = open(
            &server,
            Options {
                namespace: format!("race{run}"),
                ..Options::default()
            },
        )
        .await;
        let broker = broker_core::Broker::open(Nobody, broker_core::Limits::default(), store)
            .await
            .unwrap();
        broker.create_topic("t").await.unwrap();
        let p = broker.register_publisher("t", "p").await.unwrap().item;
        let token = p.token().expose().to_owned();
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
                    let mut last = 0;
                    for n in 0.. {
                        let body = format!("old {run}/{p}/{n}");
                        match broker.publish("t", &token, None, body.into()).await {
                            Ok(_) => {
                                last = clock.fetch_add(1, Ordering::SeqCst);
                                accepted.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(broker_core::Error::TopicNotFound)
                            | Err(broker_core::Error::Unauthorized) => break,
                            Err(e) => panic!("run {run}: publish failed with {e:?}"),
                        }
                    }
                    last
                })
            })
            .collect();
        while accepted.load(Ordering::SeqCst) < 30 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        broker.delete_topic("t").await.unwrap();
        let deleted = clock.fetch_add(1, Ordering::SeqCst);
        for p in publishers {
            assert!(
                p.await.unwrap() < deleted,
                "run {run}: accepted after the deletion"
            );
        }
        let left: Vec<String> = redis_keys(&server)
            .await
            .into_iter()
            .filter(|k| k.starts_with(&format!("race{run}:{{t:t}}")))
            .collect();
        assert!(left.is_empty(), "run {run}: {left:?} left");
        broker.create_topic("t").await.unwrap();
        let read = broker.read("t", 0, 1_000, usize::MAX).await.unwrap();
        assert!(read.messages.is_empty(), "run {run}: old messages read");
    }
}

/// The delete race across replicas (issue 26), 20 times: replica B's
/// three publishers publish on a topic while replica A deletes it and
/// makes it again. B's feed of changes is held off meanwhile (its Redis
/// user may not `SUBSCRIBE`, its Pub/Sub connection killed), so B's
/// registry is stale and authorises the old publisher for as long as the
/// test likes: each such publish must be refused, neither making the old
/// log again nor landing in the new topic. Checked: no publish accepted
/// after the deletion, none failed with a storage error, no key of the
/// topic left after the deletion, the new topic reads none of the old
/// messages on either replica, and B follows again once it may (its
/// registry then refuses the old publisher).
///
/// Not covered, and documented: a publish B authorised just before a
/// resync that finds the topic made again (B's feed having missed both
/// changes) may land in the new topic; the publishers stop before B
/// follows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_on_one_replica_stays_deleted_for_publishers_on_another() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let server = RedisServer::start();
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let acl = |rule: &'static str| redis::cmd("ACL").arg("SETUSER").arg("b").arg(rule).clone();
    for rule in ["on", ">secret", "~*", "&*", "+@all"] {
        let () = acl(rule).query_async(&mut admin).await.unwrap();
    }
    let b_url = server.url().replace("redis://", "redis://b:secret@");
    for run in 0..20 {
        let namespace = format!("replicas{run}");
        let options = || Options {
            namespace: namespace.clone(),
            ..Options::default()
        };
        let a = RedisStore::open(&server.url(), options()).await.unwrap();
        let a = broker_core::Broker::open(Nobody, broker_core::Limits::default(), a)
            .await
            .unwrap();
        a.create_topic("t").await.unwrap();
        let token = a.register_publisher("t", "p").await.unwrap().item;
        let token = token.token().expose().to_owned();
        let b = RedisStore::open(&b_url, options()).await.unwrap();
        let b = broker_core::Broker::open(Nobody, broker_core::Limits::default(), b)
            .await
            .unwrap();
        let deleted = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (accepted, late, refused) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let publishers: Vec<_> = (0..3)
            .map(|p| {
                let b = b.clone();
                let token = token.clone();
                let (deleted, accepted, late, refused) = (
                    deleted.clone(),
                    accepted.clone(),
                    late.clone(),
                    refused.clone(),
                );
                let stop = stop.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let after = deleted.load(Ordering::SeqCst);
                        let body = format!("old {run}/{p}/{n}");
                        match b.publish("t", &token, None, body.into()).await {
                            Ok(_) if after => _ = late.fetch_add(1, Ordering::SeqCst),
                            Ok(_) => _ = accepted.fetch_add(1, Ordering::SeqCst),
                            Err(broker_core::Error::TopicNotFound) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                                // Refused without Redis once B knows.
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err(e) => panic!("run {run}: publish failed with {e:?}"),
                        }
                    }
                })
            })
            .collect();
        let until = |what: &'static str, count: &Arc<AtomicU64>, n: u64| {
            let (count, late) = (count.clone(), late.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while count.load(Ordering::SeqCst) < n {
                    assert_eq!(
                        late.load(Ordering::SeqCst),
                        0,
                        "run {run}: accepted after the deletion"
                    );
                    assert!(
                        Instant::now() < deadline,
                        "run {run}: not within 10 s: {what}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        until("30 publishes accepted", &accepted, 30).await;
        // B hears no more changes.
        let () = acl("-subscribe").query_async(&mut admin).await.unwrap();
        let _: u64 = redis::cmd("CLIENT")
            .arg(&["KILL", "USER", "b", "TYPE", "pubsub"][..])
            .query_async(&mut admin)
            .await
            .unwrap();
        a.delete_topic("t").await.unwrap();
        deleted.store(true, Ordering::SeqCst);
        until("B's publishes refused", &refused, 10).await;
        let left: Vec<String> = redis_keys(&server)
            .await
            .into_iter()
            .filter(|k| k.starts_with(&format!("{namespace}:{{t:t}}")))
            .collect();
        assert!(
            left.is_empty(),
            "run {run}: {left:?} left after the deletion"
        );
        // Made again: B's stale publishes must not land in it.
        a.create_topic("t").await.unwrap();
        let so_far = refused.load(Ordering::SeqCst);
        until(
            "B's publishes refused by the new topic",
            &refused,
            so_far + 10,
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        for p in publishers {
            p.await.unwrap();
        }
        // B follows again: its registry drops the old publisher.
        let () = acl("+subscribe").query_async(&mut admin).await.unwrap();
        eventually("B refuses the old publisher", || async {
            b.authorize_publisher("t", &token).await == Err(broker_core::Error::Unauthorized)
        })
        .await;
        assert_eq!(
            late.load(Ordering::SeqCst),
            0,
            "run {run}: accepted after the deletion"
        );
        for (replica, broker) in [("A", &a), ("B", &b)] {
            let read = broker.read("t", 0, 1_000, usize::MAX).await.unwrap();
            assert!(
                read.messages.is_empty(),
                "run {run}: old messages read on {replica}"
            );
        }
        a.delete_topic("t").await.unwrap();
        a.close();
        b.close();
    }
}

/// Event types are kept with each message (field `e`), and an entry
/// written before event types (no `e`, as older builds wrote it) reads as
/// having none: no migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_types_are_kept_and_old_entries_have_none() {
    let server = RedisServer::start();
    let store = open(&server, Options::default()).await;
    let t = topic("t");
    let mut typed = new("typed");
    typed.event_type = Some(broker_core::EventType::new("invoice.paid").unwrap());
    let trace = broker_core::TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("congo=t61rcWkgMzE"),
    );
    typed.trace = trace.clone();
    store.append(&t, vec![typed, new("untyped")]).await.unwrap();
    // As a build before event types appended it.
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("INCR")
        .arg("broker:{t:t}:next")
        .query_async(&mut con)
        .await
        .map(|_: u64| ())
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("broker:{t:t}:log")
        .arg("3-0")
        .arg(
            &[
                "t",
                "1700000000000",
                "s",
                "20",
                "c",
                "text/plain",
                "p",
                "old",
            ][..],
        )
        .query_async(&mut con)
        .await
        .unwrap();
    let read = store.read(&t, 0, 10, usize::MAX).await.unwrap();
    // The trace context is kept; the others have none.
    let traces: Vec<_> = read.messages.iter().map(|m| m.trace().cloned()).collect();
    assert_eq!(traces, [trace, None, None]);
    let got: Vec<_> = read
        .messages
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(m.payload()).into_owned(),
                m.event_type().map(|e| e.to_string()),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("typed".to_owned(), Some("invoice.paid".to_owned())),
            ("untyped".to_owned(), None),
            ("old".to_owned(), None),
        ]
    );
    assert_eq!(read.messages[2].content_type().unwrap(), "text/plain");
}

fn keyed(key: &str, payload: &str) -> NewMessage {
    NewMessage {
        idempotency: Some(broker_core::Keyed {
            key: broker_core::IdempotencyKey::new(key).unwrap(),
            fingerprint: broker_core::fingerprint(None, payload.as_bytes()),
            subscribers: 4,
        }),
        ..new(payload.to_owned())
    }
}

/// Sixteen tasks on two stores (two replicas) append one key at once:
/// one message, every answer its id. The key refuses another payload on
/// either store, is forgotten past the count cap (per topic) and with
/// its topic, and a batch repeating a key inside itself makes one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_appended_by_two_stores_at_once_makes_one_message() {
    let server = RedisServer::start();
    let limits = broker_core::IdempotencyLimits {
        max_keys: 3,
        ..broker_core::IdempotencyLimits::default()
    };
    let options = || Options {
        idempotency: limits,
        ..Options::default()
    };
    let stores = [
        Arc::new(open(&server, options()).await),
        Arc::new(open(&server, options()).await),
    ];
    let t = topic("t");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, t) = (stores[i % 2].clone(), t.clone());
            // Published first: the oldest key, whatever the clock does.
            let mut first = keyed("k", "once");
            first.published_at -= Duration::from_secs(10);
            tokio::spawn(async move { store.append(&t, vec![first]).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().unwrap().remove(0));
    }
    let new_ones = answers.iter().filter(|a| a.new_message().is_some()).count();
    assert_eq!(new_ones, 1);
    assert!(answers
        .iter()
        .all(|a| a.id() == answers[0].id() && a.offset() == 0));
    assert!(answers.iter().all(|a| match a {
        broker_core::Appended::Replayed(o) => o.subscribers == 4,
        broker_core::Appended::New(_) => true,
    }));
    assert_eq!(stores[1].bounds(&t).await.unwrap(), (0, 1));
    for store in &stores {
        let reused = store.append(&t, vec![keyed("k", "other")]).await;
        assert_eq!(
            reused.unwrap_err(),
            broker_core::Error::IdempotencyKeyReused
        );
    }
    // One key twice in a batch; a clash inside a batch appends nothing.
    let twice = stores[0]
        .append(&t, vec![keyed("b", "x"), new("plain"), keyed("b", "x")])
        .await
        .unwrap();
    let shape: Vec<(bool, u64)> = twice
        .iter()
        .map(|a| (a.new_message().is_some(), a.offset()))
        .collect();
    assert_eq!(shape, [(true, 1), (true, 2), (false, 1)]);
    let clash = stores[1]
        .append(&t, vec![keyed("c", "x"), keyed("c", "y")])
        .await;
    assert_eq!(clash.unwrap_err(), broker_core::Error::IdempotencyKeyReused);
    assert_eq!(stores[0].bounds(&t).await.unwrap(), (0, 3));
    // Past the cap of three keys, the oldest ("k") goes.
    for key in ["d", "e"] {
        stores[0].append(&t, vec![keyed(key, key)]).await.unwrap();
    }
    let again = stores[1]
        .append(&t, vec![keyed("k", "other")])
        .await
        .unwrap();
    assert_eq!(again[0].offset(), 5);
    assert!(again[0].new_message().is_some());
    // Deleted with its topic.
    stores[0].delete_topic(&t).await.unwrap();
    assert!(redis_keys(&server)
        .await
        .iter()
        .all(|k| !k.contains("{t:t}")));
}

/// The attempt log: bounded per subscriber, read by another store (a
/// second replica) at once, paged and filtered, gone with its subscriber.
#[tokio::test]
async fn the_attempt_log_is_bounded_shared_and_goes_with_its_subscriber() {
    let server = RedisServer::start();
    let t = topic("t");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let attempt = |i: u64, status: Option<u16>| broker_core::AttemptRecord {
        seq: now + i,
        message_id: format!("msg_{i}"),
        offset: i,
        attempt: 1,
        duration_ms: 5,
        status,
        error: status.is_none().then(|| "connection refused".to_owned()),
        response: status.map(|_| bytes::Bytes::from_static(b"\xffbinary")),
    };
    let offsets =
        |found: Vec<broker_core::AttemptRecord>| found.iter().map(|a| a.offset).collect::<Vec<_>>();
    let all = broker_core::AttemptQuery::default();
    let a = open(&server, Options::default()).await;
    let b = open(&server, Options::default()).await;
    for id in ["sub_1", "sub_2"] {
        a.save(Change::Put(&subscriber(id, 0))).await.unwrap();
    }
    let records: Vec<_> = (1..=300)
        .map(|i| attempt(i, if i % 3 == 0 { None } else { Some(200) }))
        .collect();
    a.record_attempts(&t, "sub_1", records.clone(), 250)
        .await
        .unwrap();
    a.record_attempts(&t, "sub_2", vec![attempt(1, Some(500))], 250)
        .await
        .unwrap();
    a.record_attempts(&t, "sub_gone", vec![attempt(1, Some(500))], 250)
        .await
        .unwrap();
    // Listed on a, which writes what it buffered first; then b reads it.
    let listed = a.attempts(&t, "sub_1", &all).await.unwrap();
    assert_eq!(listed[0], records[299], "read back whole");
    let shared = b
        .attempts(
            &t,
            "sub_1",
            &broker_core::AttemptQuery {
                limit: 1_000,
                ..all.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(shared), (51..=300).rev().collect::<Vec<_>>());
    let failed_page = broker_core::AttemptQuery {
        limit: 3,
        succeeded: Some(false),
        before: Some(now + 297),
        ..all.clone()
    };
    assert_eq!(
        offsets(b.attempts(&t, "sub_1", &failed_page).await.unwrap()),
        [294, 291, 288]
    );
    let one = broker_core::AttemptQuery {
        message_id: Some("msg_100".into()),
        ..all.clone()
    };
    assert_eq!(offsets(b.attempts(&t, "sub_1", &one).await.unwrap()), [100]);
    assert_eq!(offsets(b.attempts(&t, "sub_2", &all).await.unwrap()), [1]);
    assert!(b.attempts(&t, "sub_gone", &all).await.unwrap().is_empty());
    b.save(Change::Remove { id: "sub_1" }).await.unwrap();
    assert!(a.attempts(&t, "sub_1", &all).await.unwrap().is_empty());
    assert!(!redis_keys(&server)
        .await
        .iter()
        .any(|k| k.contains("attempts:sub_1")));
}
