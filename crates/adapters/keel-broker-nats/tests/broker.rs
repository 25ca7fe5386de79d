//! The `Broker` behavioural suite on the real NATS JetStream server, and what only several
//! processes can show: two instances (two connections) competing for one group, a delivery of a
//! dropped instance coming back to the other (its partitions taken over), a binding made in one
//! instance routing the other's publishes at once, keyed messages staying with the owner of their
//! partition, and a private server stopped and restarted under a broker.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use keel_broker_nats::{NatsBroker, NatsOptions};
use keel_domain::{Broker, BrokerError, Outgoing};
use keel_test_support::broker_suite::{SUITE_MAX_BODY, SUITE_MAX_DEPTH};
use keel_test_support::services::{fresh_namespace, nats_url};

fn options(namespace: &str) -> NatsOptions {
    NatsOptions {
        namespace: namespace.to_owned(),
        partitions: 8,
        max_depth: SUITE_MAX_DEPTH,
        max_body_bytes: SUITE_MAX_BODY,
        ..NatsOptions::default()
    }
}

async fn broker(options: NatsOptions) -> NatsBroker {
    NatsBroker::connect(&nats_url(), options).await.unwrap()
}

/// Deletes every stream of the namespace (called at the end of a test that passed).
async fn clean_up(namespace: &str) {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let prefix = format!("{namespace}_");
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let mine: Vec<_> = names.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(!mine.is_empty(), "the test made streams under {prefix}");
    for name in mine {
        js.delete_stream(name).await.unwrap();
    }
}

fn body(text: &str) -> Outgoing {
    Outgoing::new(text.as_bytes().to_vec())
}

const LEASE: Duration = Duration::from_secs(30);

/// A namespace whose streams are deleted when a test that passed drops it (a failed test leaves
/// them to look at).
struct Streams(String);

impl Drop for Streams {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let namespace = self.0.clone();
        keel_test_support::process::block_on_own_thread(async move { clean_up(&namespace).await })
            .expect("the namespace's streams are deleted");
    }
}

mod suite {
    async fn open() -> (super::Streams, std::sync::Arc<dyn keel_domain::Broker>) {
        let namespace = super::fresh_namespace();
        let broker = super::broker(super::options(&namespace)).await;
        (super::Streams(namespace), std::sync::Arc::new(broker))
    }
    keel_test_support::broker_suite!(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_compete_for_one_group_without_duplicates() {
    let namespace = fresh_namespace();
    let a: Arc<dyn Broker> = Arc::new(broker(options(&namespace)).await);
    let b: Arc<dyn Broker> = Arc::new(broker(options(&namespace)).await);
    a.bind("work", "job.*").await.unwrap();
    let total = 120;
    let mut sent = HashSet::new();
    for n in 0..total {
        // Half keyed (over 10 keys), half not, published through both instances.
        let message = if n % 2 == 0 {
            body(&format!("m{n}")).with_key(format!("k{}", n % 10))
        } else {
            body(&format!("m{n}"))
        };
        sent.insert(message.id);
        let via = if n % 3 == 0 { &b } else { &a };
        assert!(via.publish("job.run", message).await.unwrap());
    }
    let workers = [a.clone(), b.clone(), a.clone(), b.clone()].map(|broker| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut idle = 0;
            // Several empty fetches in a row: another worker may hold the last keys.
            while idle < 5 {
                let batch = broker.fetch("work", 5, LEASE).await.unwrap();
                if batch.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle = 0;
                for d in batch {
                    assert_eq!(d.attempt, 1, "nothing is delivered twice");
                    mine.push(d.id);
                    broker.ack(d.tag).await.unwrap();
                }
            }
            mine
        })
    });
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for worker in workers {
        let mine = worker.await.unwrap();
        per_worker.push(mine.len());
        all.extend(mine);
    }
    assert_eq!(
        all.len(),
        total,
        "every message handled once: {per_worker:?}"
    );
    assert_eq!(all.iter().copied().collect::<HashSet<_>>(), sent);
    assert!(
        per_worker.iter().filter(|n| **n > 0).count() >= 2,
        "both instances took part: {per_worker:?}"
    );
    let depth = a.depth("work").await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (0, 0));
    clean_up(&namespace).await;
}

