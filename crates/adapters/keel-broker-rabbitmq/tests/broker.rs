//! The `Broker` behavioural suite and the multi-process behaviours on the real RabbitMQ server,
//! each test in a fresh namespace whose queues expire after the test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_broker_rabbitmq::{RabbitBroker, RabbitOptions};
use keel_domain::{Broker, BrokerError, Delivery, Outgoing};
use keel_test_support::broker_suite::{SUITE_MAX_BODY, SUITE_MAX_DEPTH};
use keel_test_support::services::{fresh_namespace, rabbitmq_url};
use lapin::options::{
    BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const LEASE: Duration = Duration::from_secs(30);

fn options(namespace: &str, quorum: bool) -> RabbitOptions {
    RabbitOptions {
        namespace: namespace.to_owned(),
        max_depth: SUITE_MAX_DEPTH,
        max_body_bytes: SUITE_MAX_BODY,
        quorum,
        // A quorum queue is a Raft group of its own: fewer of them keep the server responsive
        // while many tests run at once. Classic queues keep the default.
        partitions: if quorum {
            3
        } else {
            RabbitOptions::default().partitions
        },
        // Classic queues left behind by a crashed test run go away by themselves; quorum
        // queues cannot expire (see `RabbitOptions`), `Namespace` deletes them.
        expire_unused_after: (!quorum).then_some(Duration::from_secs(120)),
        // Creating quorum queues on a loaded machine can take seconds.
        timeout: Duration::from_secs(30),
        ..RabbitOptions::default()
    }
}

/// A fresh namespace whose queues and exchanges are deleted when it is dropped, even by a
/// failing test.
struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        Self(fresh_namespace())
    }
}

impl std::ops::Deref for Namespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let namespace = self.0.clone();
        let _ = keel_test_support::process::block_on_own_thread(async move {
            delete_namespace(&namespace).await;
        });
    }
}

