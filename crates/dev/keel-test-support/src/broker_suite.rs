//! The behavioural suite of the `Broker` port. Each backend invokes
//! [`broker_suite!`](crate::broker_suite), which runs every behaviour as its own test on a fresh
//! broker built with [`SUITE_MAX_DEPTH`] and [`SUITE_MAX_BODY`]. Each behaviour is
//! public too, so a backend with a documented difference (RabbitMQ quorum queues bound depth with
//! hysteresis) runs all the others.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Broker, BrokerError, Outgoing};

/// The limits the broker under test must be built with: a group holds at most this many
/// messages, and bodies are at most `MAX_BODY` bytes.
pub const SUITE_MAX_DEPTH: u64 = 300;
pub const SUITE_MAX_BODY: usize = 1024;

const LEASE: Duration = Duration::from_secs(30);

fn body(text: &str) -> Outgoing {
    Outgoing::new(text.as_bytes().to_vec())
}

/// One test per behaviour of the suite on one adapter: `$open` is an async fn returning
/// `(guard, Arc<dyn Broker>)`, a fresh, empty broker built with [`SUITE_MAX_DEPTH`] and
/// [`SUITE_MAX_BODY`]. A backend with a documented difference lists the behaviours it runs
/// after a `;`.
#[macro_export]
macro_rules! broker_suite {
    ($open:path) => {
        $crate::broker_suite!($open;
            a_publish_reaches_every_bound_group_once,
            a_leased_message_is_not_delivered_twice_and_ack_removes_it,
            an_expired_lease_redelivers_and_the_old_holder_cannot_ack,
            messages_of_one_key_come_in_order_while_other_keys_pass,
            a_retry_waits_its_delay_and_keeps_its_key_blocked,
            a_republished_message_is_stored_once,
            a_redelivery_reaches_only_its_group,
            bad_names_and_oversized_bodies_are_refused,
            competing_workers_share_the_messages_without_duplicates,
            competing_workers_keep_each_keys_order_and_run_keys_in_parallel,
            a_full_group_pushes_back_on_the_producer,
            a_published_batch_arrives_in_order_and_says_what_was_routed,
            a_batch_of_acks_settles_each_tag_and_refuses_stale_ones,
            a_batch_that_does_not_fit_is_refused_with_full,
        );
    };
    ($open:path; $($case:ident),* $(,)?) => {
        $crate::behaviours!($crate::broker_suite, $open; $($case),*);
    };
}

pub async fn a_publish_reaches_every_bound_group_once(broker: &Arc<dyn Broker>) {
    assert!(
        !broker.publish("fan.out", body("nobody")).await.unwrap(),
        "no binding, no copy"
    );
    broker.bind("fan-audit", "fan.out").await.unwrap();
    broker.bind("fan-notify", "fan.*").await.unwrap();
    broker.bind("fan-notify", "fan.#").await.unwrap(); // two matching patterns, still one copy
    broker.bind("fan-other", "other.*").await.unwrap();
    let sent = body("hello").with_key("k");
    assert!(broker.publish("fan.out", sent.clone()).await.unwrap());
    for group in ["fan-audit", "fan-notify"] {
        let got = broker.fetch(group, 10, LEASE).await.unwrap();
        assert_eq!(got.len(), 1, "{group} gets one copy");
        let d = &got[0];
        assert_eq!(
            (d.id, &d.body, d.topic.as_str(), d.key.as_deref(), d.attempt),
            (sent.id, &sent.body, "fan.out", Some("k"), 1)
        );
        assert_eq!(d.group, group);
        broker.ack(d.tag).await.unwrap();
    }
    assert!(
        broker
            .fetch("fan-other", 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_leased_message_is_not_delivered_twice_and_ack_removes_it(broker: &Arc<dyn Broker>) {
    broker.bind("lease", "suite.lease").await.unwrap();
    let mut sent = body("leased");
    sent.headers
        .insert("traceparent".into(), "00-abc-def-01".into());
    broker.publish("suite.lease", sent.clone()).await.unwrap();
    let first = broker.fetch("lease", 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].headers, sent.headers, "headers travel unchanged");
    assert!(
        broker.fetch("lease", 10, LEASE).await.unwrap().is_empty(),
        "a leased message is not handed out again"
    );
    let depth = broker.depth("lease").await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (0, 1));
    broker.ack(first[0].tag).await.unwrap();
    assert!(
        matches!(broker.ack(first[0].tag).await, Err(BrokerError::LeaseLost)),
        "a second ack is refused"
    );
    assert_eq!(broker.depth("lease").await.unwrap().in_flight, 0);
    assert!(broker.fetch("lease", 10, LEASE).await.unwrap().is_empty());
}

pub async fn an_expired_lease_redelivers_and_the_old_holder_cannot_ack(broker: &Arc<dyn Broker>) {
    broker.bind("expiry", "suite.expiry").await.unwrap();
    broker
        .publish("suite.expiry", body("slow worker"))
        .await
        .unwrap();
    let first = broker
        .fetch("expiry", 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(80)).await; // the broker's clock is the wall clock
    let second = broker.fetch("expiry", 1, LEASE).await.unwrap();
    assert_eq!(
        second.len(),
        1,
        "an expired lease makes the message deliverable again"
    );
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].attempt, 2);
    assert!(matches!(
        broker.ack(first[0].tag).await,
        Err(BrokerError::LeaseLost)
    ));
    broker.ack(second[0].tag).await.unwrap();
}

