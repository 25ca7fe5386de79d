//! The `Broker` behavioural suite on the embedded queue: SQLite, and the real PostgreSQL server;
//! then what the SQL queue promises beyond the suite: a batch is stored all or nothing, and a
//! write refused in a group commit leaves the others of its transaction alone, and SQLite's
//! checkpoints happen beside the writer.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Broker, BrokerError, Outgoing};
use keel_sql_postgres::PostgresQueue;
use keel_sql_sqlite::{QueueLimits, SqliteQueue, SqliteSync};
use keel_test_support::broker_suite::{SUITE_MAX_BODY, SUITE_MAX_DEPTH};

fn limits() -> QueueLimits {
    QueueLimits {
        max_depth: SUITE_MAX_DEPTH,
        max_body_bytes: SUITE_MAX_BODY,
    }
}

async fn sqlite(limits: QueueLimits) -> (tempfile::TempDir, Arc<dyn Broker>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queue = SqliteQueue::open(&url, limits).await.unwrap();
    (dir, Arc::new(queue))
}

async fn postgres(limits: QueueLimits) -> Arc<dyn Broker> {
    let url = keel_test_support::services::create_postgres_database().await;
    Arc::new(PostgresQueue::open(&url, limits).await.unwrap())
}

mod sqlite_suite {
    async fn open() -> (tempfile::TempDir, std::sync::Arc<dyn keel_domain::Broker>) {
        super::sqlite(super::limits()).await
    }
    keel_test_support::broker_suite!(open);
}

mod postgres_suite {
    async fn open() -> ((), std::sync::Arc<dyn keel_domain::Broker>) {
        ((), super::postgres(super::limits()).await)
    }
    keel_test_support::broker_suite!(open);
}

const LEASE: Duration = Duration::from_secs(30);

fn batch(n: usize, tag: &str) -> Vec<(String, Outgoing)> {
    (0..n)
        .map(|i| {
            (
                "job.batch".to_owned(),
                Outgoing::new(format!("{tag}{i}").into_bytes()),
            )
        })
        .collect()
}

