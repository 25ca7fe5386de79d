//! Large bodies go to the file store and come back to every group; the file goes when the last
//! group is done with it.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Broker, BrokerError, Outgoing};
use keel_messaging::offload::{BODY_REF, Offloading};
use keel_sql_sqlite::{QueueLimits, SqliteQueue};

const LEASE: Duration = Duration::from_secs(30);

async fn broker(dir: &std::path::Path) -> Offloading {
    let url = format!("sqlite://{}", dir.join("queue.db").display());
    let limits = QueueLimits {
        max_depth: 100,
        max_body_bytes: 1024,
    };
    let inner = Arc::new(SqliteQueue::open(&url, limits).await.unwrap());
    let bindings: Vec<(String, String)> =
        vec![("a".into(), "big.*".into()), ("b".into(), "big.#".into())];
    for (group, pattern) in &bindings {
        inner.bind(group, pattern).await.unwrap();
    }
    Offloading::new(inner, dir.join("blobs"), 1024, 1 << 20, bindings)
}

fn files(dir: &std::path::Path) -> usize {
    walk(&dir.join("blobs"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { walk(&p) } else { 1 })
            .sum()
    })
}

#[tokio::test]
async fn a_large_body_travels_by_reference_and_is_deleted_after_the_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let body: Vec<u8> = (0..100_000u32).map(|n| n as u8).collect();
    let sent = Outgoing::new(body.clone());
    assert!(broker.publish("big.one", sent.clone()).await.unwrap());
    assert_eq!(files(dir.path()), 2, "one link per receiving group");

    let a = broker.fetch("a", 10, LEASE).await.unwrap();
    assert_eq!(a[0].body, body, "the group gets the whole body back");
    assert!(!a[0].headers.contains_key(BODY_REF));
    broker.ack(a[0].tag).await.unwrap();
    assert_eq!(files(dir.path()), 1, "b still needs it");

    let b = broker.fetch("b", 10, LEASE).await.unwrap();
    assert_eq!(b[0].body, body);
    broker.retry(b[0].tag, Duration::ZERO).await.unwrap();
    assert_eq!(files(dir.path()), 1, "a retry keeps the file");
    let b = broker.fetch("b", 10, LEASE).await.unwrap();
    assert_eq!((b[0].body.len(), b[0].attempt), (body.len(), 2));
    let acked = broker.ack_many(&[b[0].tag]).await;
    assert!(acked[0].is_ok());
    assert_eq!(files(dir.path()), 0, "gone after the last group's ack");
}

#[tokio::test]
async fn small_bodies_stay_inline_and_huge_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    broker
        .publish("big.small", Outgoing::new(vec![1; 1024]))
        .await
        .unwrap();
    assert_eq!(files(dir.path()), 0);
    let got = broker.fetch("a", 1, LEASE).await.unwrap();
    assert_eq!(got[0].body.len(), 1024);
    assert!(matches!(
        broker
            .publish("big.huge", Outgoing::new(vec![0; (1 << 20) + 1]))
            .await,
        Err(BrokerError::Invalid { what: "body", .. })
    ));
}

#[tokio::test]
async fn a_replay_to_one_group_offloads_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let sent = Outgoing::new(vec![7; 5000]);
    broker
        .redeliver("b", "big.replayed", sent.clone())
        .await
        .unwrap();
    assert_eq!(files(dir.path()), 1);
    let got = broker.fetch("b", 1, LEASE).await.unwrap();
    assert_eq!(got[0].body, sent.body);
    broker.ack(got[0].tag).await.unwrap();
    assert_eq!(files(dir.path()), 0);
}