pub async fn messages_of_one_key_come_in_order_while_other_keys_pass(broker: &Arc<dyn Broker>) {
    broker.bind("order", "suite.order").await.unwrap();
    for (key, text) in [
        ("a", "a1"),
        ("a", "a2"),
        ("b", "b1"),
        ("a", "a3"),
        ("b", "b2"),
    ] {
        broker
            .publish("suite.order", body(text).with_key(key))
            .await
            .unwrap();
    }
    broker
        .publish("suite.order", body("unkeyed"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let batch = broker.fetch("order", 10, LEASE).await.unwrap();
        if batch.is_empty() {
            break;
        }
        let keys: Vec<_> = batch.iter().filter_map(|d| d.key.clone()).collect();
        let mut unique = keys.clone();
        unique.dedup();
        assert_eq!(
            keys.len(),
            unique.len(),
            "at most one message per key in flight: {keys:?}"
        );
        for d in batch {
            seen.push(String::from_utf8(d.body.clone()).unwrap());
            broker.ack(d.tag).await.unwrap();
        }
    }
    let of = |prefix: char| {
        seen.iter()
            .filter(|s| s.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of('a'), ["a1", "a2", "a3"]);
    assert_eq!(of('b'), ["b1", "b2"]);
    assert!(seen.contains(&"unkeyed".to_owned()));
}

pub async fn a_retry_waits_its_delay_and_keeps_its_key_blocked(broker: &Arc<dyn Broker>) {
    broker.bind("retry", "suite.retry").await.unwrap();
    broker
        .publish("suite.retry", body("first").with_key("r"))
        .await
        .unwrap();
    broker
        .publish("suite.retry", body("second").with_key("r"))
        .await
        .unwrap();
    let first = broker.fetch("retry", 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    broker
        .retry(first[0].tag, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(
        broker.fetch("retry", 10, LEASE).await.unwrap().is_empty(),
        "neither the retried message nor its successor yet"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = broker.fetch("retry", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].body.as_slice(), again[0].attempt),
        (b"first".as_slice(), 2)
    );
    broker.ack(again[0].tag).await.unwrap();
    let next = broker.fetch("retry", 10, LEASE).await.unwrap();
    assert_eq!(next[0].body, b"second");
    broker.ack(next[0].tag).await.unwrap();
}

pub async fn a_republished_message_is_stored_once(broker: &Arc<dyn Broker>) {
    // Only for brokers that promise it; one that does not (RabbitMQ) leaves it off its list.
    assert!(broker.capabilities().dedupes_publish);
    broker.bind("dedupe", "suite.dedupe").await.unwrap();
    let sent = body("once");
    broker.publish("suite.dedupe", sent.clone()).await.unwrap();
    broker.publish("suite.dedupe", sent.clone()).await.unwrap(); // a producer retrying after a timeout
    let got = broker.fetch("dedupe", 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    broker.ack(got[0].tag).await.unwrap();
    assert_eq!(broker.depth("dedupe").await.unwrap().ready, 0);
}

pub async fn a_redelivery_reaches_only_its_group(broker: &Arc<dyn Broker>) {
    broker.bind("replay-a", "suite.replay").await.unwrap();
    broker.bind("replay-b", "suite.replay").await.unwrap();
    let sent = body("again").with_key("rk");
    broker
        .redeliver("replay-a", "suite.replay", sent.clone())
        .await
        .unwrap();
    let got = broker.fetch("replay-a", 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].id, got[0].topic.as_str(), got[0].key.as_deref()),
        (sent.id, "suite.replay", Some("rk"))
    );
    broker.ack(got[0].tag).await.unwrap();
    assert!(
        broker
            .fetch("replay-b", 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "the other group does not get the replay"
    );
    // A group nothing is bound to any more can still get its replay.
    broker
        .redeliver("replay-gone", "suite.replay", body("late"))
        .await
        .unwrap();
    let got = broker.fetch("replay-gone", 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    broker.ack(got[0].tag).await.unwrap();
}

pub async fn bad_names_and_oversized_bodies_are_refused(broker: &Arc<dyn Broker>) {
    assert!(matches!(
        broker.publish("bad topic", body("x")).await,
        Err(BrokerError::Invalid { what: "topic", .. })
    ));
    assert!(matches!(
        broker.bind("", "x").await,
        Err(BrokerError::Invalid { what: "group", .. })
    ));
    let big = Outgoing::new(vec![0; SUITE_MAX_BODY + 1]);
    assert!(matches!(
        broker.publish("suite.big", big).await,
        Err(BrokerError::Invalid { what: "body", .. })
    ));
}

pub async fn competing_workers_share_the_messages_without_duplicates(broker: &Arc<dyn Broker>) {
    broker.bind("compete", "suite.compete").await.unwrap();
    let total = 200;
    for n in 0..total {
        broker
            .publish("suite.compete", body(&format!("m{n}")))
            .await
            .unwrap();
    }
    let workers = (0..4).map(|_| {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = broker.fetch("compete", 7, LEASE).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                for d in batch {
                    mine.push(d.id);
                    broker.ack(d.tag).await.unwrap();
                }
            }
        })
    });
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), total, "every message handled exactly once");
    assert_eq!(unique.len(), total);
}