async fn a_batch_is_stored_all_or_nothing(broker: Arc<dyn Broker>) {
    broker.bind("all", "job.#").await.unwrap();
    broker.publish_many(&batch(3, "first")).await.unwrap();
    assert!(matches!(
        broker.publish_many(&batch(3, "over")).await,
        Err(BrokerError::Full)
    ));
    assert_eq!(
        broker.depth("all").await.unwrap().ready,
        3,
        "no message of the refused batch was stored"
    );
    let mut invalid = batch(2, "bad");
    invalid[1].1.body = vec![0; SUITE_MAX_BODY + 1];
    assert!(matches!(
        broker.publish_many(&invalid).await,
        Err(BrokerError::Invalid { what: "body", .. })
    ));
    assert_eq!(broker.depth("all").await.unwrap().ready, 3);
    broker.publish_many(&batch(2, "fits")).await.unwrap();
    let got = broker.fetch("all", 10, LEASE).await.unwrap();
    let bodies: Vec<_> = got
        .iter()
        .map(|d| String::from_utf8(d.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, ["first0", "first1", "first2", "fits0", "fits1"]);
}

#[tokio::test]
async fn sqlite_stores_a_batch_all_or_nothing() {
    let limits = QueueLimits {
        max_depth: 5,
        ..limits()
    };
    let (_dir, queue) = sqlite(limits).await;
    a_batch_is_stored_all_or_nothing(queue).await;
}

#[tokio::test]
async fn postgres_stores_a_batch_all_or_nothing() {
    let limits = QueueLimits {
        max_depth: 5,
        ..limits()
    };
    a_batch_is_stored_all_or_nothing(postgres(limits).await).await;
}

/// A batch near the bound: copies of ids stored already take no room (a producer's retry at a
/// full group is absorbed, not refused), and a batch with one new message too many is refused
/// whole, its republished copies included.
async fn republished_copies_take_no_room(broker: Arc<dyn Broker>) {
    broker.bind("edge", "job.#").await.unwrap();
    let first = batch(4, "edge");
    broker.publish_many(&first).await.unwrap();
    let mut again = first.clone();
    again.extend(batch(1, "last"));
    broker.publish_many(&again).await.unwrap();
    assert_eq!(broker.depth("edge").await.unwrap().ready, 5, "stored once");
    broker.publish_many(&first).await.unwrap();
    let mut mixed = vec![first[0].clone()];
    mixed.extend(batch(1, "over"));
    assert!(matches!(
        broker.publish_many(&mixed).await,
        Err(BrokerError::Full)
    ));
    let got = broker.fetch("edge", 10, LEASE).await.unwrap();
    let bodies: Vec<_> = got
        .iter()
        .map(|d| String::from_utf8(d.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, ["edge0", "edge1", "edge2", "edge3", "last0"]);
}

#[tokio::test]
async fn sqlite_republished_copies_take_no_room() {
    let limits = QueueLimits {
        max_depth: 5,
        ..limits()
    };
    let (_dir, queue) = sqlite(limits).await;
    republished_copies_take_no_room(queue).await;
}

#[tokio::test]
async fn postgres_republished_copies_take_no_room() {
    let limits = QueueLimits {
        max_depth: 5,
        ..limits()
    };
    republished_copies_take_no_room(postgres(limits).await).await;
}

/// Concurrent writes share transactions on SQLite; a batch refused for want of room must leave
/// the writes committed beside it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_leaves_the_writes_committed_beside_it() {
    for _round in 0..10 {
        let limits = QueueLimits {
            max_depth: 10,
            ..limits()
        };
        let (_dir, queue) = sqlite(limits).await;
        queue.bind("side", "job.#").await.unwrap();
        queue.publish_many(&batch(8, "fill")).await.unwrap();
        let over = batch(3, "over");
        let (over, one, two) = tokio::join!(
            queue.publish_many(&over),
            queue.publish("job.one", Outgoing::new(b"one".to_vec())),
            queue.publish("job.two", Outgoing::new(b"two".to_vec())),
        );
        assert!(matches!(over, Err(BrokerError::Full)), "{over:?}");
        assert!(one.unwrap() && two.unwrap());
        let got = queue.fetch("side", 20, LEASE).await.unwrap();
        assert_eq!(got.len(), 10, "8 + the two singles, none of the batch");
        assert!(got.iter().all(|d| !d.body.starts_with(b"over")));
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        assert!(queue.ack_many(&tags).await.iter().all(Result::is_ok));
        assert_eq!(queue.depth("side").await.unwrap().ready, 0);
        // The depth counter agrees: the bound admits exactly ten again.
        queue.publish_many(&batch(10, "again")).await.unwrap();
        assert!(matches!(
            queue
                .publish("job.more", Outgoing::new(b"more".to_vec()))
                .await,
            Err(BrokerError::Full)
        ));
    }
}

/// Many publishers and acknowledgers at once on one SQLite file: every publish that returned is
/// stored once, and the writes of many callers are committed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_each_stored_once() {
    let (_dir, queue) = sqlite(QueueLimits::default()).await;
    queue.bind("many", "job.#").await.unwrap();
    let publishers = (0..50).map(|p| {
        let queue = queue.clone();
        tokio::spawn(async move {
            for i in 0..10 {
                queue
                    .publish("job.x", Outgoing::new(format!("{p}-{i}").into_bytes()))
                    .await
                    .unwrap();
            }
        })
    });
    for p in publishers.collect::<Vec<_>>() {
        p.await.unwrap();
    }
    let mut bodies = std::collections::HashSet::new();
    loop {
        let got = queue.fetch("many", 64, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        for d in got {
            assert!(bodies.insert(d.body), "stored once");
        }
        assert!(queue.ack_many(&tags).await.iter().all(Result::is_ok));
    }
    assert_eq!(bodies.len(), 500);
}

/// A batch larger than one insert statement, with ids already stored and an id repeated in the
/// batch: every new message is stored once, in publish order, and the depth bound counts only
/// what was stored.
async fn a_large_batch_keeps_order_and_stores_republished_ids_once(broker: Arc<dyn Broker>) {
    broker.bind("large", "job.#").await.unwrap();
    let first = batch(30, "old");
    broker.publish_many(&first).await.unwrap();
    let mut big = batch(250, "new");
    // Ids stored by the first batch, and one id twice in this batch.
    big[7].1.id = first[3].1.id;
    big[120].1.id = first[29].1.id;
    big[200].1.id = big[199].1.id;
    broker.publish_many(&big).await.unwrap();
    let depth = broker.depth("large").await.unwrap();
    assert_eq!(
        depth.ready,
        30 + 247,
        "the three repeated ids were not stored again"
    );
    let mut bodies = Vec::new();
    loop {
        let got = broker.fetch("large", 100, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        bodies.extend(got.into_iter().map(|d| String::from_utf8(d.body).unwrap()));
        assert!(broker.ack_many(&tags).await.iter().all(Result::is_ok));
    }
    let expected: Vec<String> = (0..30)
        .map(|i| format!("old{i}"))
        .chain(
            (0..250)
                .filter(|i| ![7, 120, 200].contains(i))
                .map(|i| format!("new{i}")),
        )
        .collect();
    assert_eq!(bodies, expected);
    // The depth counter agrees with what was removed: the bound admits `max_depth` again.
    broker.publish_many(&batch(300, "refill")).await.unwrap();
    assert!(matches!(
        broker.publish_many(&batch(201, "flood")).await,
        Err(BrokerError::Full)
    ));
}

#[tokio::test]
async fn sqlite_stores_a_large_batch_in_order_and_each_id_once() {
    let limits = QueueLimits {
        max_depth: 500,
        ..limits()
    };
    let (_dir, queue) = sqlite(limits).await;
    a_large_batch_keeps_order_and_stores_republished_ids_once(queue).await;
}

#[tokio::test]
async fn postgres_stores_a_large_batch_in_order_and_each_id_once() {
    let limits = QueueLimits {
        max_depth: 500,
        ..limits()
    };
    a_large_batch_keeps_order_and_stores_republished_ids_once(postgres(limits).await).await;
}

/// `synchronous = FULL` stays available (`queue.sqlite_synchronous = "full"`).
mod sqlite_full_synchronous_suite {
    use super::*;

    async fn open() -> (tempfile::TempDir, Arc<dyn Broker>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        let queue = SqliteQueue::open_with(&url, limits(), SqliteSync::Full)
            .await
            .unwrap();
        (dir, Arc::new(queue))
    }
    keel_test_support::broker_suite!(open);
}

/// On PostgreSQL, publishes and acks run concurrently in many transactions (acks count their
/// removals apart from the publishes' depth row): the group never holds more than its bound, and
/// once everything is acknowledged the bound admits exactly `max_depth` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_publishes_and_acks_keep_the_bound() {
    const MAX: u64 = 40;
    let queue = postgres(QueueLimits {
        max_depth: MAX,
        ..limits()
    })
    .await;
    queue.bind("bound", "job.#").await.unwrap();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut stored = 0;
                for round in 0..30 {
                    match queue
                        .publish_many(&batch(5, &format!("p{p}r{round}-")))
                        .await
                    {
                        Ok(_) => stored += 5,
                        Err(BrokerError::Full) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                stored
            })
        })
        .collect();
    let ackers: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut acked = 0;
                for _ in 0..60 {
                    let depth = queue.depth("bound").await.unwrap();
                    assert!(depth.ready + depth.in_flight <= MAX, "{depth:?}");
                    let got = queue.fetch("bound", 7, LEASE).await.unwrap();
                    let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
                    acked += queue
                        .ack_many(&tags)
                        .await
                        .iter()
                        .filter(|r| r.is_ok())
                        .count();
                }
                acked
            })
        })
        .collect();
    let mut stored = 0;
    for p in publishers {
        stored += p.await.unwrap();
    }
    let mut acked = 0;
    for a in ackers {
        acked += a.await.unwrap();
    }
    let depth = queue.depth("bound").await.unwrap();
    assert_eq!(depth.ready + depth.in_flight, (stored - acked) as u64);
    // Drain, then the counters agree with the table: exactly MAX fits again.
    loop {
        let got = queue.fetch("bound", 100, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        assert!(queue.ack_many(&tags).await.iter().all(Result::is_ok));
    }
    queue
        .publish_many(&batch(MAX as usize, "refill"))
        .await
        .unwrap();
    assert!(matches!(
        queue
            .publish("job.more", Outgoing::new(b"more".to_vec()))
            .await,
        Err(BrokerError::Full)
    ));
}