/// Deletes every queue and exchange named `namespace` or `namespace/...`.
async fn delete_namespace(namespace: &str) {
    let connection = Connection::connect(&rabbitmq_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let ours = |name: &&str| *name == namespace || name.starts_with(&format!("{namespace}/"));
    for name in rabbitmqctl_names("list_queues")
        .iter()
        .map(String::as_str)
        .filter(ours)
    {
        channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    for name in rabbitmqctl_names("list_exchanges")
        .iter()
        .map(String::as_str)
        .filter(ours)
    {
        channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
}

fn rabbitmqctl_names(listing: &str) -> Vec<String> {
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", listing, "--no-table-headers", "name"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn broker(namespace: &str, quorum: bool) -> RabbitBroker {
    RabbitBroker::connect(&rabbitmq_url(), options(namespace, quorum))
        .await
        .expect("RabbitMQ reachable")
}

/// Fetches from `group` until a delivery comes or `within` passes.
async fn fetch_one(broker: &RabbitBroker, group: &str, within: Duration) -> Option<Delivery> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match broker.fetch(group, 1, LEASE).await {
            Ok(mut got) if !got.is_empty() => return Some(got.remove(0)),
            // A reconnect in progress: the next call opens new connections.
            Ok(_) | Err(BrokerError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("fetch failed: {e:?}"),
        }
    }
    None
}

/// Ready messages in a queue, read with a plain client.
async fn queue_length(queue: &str) -> u32 {
    let connection = Connection::connect(&rabbitmq_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    declared.message_count()
}

mod classic_queues {
    async fn open() -> (super::Namespace, std::sync::Arc<dyn keel_domain::Broker>) {
        let namespace = super::Namespace::new();
        let broker = super::broker(&namespace, false).await;
        (namespace, std::sync::Arc::new(broker))
    }
    keel_test_support::broker_suite!(open;
        a_publish_reaches_every_bound_group_once,
        a_leased_message_is_not_delivered_twice_and_ack_removes_it,
        an_expired_lease_redelivers_and_the_old_holder_cannot_ack,
        messages_of_one_key_come_in_order_while_other_keys_pass,
        a_retry_waits_its_delay_and_keeps_its_key_blocked,
        a_redelivery_reaches_only_its_group,
        bad_names_and_oversized_bodies_are_refused,
        competing_workers_share_the_messages_without_duplicates,
        competing_workers_keep_each_keys_order_and_run_keys_in_parallel,
        a_full_group_pushes_back_on_the_producer,
        a_published_batch_arrives_in_order_and_says_what_was_routed,
        a_batch_of_acks_settles_each_tag_and_refuses_stale_ones,
        a_batch_that_does_not_fit_is_refused_with_full,
    );

    /// RabbitMQ has no publish deduplication, and says so; consumers absorb a republished copy.
    #[tokio::test]
    async fn a_republished_message_is_not_promised_to_be_stored_once() {
        let (_namespace, broker) = open().await;
        assert!(!broker.capabilities().dedupes_publish);
    }
}

/// Every behaviour but the exact depth bound, which quorum queues keep with hysteresis (see
/// `quorum_queues_push_back_with_hysteresis`).
mod quorum_queues {
    async fn open() -> (super::Namespace, std::sync::Arc<dyn keel_domain::Broker>) {
        let namespace = super::Namespace::new();
        let broker = super::broker(&namespace, true).await;
        (namespace, std::sync::Arc::new(broker))
    }
    keel_test_support::broker_suite!(open;
        a_publish_reaches_every_bound_group_once,
        a_leased_message_is_not_delivered_twice_and_ack_removes_it,
        an_expired_lease_redelivers_and_the_old_holder_cannot_ack,
        messages_of_one_key_come_in_order_while_other_keys_pass,
        a_retry_waits_its_delay_and_keeps_its_key_blocked,
        a_redelivery_reaches_only_its_group,
        bad_names_and_oversized_bodies_are_refused,
        competing_workers_share_the_messages_without_duplicates,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_push_back_with_hysteresis() {
    let max_depth = 10;
    let namespace = Namespace::new();
    let broker = RabbitBroker::connect(
        &rabbitmq_url(),
        RabbitOptions {
            max_depth,
            ..options(&namespace, true)
        },
    )
    .await
    .unwrap();
    broker.bind("flood", "flood").await.unwrap();
    let mut stored = 0;
    loop {
        match broker.publish("flood", Outgoing::new(vec![1])).await {
            Ok(true) => stored += 1,
            Err(BrokerError::Full) => break,
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            stored <= max_depth + 1,
            "one publish past the bound at most"
        );
    }
    assert!(stored >= max_depth);
    assert_eq!(broker.depth("flood").await.unwrap().ready, stored);
    // Below 80% of the bound the queue takes messages again. The first fetch prefetches all of
    // them, so handle them until the queue is empty.
    while let Some(d) = fetch_one(&broker, "flood", Duration::from_millis(100)).await {
        broker.ack(d.tag).await.unwrap();
    }
    assert!(
        broker
            .publish("flood", Outgoing::new(vec![2]))
            .await
            .unwrap()
    );
}

/// Two brokers on two connections pairs, like two processes, fetching one group.
async fn two_instances_share_a_group_without_duplicates(quorum: bool) {
    let namespace = Namespace::new();
    let one = Arc::new(broker(&namespace, quorum).await);
    let two = Arc::new(broker(&namespace, quorum).await);
    one.bind("shared", "work.#").await.unwrap();
    // Both consume before anything is published, so RabbitMQ shares the unkeyed queue.
    assert!(one.fetch("shared", 1, LEASE).await.unwrap().is_empty());
    assert!(two.fetch("shared", 1, LEASE).await.unwrap().is_empty());
    let mut sent = HashSet::new();
    for n in 0..150 {
        let message = Outgoing::new(format!("{n}").into_bytes());
        let message = match n % 3 {
            0 => message,
            _ => message.with_key(format!("key-{}", n % 10)),
        };
        sent.insert(message.id);
        assert!(two.publish("work.item", message).await.unwrap());
    }
    let workers = [one.clone(), two.clone()].map(|broker| {
        tokio::spawn(async move {
            let mut handled = Vec::new();
            loop {
                let batch = broker.fetch("shared", 8, LEASE).await.unwrap();
                if batch.is_empty() {
                    return handled;
                }
                for d in batch {
                    broker.ack(d.tag).await.unwrap();
                    handled.push(d);
                }
            }
        })
    });
    let mut all = Vec::new();
    let mut per_instance = Vec::new();
    for worker in workers {
        let handled = worker.await.unwrap();
        per_instance.push(handled.len());
        // Within one instance, every key's messages come in publish order.
        let mut last: HashMap<String, u32> = HashMap::new();
        for d in &handled {
            if let Some(key) = &d.key {
                let n: u32 = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
                assert!(last.insert(key.clone(), n).is_none_or(|before| before < n));
            }
        }
        all.extend(handled.into_iter().map(|d| d.id));
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), sent.len(), "every message handled exactly once");
    assert_eq!(unique, sent);
    assert!(
        per_instance.iter().all(|&n| n > 0),
        "both instances took part: {per_instance:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_classic_group_without_duplicates() {
    two_instances_share_a_group_without_duplicates(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_quorum_group_without_duplicates() {
    two_instances_share_a_group_without_duplicates(true).await;
}

/// A process dies holding a keyed and an unkeyed message: the other gets both, attempt 2.
async fn messages_held_by_a_dropped_instance_go_to_the_other(quorum: bool) {
    let namespace = Namespace::new();
    let doomed = broker(&namespace, quorum).await;
    let survivor = broker(&namespace, quorum).await;
    doomed.bind("orders", "order.*").await.unwrap();
    let keyed = Outgoing::new(b"keyed".to_vec()).with_key("order-1");
    let unkeyed = Outgoing::new(b"unkeyed".to_vec());
    doomed.publish("order.placed", keyed.clone()).await.unwrap();
    doomed
        .publish("order.placed", unkeyed.clone())
        .await
        .unwrap();
    let mut held = Vec::new();
    while held.len() < 2 {
        let batch = fetch_one(&doomed, "orders", Duration::from_secs(5)).await;
        held.push(batch.expect("both delivered"));
    }
    assert!(held.iter().all(|d| d.attempt == 1));
    assert!(
        survivor
            .fetch("orders", 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "held by the other instance"
    );
    drop(doomed); // its connections close without an ack, as when a process dies

    let mut again = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.len() < 2 && Instant::now() < deadline {
        for d in survivor.fetch("orders", 10, LEASE).await.unwrap() {
            again.insert(d.id, d);
        }
    }
    for sent in [&keyed, &unkeyed] {
        let d = &again[&sent.id];
        assert_eq!((d.body.as_slice(), d.attempt), (sent.body.as_slice(), 2));
        survivor.ack(d.tag).await.unwrap();
    }
    assert_eq!(survivor.depth("orders").await.unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_messages_held_by_a_dropped_instance_go_to_the_other_with_attempt_2() {
    messages_held_by_a_dropped_instance_go_to_the_other(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_messages_held_by_a_dropped_instance_go_to_the_other_with_attempt_2() {
    messages_held_by_a_dropped_instance_go_to_the_other(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_message_that_keeps_killing_its_consumers_is_dead_lettered() {
    let namespace = Namespace::new();
    let limited = || RabbitOptions {
        delivery_limit: Some(1),
        ..options(&namespace, true)
    };
    let first = RabbitBroker::connect(&rabbitmq_url(), limited())
        .await
        .unwrap();
    first.bind("poison", "poison").await.unwrap();
    first
        .publish("poison", Outgoing::new(b"boom".to_vec()).with_key("k"))
        .await
        .unwrap();
    assert_eq!(first.fetch("poison", 1, LEASE).await.unwrap().len(), 1);
    drop(first);
    let second = RabbitBroker::connect(&rabbitmq_url(), limited())
        .await
        .unwrap();
    let d = fetch_one(&second, "poison", Duration::from_secs(10))
        .await
        .expect("delivered again once");
    assert_eq!(d.attempt, 2);
    drop(second);
    let third = RabbitBroker::connect(&rabbitmq_url(), limited())
        .await
        .unwrap();
    assert!(
        fetch_one(&third, "poison", Duration::from_secs(1))
            .await
            .is_none(),
        "not delivered a third time"
    );
    assert_eq!(queue_length(&format!("{namespace}/~dead")).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_is_dead_lettered_not_handed_out() {
    let namespace = Namespace::new();
    let broker = broker(&namespace, false).await;
    broker.bind("mixed", "mixed").await.unwrap();
    // A message some other client put in the group's queue, with no keel message id.
    let connection = Connection::connect(&rabbitmq_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            format!("{namespace}/mixed/u").into(),
            BasicPublishOptions::default(),
            b"raw",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    broker
        .publish("mixed", Outgoing::new(b"keel".to_vec()))
        .await
        .unwrap();
    let got = fetch_one(&broker, "mixed", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.body, b"keel");
    broker.ack(got.tag).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue_length(&format!("{namespace}/~dead")).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue_length(&format!("{namespace}/~dead")).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    let refused = RabbitBroker::connect(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        options(&fresh_namespace(), false),
    )
    .await;
    assert!(matches!(refused, Err(BrokerError::Unavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_refused() {
    for bad in [
        RabbitOptions {
            namespace: "a/b".into(),
            ..RabbitOptions::default()
        },
        RabbitOptions {
            namespace: "n".repeat(49),
            ..RabbitOptions::default()
        },
        RabbitOptions {
            partitions: 0,
            ..RabbitOptions::default()
        },
    ] {
        assert!(matches!(
            RabbitBroker::connect(&rabbitmq_url(), bad).await,
            Err(BrokerError::Invalid { .. })
        ));
    }
}

/// Closes the server side of every connection of `namespace`, as a broker restart or a network
/// cut would.
fn close_connections(namespace: &str) -> usize {
    let listed = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let mut closed = 0;
    for line in listed.lines().filter(|l| l.contains(namespace)) {
        let pid = line.split_whitespace().next().unwrap();
        let status = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "test: connection cut"])
            .status()
            .unwrap();
        assert!(status.success());
        closed += 1;
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_replaced_and_its_deliveries_come_back() {
    let namespace = Namespace::new();
    let broker = broker(&namespace, false).await;
    broker.bind("cut", "cut").await.unwrap();
    let sent = Outgoing::new(b"in flight".to_vec()).with_key("k");
    broker.publish("cut", sent.clone()).await.unwrap();
    let held = broker.fetch("cut", 1, LEASE).await.unwrap();
    assert_eq!(held.len(), 1);

    assert_eq!(close_connections(&namespace), 2, "publishing and consuming");
    let again = fetch_one(&broker, "cut", Duration::from_secs(10))
        .await
        .expect("delivered again after the reconnect");
    assert_eq!((again.id, again.attempt), (sent.id, 2));
    assert!(matches!(
        broker.ack(held[0].tag).await,
        Err(BrokerError::LeaseLost)
    ));
    broker.ack(again.tag).await.unwrap();
    assert!(
        broker
            .publish("cut", Outgoing::new(b"after".to_vec()))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_partition_the_group_lacks_is_dead_lettered_not_lost() {
    let namespace = Namespace::new();
    let consumer = RabbitBroker::connect(
        &rabbitmq_url(),
        RabbitOptions {
            partitions: 1,
            ..options(&namespace, false)
        },
    )
    .await
    .unwrap();
    consumer.bind("narrow", "narrow").await.unwrap();
    // A misconfigured publisher spreads keys over more partitions than the group has.
    let publisher = broker(&namespace, false).await;
    let keys: Vec<String> = (0..20).map(|n| format!("key-{n}")).collect();
    for key in &keys {
        let message = Outgoing::new(b"x".to_vec()).with_key(key.as_str());
        assert!(publisher.publish("narrow", message).await.unwrap());
    }
    let mut delivered = 0;
    while let Some(d) = fetch_one(&consumer, "narrow", Duration::from_millis(200)).await {
        consumer.ack(d.tag).await.unwrap();
        delivered += 1;
    }
    let dead = queue_length(&format!("{namespace}/~dead")).await;
    assert!(dead > 0, "some keys hash beyond partition 0");
    assert_eq!(delivered + dead as usize, keys.len(), "none lost");
}
