//! The PostgreSQL queue's floors (migration 0007): claims start their index walks at a group's
//! floor, so a floor must never pass a message that is, or will be, live. These tests drive the
//! floor keeper by hand (`advance_floors`) beside its background task.

use std::time::Duration;

use keel_domain::{Broker, Outgoing};
use keel_sql_postgres::{PostgresQueue, QueueLimits};
use sqlx::Connection;

const LEASE: Duration = Duration::from_secs(30);

async fn open() -> (String, PostgresQueue) {
    let url = keel_test_support::services::create_postgres_database().await;
    let queue = PostgresQueue::open(&url, QueueLimits::default())
        .await
        .unwrap();
    queue.bind("floors", "floor.#").await.unwrap();
    (url, queue)
}

/// Fetches and acknowledges until nothing is ready; returns the bodies in delivery order.
async fn drain(queue: &PostgresQueue) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let batch = queue.fetch("floors", 100, LEASE).await.unwrap();
        if batch.is_empty() {
            return seen;
        }
        for d in batch {
            seen.push(String::from_utf8(d.body.clone()).unwrap());
            queue.ack(d.tag).await.unwrap();
        }
    }
}

async fn publish(queue: &PostgresQueue, n: usize, tag: &str) {
    for i in 0..n {
        queue
            .publish("floor.job", Outgoing::new(format!("{tag}{i}").into_bytes()))
            .await
            .unwrap();
    }
}

async fn advance(queue: &PostgresQueue, steps: usize) {
    for _ in 0..steps {
        queue.advance_floors().await.unwrap();
    }
}

/// Advances until the floor reaches `target`, for up to 10 s: transaction ids are the whole
/// server's, so a write transaction of a test running beside this one (in any database) holds
/// every floor while it runs.
async fn advance_to(queue: &PostgresQueue, target: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        queue.advance_floors().await.unwrap();
        let floor = queue.floor("floors");
        if floor >= target || tokio::time::Instant::now() > deadline {
            return floor;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floors_follow_acknowledgements_and_reach_other_processes() {
    let (url, queue) = open().await;
    assert!(drain(&queue).await.is_empty());
    publish(&queue, 50, "m").await;
    assert_eq!(drain(&queue).await.len(), 50);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let last: i64 = sqlx::query_scalar("SELECT last_value FROM queue_messages_seq_seq")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        advance_to(&queue, last + 1).await,
        last + 1,
        "every message up to the last one drawn is acknowledged"
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT floor FROM queue_group_floors WHERE grp = 'floors'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, last + 1);

    // Messages published after the floor rose are delivered, one key in order.
    for i in 0..5 {
        queue
            .publish(
                "floor.job",
                Outgoing::new(format!("k{i}").into_bytes()).with_key("k"),
            )
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    loop {
        let batch = queue.fetch("floors", 10, LEASE).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert_eq!(batch.len(), 1, "one message of the key at a time");
        order.push(String::from_utf8(batch[0].body.clone()).unwrap());
        queue.ack(batch[0].tag).await.unwrap();
    }
    assert_eq!(order, ["k0", "k1", "k2", "k3", "k4"]);

    // Another process learns the floor from the table.
    let other = PostgresQueue::open(&url, QueueLimits::default())
        .await
        .unwrap();
    assert!(other.fetch("floors", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(other.floor("floors"), 0);
    assert!(advance_to(&other, last + 1).await > last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_still_uncommitted_keeps_the_floor_below_its_message() {
    let (url, queue) = open().await;
    assert!(drain(&queue).await.is_empty());
    // A publish that drew its seq and has not committed: no snapshot sees its row yet.
    let mut held = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut held).await.unwrap();
    let held_seq: i64 = sqlx::query_scalar(
        "INSERT INTO queue_messages (grp, id, topic, headers, body, published_at, available_at) \
         VALUES ('floors', gen_random_uuid(), 'floor.job', '{}', 'held'::bytea, 0, 0) RETURNING seq",
    )
    .fetch_one(&mut held)
    .await
    .unwrap();
    // Every later message is published and acknowledged, and the keeper runs.
    publish(&queue, 20, "later").await;
    assert_eq!(drain(&queue).await.len(), 20);
    advance(&queue, 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    advance(&queue, 2).await;
    assert!(
        queue.floor("floors") <= held_seq,
        "the floor {} passed the uncommitted message {held_seq}",
        queue.floor("floors")
    );
    sqlx::query("COMMIT").execute(&mut held).await.unwrap();
    assert_eq!(drain(&queue).await, ["held"]);
    assert!(
        advance_to(&queue, held_seq + 1).await > held_seq,
        "the floor moves on once it is acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_for_its_retry_holds_the_floor_and_its_key() {
    let (_url, queue) = open().await;
    for text in ["a1", "a2"] {
        queue
            .publish("floor.job", Outgoing::new(text.into()).with_key("a"))
            .await
            .unwrap();
    }
    let first = queue.fetch("floors", 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    let retried_seq = first[0].tag.seq;
    queue
        .retry(first[0].tag, Duration::from_millis(3000))
        .await
        .unwrap();
    // Much acknowledged behind it while it waits.
    publish(&queue, 30, "other").await;
    let passed = drain(&queue).await;
    assert_eq!(passed.len(), 30, "a2 stays behind a1: {passed:?}");
    advance(&queue, 4).await;
    assert!(queue.floor("floors") <= retried_seq);
    tokio::time::sleep(Duration::from_millis(3050)).await;
    assert_eq!(drain(&queue).await, ["a1", "a2"]);
}