/// A PostgreSQL queue routes publishes with the bindings it read last: a group bound since,
/// by another process, still receives every message published after its bind.
#[tokio::test]
async fn postgres_publishes_follow_bindings_made_by_another_process() {
    let url = keel_test_support::services::create_postgres_database().await;
    let one = PostgresQueue::open(&url, limits()).await.unwrap();
    let other = PostgresQueue::open(&url, limits()).await.unwrap();
    one.bind("first", "job.#").await.unwrap();
    assert!(
        one.publish("job.a", Outgoing::new(b"a".to_vec()))
            .await
            .unwrap()
    );
    assert!(
        !one.publish("late.a", Outgoing::new(b"x".to_vec()))
            .await
            .unwrap(),
        "nothing bound to late.#"
    );
    other.bind("second", "job.#").await.unwrap();
    other.bind("late", "late.#").await.unwrap();
    assert!(
        one.publish("job.b", Outgoing::new(b"b".to_vec()))
            .await
            .unwrap()
    );
    assert!(
        one.publish("late.b", Outgoing::new(b"y".to_vec()))
            .await
            .unwrap()
    );
    let bodies = |got: Vec<keel_domain::Delivery>| -> Vec<Vec<u8>> {
        got.into_iter().map(|d| d.body).collect()
    };
    assert_eq!(
        bodies(one.fetch("second", 10, LEASE).await.unwrap()),
        [b"b".to_vec()]
    );
    assert_eq!(
        bodies(one.fetch("late", 10, LEASE).await.unwrap()),
        [b"y".to_vec()]
    );
    assert_eq!(
        bodies(one.fetch("first", 10, LEASE).await.unwrap()),
        [b"a".to_vec(), b"b".to_vec()]
    );
}

/// The writer never checkpoints on its own (`wal_autocheckpoint = 0`): the checkpointer beside it
/// copies committed pages back into the database file. Without it, the file would keep only its
/// schema and the WAL would hold everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_reach_the_database_file_through_the_checkpointer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queue.db");
    let url = format!("sqlite://{}", file.display());
    let queue = SqliteQueue::open(&url, QueueLimits::default())
        .await
        .unwrap();
    queue.bind("bulk", "job.#").await.unwrap();
    let empty = std::fs::metadata(&file).unwrap().len();
    for round in 0..20 {
        let batch: Vec<(String, Outgoing)> = (0..100)
            .map(|i| {
                (
                    "job.bulk".to_owned(),
                    Outgoing::new(vec![(round + i) as u8; 2048]),
                )
            })
            .collect();
        queue.publish_many(&batch).await.unwrap();
    }
    // 2,000 bodies of 2 KiB: about 4 MB once checkpointed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&file).unwrap().len();
        if size > empty + 3_000_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {size} bytes (empty: {empty}): nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue.depth("bulk").await.unwrap().ready, 2000);
}