/// Fetches from `group` until `want` deliveries have come (or `within` has passed).
async fn fetch_until(
    broker: &NatsBroker,
    group: &str,
    want: usize,
    within: Duration,
) -> Vec<keel_domain::Delivery> {
    let started = tokio::time::Instant::now();
    let mut got = Vec::new();
    while got.len() < want && started.elapsed() < within {
        got.extend(broker.fetch(group, 10, LEASE).await.unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_of_a_dropped_instance_comes_back_to_the_other_after_ack_wait() {
    let namespace = fresh_namespace();
    let ack_wait = Duration::from_millis(1500);
    let owner_ttl = Duration::from_secs(1);
    let short = NatsOptions {
        ack_wait,
        owner_ttl,
        ..options(&namespace)
    };
    let survivor = broker(short.clone()).await;
    survivor.bind("crash", "crash.test").await.unwrap();
    let keyed = body("keyed").with_key("order-7");
    let unkeyed = body("unkeyed");
    let next_of_key = body("after").with_key("order-7");
    for message in [&keyed, &unkeyed, &next_of_key] {
        survivor
            .publish("crash.test", message.clone())
            .await
            .unwrap();
    }
    {
        let doomed = broker(short).await;
        let held = fetch_until(&doomed, "crash", 2, Duration::from_secs(5)).await;
        let ids: HashSet<_> = held.iter().map(|d| d.id).collect();
        assert_eq!(ids, HashSet::from([keyed.id, unkeyed.id]));
        // The process dies holding both (and the key's next message, prefetched): no ack.
    }
    // Nothing comes back before ack_wait: the server counts both as held by the dead process,
    // which also still owns the partition until owner_ttl has passed without renewal. Then the
    // partition changes owner, and the new owner pulls once the server has taken back what the
    // dead one held (ack_wait, after its last pull request expired).
    let started = tokio::time::Instant::now();
    let mut back = Vec::new();
    while back.len() < 2 && started.elapsed() < Duration::from_secs(12) {
        let got = survivor.fetch("crash", 10, LEASE).await.unwrap();
        assert!(
            // Counted from the dead process's pull, a moment before `started`.
            got.is_empty() || started.elapsed() >= ack_wait - Duration::from_millis(300),
            "back before ack_wait: {got:?}"
        );
        back.extend(got);
    }
    let ids: HashSet<_> = back.iter().map(|d| d.id).collect();
    assert_eq!(ids, HashSet::from([keyed.id, unkeyed.id]), "{back:?}");
    assert!(back.iter().all(|d| d.attempt == 2), "{back:?}");
    for d in back {
        survivor.ack(d.tag).await.unwrap();
    }
    let next = fetch_until(&survivor, "crash", 1, Duration::from_secs(2)).await;
    assert_eq!(next.len(), 1);
    // Delivered once to the dead process (prefetched there), so this is its second attempt.
    assert_eq!((next[0].id, next[0].attempt), (next_of_key.id, 2));
    survivor.ack(next[0].tag).await.unwrap();
    clean_up(&namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_made_in_one_instance_routes_the_next_publish_of_another() {
    let namespace = fresh_namespace();
    let publisher = broker(options(&namespace)).await;
    let subscriber = broker(options(&namespace)).await;
    publisher.bind("warm", "warm.up").await.unwrap();
    publisher.publish("warm.up", body("warm")).await.unwrap(); // the publisher's cache is warm
    for n in 0..5 {
        let group = format!("late-{n}");
        let topic = format!("late.{n}");
        assert!(
            !publisher.publish(&topic, body("before")).await.unwrap(),
            "nothing bound yet"
        );
        subscriber.bind(&group, &format!("late.{n}")).await.unwrap();
        let sent = body("after");
        assert!(
            publisher.publish(&topic, sent.clone()).await.unwrap(),
            "the bind returned before this publish started"
        );
        let got = subscriber.fetch(&group, 10, LEASE).await.unwrap();
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), [sent.id]);
        subscriber.ack(got[0].tag).await.unwrap();
    }
    clean_up(&namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_stay_in_the_instance_that_owns_their_partition() {
    let namespace = fresh_namespace();
    let a = broker(options(&namespace)).await;
    let b = broker(options(&namespace)).await;
    a.bind("seq", "seq.#").await.unwrap();
    let first = body("first").with_key("k");
    let second = body("second").with_key("k");
    let other = body("other").with_key("another key entirely");
    for message in [&first, &second, &other] {
        a.publish("seq.x", message.clone()).await.unwrap();
    }
    // The first to fetch claims the partitions nobody owns.
    let held = fetch_until(&a, "seq", 2, Duration::from_secs(5)).await;
    let ids: HashSet<_> = held.iter().map(|d| d.id).collect();
    assert_eq!(ids, HashSet::from([first.id, other.id]), "one per key");
    let first_held = held.iter().find(|d| d.id == first.id).unwrap();
    assert!(
        fetch_until(&b, "seq", 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "b owns none of the partitions"
    );
    a.retry(first_held.tag, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(
        fetch_until(&b, "seq", 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "a retry stays with its owner"
    );
    let again = fetch_until(&a, "seq", 1, Duration::from_secs(2)).await;
    assert_eq!(
        again.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
        [(first.id, 2)],
        "k's second message waits behind its retried first"
    );
    a.ack(again[0].tag).await.unwrap();
    let then = fetch_until(&a, "seq", 1, Duration::from_secs(2)).await;
    assert_eq!(then.iter().map(|d| d.id).collect::<Vec<_>>(), [second.id]);
    clean_up(&namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_delay_longer_than_ack_wait_is_kept_alive_not_redelivered() {
    let namespace = fresh_namespace();
    let ack_wait = Duration::from_secs(1);
    let broker = broker(NatsOptions {
        ack_wait,
        ..options(&namespace)
    })
    .await;
    broker.bind("slow", "slow.x").await.unwrap();
    let sent = body("later").with_key("k");
    broker.publish("slow.x", sent.clone()).await.unwrap();
    let first = fetch_until(&broker, "slow", 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    // Held here through more than two ack_waits: the sweeper's keep-alives stop the server from
    // delivering it again meanwhile.
    broker.retry(first[0].tag, ack_wait * 5 / 2).await.unwrap();
    tokio::time::sleep(ack_wait * 3).await;
    let again = fetch_until(&broker, "slow", 1, Duration::from_secs(2)).await;
    assert_eq!(
        again.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
        [(sent.id, 2)]
    );
    broker.ack(again[0].tag).await.unwrap();
    assert!(
        fetch_until(&broker, "slow", 1, ack_wait * 2)
            .await
            .is_empty(),
        "no second copy came from the server"
    );
    assert_eq!(broker.depth("slow").await.unwrap().ready, 0);
    clean_up(&namespace).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 1.
    let result = NatsBroker::connect("nats://127.0.0.1:1", options(&fresh_namespace())).await;
    assert!(
        matches!(result, Err(BrokerError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn bad_options_are_refused() {
    let bad_namespace = NatsBroker::connect(&nats_url(), options("a.b")).await;
    assert!(matches!(
        bad_namespace,
        Err(BrokerError::Invalid {
            what: "namespace",
            ..
        })
    ));
    let too_big = NatsOptions {
        max_body_bytes: 64 * 1024 * 1024,
        ..options(&fresh_namespace())
    };
    assert!(matches!(
        NatsBroker::connect(&nats_url(), too_big).await,
        Err(BrokerError::Invalid {
            what: "max_body_bytes",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_keys_and_headers_cross_the_server_unchanged() {
    let namespace = fresh_namespace();
    let broker = broker(options(&namespace)).await;
    broker.bind("odd", "odd.one").await.unwrap();
    let mut sent = body("odd").with_key("clé 7\r\nNats-Msg-Id: x %41");
    sent.headers
        .insert("traceparent".into(), "00-abc-def-01".into());
    sent.headers
        .insert("Nats-Expected-Stream".into(), "ünïcode\r\nand lines".into());
    sent.expires_at = Some(chrono::Utc::now() + chrono::Duration::minutes(5));
    broker.publish("odd.one", sent.clone()).await.unwrap();
    let got = broker.fetch("odd", 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(
        (d.key.as_ref(), &d.headers),
        (sent.key.as_ref(), &sent.headers)
    );
    let micros = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros();
    assert_eq!(d.expires_at.map(micros), sent.expires_at.map(micros));
    assert!((chrono::Utc::now() - d.published_at).num_seconds() < 5);
    broker.ack(d.tag).await.unwrap();
    clean_up(&namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_handled_message_is_not_swallowed_by_the_duplicate_window() {
    let namespace = fresh_namespace();
    let broker = broker(options(&namespace)).await;
    broker.bind("hosp", "hosp.case").await.unwrap();
    let sent = body("patient").with_key("p");
    broker.publish("hosp.case", sent.clone()).await.unwrap();
    let first = broker.fetch("hosp", 10, LEASE).await.unwrap();
    broker.ack(first[0].tag).await.unwrap(); // e.g. admitted to the hospital, then acked
    broker
        .redeliver("hosp", "hosp.case", sent.clone())
        .await
        .unwrap();
    let replayed = broker.fetch("hosp", 10, LEASE).await.unwrap();
    assert_eq!(
        replayed.len(),
        1,
        "the replay is stored although its id was seen"
    );
    assert_eq!(
        (
            replayed[0].id,
            replayed[0].attempt,
            replayed[0].key.as_deref()
        ),
        (sent.id, 1, Some("p"))
    );
    broker.ack(replayed[0].tag).await.unwrap();
    clean_up(&namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_counts_ready_held_and_the_age_of_the_oldest() {
    let namespace = fresh_namespace();
    let broker = broker(options(&namespace)).await;
    assert_eq!(
        broker.depth("never-made").await.unwrap(),
        keel_domain::QueueDepth::default()
    );
    broker.bind("deep", "deep.*").await.unwrap();
    for n in 0..4 {
        broker
            .publish("deep.x", body("d").with_key(format!("k{n}")))
            .await
            .unwrap();
    }
    broker.publish("deep.y", body("unkeyed")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut held = Vec::new();
    while held.len() < 2 {
        held.extend(broker.fetch("deep", 2 - held.len(), LEASE).await.unwrap());
    }
    let depth = broker.depth("deep").await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (3, 2));
    let oldest = depth.oldest.unwrap();
    assert!(
        oldest >= Duration::from_millis(60) && oldest < Duration::from_secs(10),
        "{oldest:?}"
    );
    for d in held {
        broker.ack(d.tag).await.unwrap();
    }
    assert_eq!(broker.depth("deep").await.unwrap().in_flight, 0);
    clean_up(&namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_stream_deleted_behind_keels_back_is_made_again() {
    let namespace = fresh_namespace();
    let broker = broker(options(&namespace)).await;
    broker.bind("gone", "gone.x").await.unwrap();
    broker.publish("gone.x", body("lost")).await.unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream(format!("{namespace}_q_gone"))
        .await
        .unwrap();
    assert!(broker.fetch("gone", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(
        broker.depth("gone").await.unwrap(),
        keel_domain::QueueDepth::default()
    );
    let sent = body("after");
    assert!(broker.publish("gone.x", sent.clone()).await.unwrap());
    let got = broker.fetch("gone", 10, LEASE).await.unwrap();
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), [sent.id]);
    broker.ack(got[0].tag).await.unwrap();
    clean_up(&namespace).await;
}

/// A private nats-server (JetStream on, its own store), so a test may stop and restart it;
/// dropping it kills the server.
struct PrivateServer(std::process::Child);

impl PrivateServer {
    async fn start(port: u16, store: &std::path::Path) -> Self {
        // Where Debian puts it (and where scripts/services.sh starts the shared one from).
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or("nats-server");
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server installed");
        let server = Self(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private nats-server did not start");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_and_a_restarted_one_serves_its_stored_messages() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile::tempdir().unwrap();
    let server = PrivateServer::start(port, store.path()).await;
    let ack_wait = Duration::from_secs(1);
    let broker = NatsBroker::connect(
        &format!("nats://127.0.0.1:{port}"),
        NatsOptions {
            request_timeout: Duration::from_millis(500),
            ack_wait,
            ..options("restart")
        },
    )
    .await
    .unwrap();
    broker.bind("keep", "keep.it").await.unwrap();
    let kept = body("kept").with_key("k");
    broker.publish("keep.it", kept.clone()).await.unwrap();

    drop(server);
    let while_down = body("while down");
    let publish = broker.publish("keep.it", while_down.clone()).await;
    assert!(
        matches!(publish, Err(BrokerError::Unavailable(_))),
        "{publish:?}"
    );
    let fetch = broker.fetch("keep", 10, LEASE).await;
    assert!(
        matches!(fetch, Err(BrokerError::Unavailable(_))),
        "{fetch:?}"
    );
    let depth = broker.depth("keep").await;
    assert!(
        matches!(depth, Err(BrokerError::Unavailable(_))),
        "{depth:?}"
    );

    let _server = PrivateServer::start(port, store.path()).await;
    // The client reconnects by itself. `Unavailable` left the outcome unknown (the client may
    // send the buffered publish once reconnected): the producer retries the same message, and
    // the de-duplication stores it once whichever way it went.
    let started = tokio::time::Instant::now();
    while broker.publish("keep.it", while_down.clone()).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "reconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // After a lost connection the feeds start again only after ack_wait (a message that was on
    // its way when the connection broke comes back first).
    let mut got = Vec::new();
    let started = tokio::time::Instant::now();
    while got.len() < 2 && started.elapsed() < ack_wait * 10 {
        match broker.fetch("keep", 10, LEASE).await {
            Ok(deliveries) => {
                for d in deliveries {
                    got.push(d.id);
                    broker.ack(d.tag).await.unwrap();
                }
            }
            Err(BrokerError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
    got.sort();
    let mut expected = vec![kept.id, while_down.id];
    expected.sort();
    assert_eq!(
        got, expected,
        "the stored message survived, the retried one is there once"
    );
}