pub async fn competing_workers_keep_each_keys_order_and_run_keys_in_parallel(
    broker: &Arc<dyn Broker>,
) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    broker.bind("keyed", "suite.keyed").await.unwrap();
    let (keys, per_key) = (6, 15);
    for n in 0..per_key {
        for k in 0..keys {
            broker
                .publish(
                    "suite.keyed",
                    body(&format!("{k}:{n}")).with_key(format!("k{k}")),
                )
                .await
                .unwrap();
        }
    }
    let handled = Arc::new(Mutex::new(Vec::<(usize, usize)>::new()));
    let (busy, most_busy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers = (0..4).map(|_| {
        let (broker, handled) = (broker.clone(), handled.clone());
        let (busy, most_busy) = (busy.clone(), most_busy.clone());
        tokio::spawn(async move {
            let mut idle_rounds = 0;
            while idle_rounds < 20 {
                let batch = broker.fetch("keyed", 2, LEASE).await.unwrap();
                if batch.is_empty() {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                idle_rounds = 0;
                for d in batch {
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    most_busy.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(fastrand_ms())).await;
                    let text = String::from_utf8(d.body.clone()).unwrap();
                    let (k, n) = text.split_once(':').unwrap();
                    handled
                        .lock()
                        .unwrap()
                        .push((k.parse().unwrap(), n.parse().unwrap()));
                    busy.fetch_sub(1, Ordering::SeqCst);
                    broker.ack(d.tag).await.unwrap();
                }
            }
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await.unwrap();
    }
    let handled = handled.lock().unwrap();
    assert_eq!(handled.len(), keys * per_key, "every message handled once");
    for k in 0..keys {
        let order: Vec<usize> = handled
            .iter()
            .filter(|(kk, _)| *kk == k)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            order,
            (0..per_key).collect::<Vec<_>>(),
            "key k{k} handled in publish order"
        );
    }
    assert!(
        most_busy.load(Ordering::SeqCst) > 1,
        "different keys were handled at the same time"
    );
}

/// A small, varying handling time, so that workers interleave.
fn fastrand_ms() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 4)
}

pub async fn a_full_group_pushes_back_on_the_producer(broker: &Arc<dyn Broker>) {
    broker.bind("flood", "suite.flood").await.unwrap();
    for n in 0..SUITE_MAX_DEPTH {
        broker
            .publish("suite.flood", body(&format!("f{n}")))
            .await
            .unwrap();
    }
    assert!(matches!(
        broker.publish("suite.flood", body("one too many")).await,
        Err(BrokerError::Full)
    ));
    assert_eq!(
        broker.depth("flood").await.unwrap().ready,
        SUITE_MAX_DEPTH,
        "the refused message was not stored"
    );
    let one = broker.fetch("flood", 1, LEASE).await.unwrap();
    broker.ack(one[0].tag).await.unwrap();
    broker
        .publish("suite.flood", body("room again"))
        .await
        .unwrap();
}

pub async fn a_published_batch_arrives_in_order_and_says_what_was_routed(broker: &Arc<dyn Broker>) {
    broker.bind("batch", "suite.batch.*").await.unwrap();
    assert!(broker.publish_many(&[]).await.unwrap().is_empty());
    let batch: Vec<(String, Outgoing)> = vec![
        ("suite.batch.a".into(), body("b1").with_key("bk")),
        ("suite.nobody".into(), body("lost")),
        ("suite.batch.b".into(), body("b2").with_key("bk")),
        ("suite.batch.a".into(), body("b3")),
    ];
    assert_eq!(
        broker.publish_many(&batch).await.unwrap(),
        vec![true, false, true, true],
        "each message says whether a group received it"
    );
    let mut seen = Vec::new();
    loop {
        let got = broker.fetch("batch", 10, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            let sent = batch
                .iter()
                .find(|(_, m)| m.id == d.id)
                .expect("a message of the batch");
            assert_eq!((d.topic.as_str(), &d.body), (sent.0.as_str(), &sent.1.body));
            seen.push(String::from_utf8(d.body.clone()).unwrap());
            broker.ack(d.tag).await.unwrap();
        }
    }
    let keyed: Vec<_> = seen.iter().filter(|b| *b != "b3").cloned().collect();
    assert_eq!(keyed, ["b1", "b2"], "a key keeps its order within a batch");
    assert!(seen.contains(&"b3".to_owned()));
}

pub async fn a_batch_of_acks_settles_each_tag_and_refuses_stale_ones(broker: &Arc<dyn Broker>) {
    broker.bind("acks", "suite.acks").await.unwrap();
    assert!(broker.ack_many(&[]).await.is_empty());
    let batch: Vec<(String, Outgoing)> = (0..4)
        .map(|n| ("suite.acks".to_owned(), body(&format!("a{n}"))))
        .collect();
    broker.publish_many(&batch).await.unwrap();
    // One delivery's lease runs out and another worker takes it: the first holder's tag is stale.
    let slow = broker
        .fetch("acks", 1, Duration::from_millis(50))
        .await
        .unwrap();
    let held = broker.fetch("acks", 2, LEASE).await.unwrap();
    assert_eq!((slow.len(), held.len()), (1, 2));
    tokio::time::sleep(Duration::from_millis(80)).await;
    let taken_over = broker.fetch("acks", 10, LEASE).await.unwrap();
    assert_eq!(taken_over.len(), 2, "the expired one and the last one");
    assert!(taken_over.iter().any(|d| d.id == slow[0].id));
    // Settled already, stale, fresh, repeated in one batch.
    broker.ack(held[0].tag).await.unwrap();
    let results = broker
        .ack_many(&[held[0].tag, slow[0].tag, held[1].tag, held[1].tag])
        .await;
    assert!(
        matches!(
            results.as_slice(),
            [
                Err(BrokerError::LeaseLost),
                Err(BrokerError::LeaseLost),
                Ok(()),
                Err(BrokerError::LeaseLost)
            ]
        ),
        "one result per tag, in order: {results:?}"
    );
    let tags: Vec<_> = taken_over.iter().map(|d| d.tag).collect();
    assert!(broker.ack_many(&tags).await.iter().all(Result::is_ok));
    let depth = broker.depth("acks").await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (0, 0));
    assert!(broker.fetch("acks", 10, LEASE).await.unwrap().is_empty());
}

pub async fn a_batch_that_does_not_fit_is_refused_with_full(broker: &Arc<dyn Broker>) {
    broker
        .bind("flood-batch", "suite.flood-batch")
        .await
        .unwrap();
    let batch = |n: u64, tag: &str| -> Vec<(String, Outgoing)> {
        (0..n)
            .map(|i| ("suite.flood-batch".to_owned(), body(&format!("{tag}{i}"))))
            .collect()
    };
    broker
        .publish_many(&batch(SUITE_MAX_DEPTH - 2, "fill"))
        .await
        .unwrap();
    assert!(matches!(
        broker.publish_many(&batch(5, "over")).await,
        Err(BrokerError::Full)
    ));
    let depth = broker.depth("flood-batch").await.unwrap();
    assert!(
        depth.ready <= SUITE_MAX_DEPTH,
        "never more than the bound: {depth:?}"
    );
}
