//! keel's NATS JetStream broker: [`NatsBroker`] implements [`keel_domain::Broker`] on a real
//! JetStream server (2.9 or later) with durable pull consumers, explicit acks, `Nats-Msg-Id`
//! de-duplication and a maximum delivery count.
//!
//! - [`NatsBroker::connect`] with [`NatsOptions`]: the only entry point.
//! - `names`: how groups and patterns become stream, consumer and subject names.
//! - `codec`: how a message's topic, key, headers and times travel in NATS headers.
//! - `own`: which process consumes a partition, by a lease kept in the server.
//! - `error`: async-nats errors as [`BrokerError`]s.
//!
//! # The model on JetStream
//!
//! Everything lives under a **namespace** `<ns>` (`[A-Za-z0-9_-]`, at most 64 characters):
//! processes that share it share the queues; tests use a fresh one each.
//!
//! - **One stream per group**, `<ns>_q_<group>`, subjects `<ns>.q.<group>.*`, retention
//!   *WorkQueue* (an acked message is deleted), `max_msgs` = `max_depth` with *discard new*: a
//!   publish to a full group is refused by the server and surfaces as [`BrokerError::Full`]
//!   (backpressure on the producer; the server never grows past the limit). A group name is made
//!   one token: `[A-Za-z0-9-]` stay, `_ . * #` become `_5F _2E _2A _23` (so distinct names stay
//!   distinct), and a token over 64 characters is cut to 40 and suffixed `_h<FNV-1a of the name>`.
//!   The stream's description records the group and the partition count; a process configured
//!   with another count refuses the stream instead of publishing where nobody consumes.
//! - **Bindings are stored in the server**, in the stream `<ns>_bindings` (one message per
//!   binding on `<ns>.bindings.<group>.<pattern>`, one kept per subject). `bind` creates the
//!   group's stream and consumers first, then stores the binding, so a publisher that sees a
//!   binding always finds the stream. Every process caches the bindings (they only grow: the
//!   port has no unbind) and reads the ones it has not seen by stream sequence. (Not a KV
//!   bucket, which is the same thing underneath: async-nats 0.51 cannot create one on a 2.9
//!   server, whose account-info answer it fails to parse.)
//! - **Publish fans out in the adapter**, as the SQL queue does: one copy per matching group,
//!   published to that group's stream with `Nats-Msg-Id = <message id>`, so a producer's retry
//!   within the stream's duplicate window (default 2 minutes) is stored once per group
//!   (`dedupes_publish: true`). `publish` returns after every copy's publish ack, i.e. when it is
//!   stored. The fan-out is not atomic across groups: after `Full` or `Unavailable` some groups
//!   may hold the message; the producer retries the same message and de-duplication absorbs the
//!   copies already stored.
//! - **A bind in another process is seen by every publish that starts after that bind
//!   returned.** Each publish takes a ticket; before it returns, a refresh that *started after*
//!   the ticket was taken must have read the bindings stream's last sequence (one `STREAM.INFO`)
//!   and every binding up to it. Concurrent publishes share one refresh (whoever holds the refresh
//!   lock covers every ticket taken before it started), and the refresh runs concurrently with
//!   the publish to the groups already known, so it costs no extra round trip in latency; only a
//!   group found late is published to afterwards. Since bindings only grow, the groups known
//!   before the refresh are always a subset of the right ones.
//! - `redeliver` publishes to that one group's stream (created if needed) without
//!   `Nats-Msg-Id`: a hospital replay must never be swallowed by the duplicate window of the
//!   original; a replay sent twice is absorbed by the consumer's record of message ids.
//!
//! # Ordering per key: partitions owned by one process at a time
//!
//! A group's stream has `K` = [`NatsOptions::partitions`] keyed subjects `….p<i>`, `i` =
//! FNV-1a(key) mod `K` (a fixed hash: every process and build agrees), each read by its own
//! durable pull consumer `p<i>` with `max_ack_pending` = [`NatsOptions::window`], and one unkeyed
//! subject `….u` read by consumer `u`, shared by every process. `K` must be the same in every
//! process of a namespace.
//!
//! A partition is consumed by **one process at a time**, its owner (module `own`): ownership is
//! a record in the stream `<ns>_owners`, written by compare-and-set and renewed every third of
//! [`NatsOptions::owner_ttl`]; a process that fetches from a group claims every partition that
//! has no owner, and takes over one whose record has not changed for `owner_ttl` (its owner
//! died), pulling only after the old owner's deliveries have come back to the server. Within the
//! process, the deliveries wait in the domain's `ledger`, which hands out at most one message
//! per key, oldest first, and holds back a key's later messages while one is in flight or
//! waiting for its retry (the RabbitMQ adapter's model; JetStream itself knows none of this). So
//! a key's order holds across retries, lapsed leases, crashes and other processes, while many
//! deliveries per partition travel at once (one round trip per batch, not per message).
//! The trade-off: the first process to fetch from a group owns all its partitions until it
//! leaves; others take unkeyed messages, and keyed ones only when an owner dies.
//!
//! Each owned partition (and the unkeyed consumer) has a **feed**: a task that pulls with a
//! window of outstanding deliveries into the ledger. It first drains what the server can hand
//! over at once, sorted by stream sequence (after a takeover that is every redelivery: the 2.9
//! server redelivers before newer messages but not in order among them), then keeps a
//! continuous pull open (2 s expiry, heartbeats). `fetch` takes from the ledger without asking
//! the server anything: once something is ready it lingers 1 ms for a fuller batch; with nothing
//! ready it waits a moment while messages are on their way (a feed's last message said the server
//! has more) or while this process holds deliveries of the group; holding none, it asks whether
//! the group stores any, and if so waits briefly for a feed to bring something (up to two
//! seconds while a feed's first drain is not done).
//!
//! # Leases
//!
//! `fetch`'s lease is kept in the process: a delivery not settled before it ends is handed out
//! again (attempt + 1) and its old tag's `ack` returns [`BrokerError::LeaseLost`]; `retry` keeps
//! the message held and hands it out again after the delay (attempt + 1), its key blocked
//! meanwhile. The server sees every held delivery as outstanding; the sweeper (every 100 ms)
//! tells it "in progress" for deliveries held longer than a third of
//! [`NatsOptions::ack_wait`], so its redelivery timer runs only for a process that died. **Across
//! processes the lease is `ack_wait`**: a dead process's deliveries come back after it (attempt
//! = JetStream's delivery count; a message prefetched but never handed out counts as attempted).
//! `ack` is a double ack (confirmed by the server). A lost connection restarts every feed after
//! `ack_wait` (what was on its way is redelivered first) and forgets what they held.
//!
//! # Maximum deliveries
//!
//! Consumers have `max_deliver` ([`NatsOptions::max_deliver`], 20 by default) as a safety net
//! against a message that crashes every worker. The worker runtime admits a message to the
//! hospital after its own `RetryPolicy::max_attempts` (5 by default), which must stay below
//! `max_deliver`: a message that reaches `max_deliver` is no longer delivered (its key's later
//! messages then proceed) but stays stored in the WorkQueue stream, counted in `depth` as ready,
//! until an operator removes it; the server publishes a `MAX_DELIVERIES` advisory.
//!
//! # Depth
//!
//! `in_flight` is this process's leased deliveries; `ready` is the stream's message count minus
//! that (messages held by other processes, or waiting here, count as ready); `oldest` is the age
//! of the stream's first message.
//!
//! # Errors
//!
//! No answer from the server (refused connection, timeout, no responders) is
//! [`BrokerError::Unavailable`]; a full group is [`BrokerError::Full`]; a bad topic, group or
//! pattern (checked by [`keel_domain::queue::check_name`]) or a body over
//! [`NatsOptions::max_body_bytes`] is [`BrokerError::Invalid`], as in the SQL queue.

mod codec;
mod error;
mod names;
mod own;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
    Stream,
};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use keel_domain::ledger::{self, Incoming, Ledger};
use keel_domain::queue::check_name;
use keel_domain::queue::{key_chains, topic_matches, worst};
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{classify, classify_publish, internal};
use crate::names::{GroupNames, Slot};
use crate::own::{Own, Step, Verdict};

/// How often ownerships are tended and held deliveries kept alive.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Added to `ack_wait` before a new owner pulls: the server's redelivery timer is checked
/// periodically, not at the exact instant, and the old owner's last keep-alive may still be on
/// its way.
const TAKEOVER_MARGIN: Duration = Duration::from_millis(500);

/// How long a feed's pull request lives on the server. A process that dies leaves its pull
/// requests behind until they expire, and the server may hand them redeliveries meanwhile
/// (lost again, for another `ack_wait`): a new owner waits this out too.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// How long a `fetch` that has found something lingers for more, to hand out a fuller batch.
const LINGER: Duration = Duration::from_millis(1);

/// A feed's `pending` before its first drain is done.
const WARMING: u64 = u64::MAX;

/// How long a `fetch` that finds nothing, holding nothing, waits for the group's messages once
/// every feed has drained (they are held elsewhere, or their acks are still being applied).
const SETTLED_WAIT: Duration = Duration::from_millis(20);

/// How long a `fetch` waits at most for messages on their way to its feeds.
const ON_THE_WAY_WAIT: Duration = Duration::from_millis(200);

/// How long a `fetch` that finds nothing ready, while this process holds deliveries of the
/// group, waits for a change (an ack, a retry, an arrival) before answering.
const BUSY_WAIT: Duration = Duration::from_millis(20);

/// How long a `fetch` waits for its feeds' first drain (a loaded machine may take a while to
/// serve it).
const FETCH_WAIT: Duration = Duration::from_secs(2);

/// Settings of a [`NatsBroker`]. Processes sharing a namespace must agree on `partitions`;
/// the other limits are fixed when a group's stream and consumers are first created.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Prefix of every stream and subject: `[A-Za-z0-9_-]`, 1 to 64 characters.
    pub namespace: String,
    /// Keyed partitions per group (`K`): the units of keyed work that move between processes
    /// (each is consumed by one process at a time; within it, many keys are handed out at
    /// once). Each is a consumer on the server, and every consumer costs the server work per
    /// message: in the queue benchmark, 16 partitions ran a quarter slower than 4.
    pub partitions: u16,
    /// Messages a group's stream may hold; a publish beyond it fails with `Full`.
    pub max_depth: u64,
    /// Largest body accepted (bytes); must leave room for headers under the server's
    /// `max_payload`.
    pub max_body_bytes: usize,
    /// The server's redelivery timeout: the lease that holds across processes.
    pub ack_wait: Duration,
    /// Deliveries after which the server stops delivering a message (a safety net above the
    /// worker's attempt limit).
    pub max_deliver: i64,
    /// How long the server remembers a `Nats-Msg-Id` to drop a republished copy.
    pub duplicate_window: Duration,
    /// Bound on every request to the server; past it the call fails with `Unavailable`.
    pub request_timeout: Duration,
    /// Deliveries of one consumer (a partition, or the unkeyed messages) this process may hold
    /// ahead of `fetch`: the partition consumers' `max_ack_pending` and the pull batch.
    pub window: u32,
    /// How long a partition's ownership lasts without renewal (renewed every third of it). A
    /// process that dies holding partitions delays their messages by `owner_ttl + ack_wait`.
    pub owner_ttl: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            namespace: "keel".into(),
            partitions: 4,
            max_depth: 1_000_000,
            max_body_bytes: 256 * 1024,
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            duplicate_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(5),
            window: 512,
            owner_ttl: Duration::from_secs(5),
        }
    }
}

/// The `Broker` port on NATS JetStream (see the crate documentation for the model).
pub struct NatsBroker {
    inner: Arc<Inner>,
    sweeper: tokio::task::AbortHandle,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("namespace", &self.inner.options.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.sweeper.abort();
        // The feeds hold no reference to the broker: stop them, or they would go on taking
        // messages for a process that hands none out.
        for group in lock(&self.inner.groups).values() {
            group.stop_feeds();
        }
    }
}

/// The held deliveries of this process: keyed ones from the partitions it owns, unkeyed ones
/// from the group's shared consumer; the acker is the JetStream message itself.
type Held = Ledger<Slot, jetstream::Message>;

struct Inner {
    js: jetstream::Context,
    options: NatsOptions,
    bindings_stream: Stream,
    /// Partition ownership records (see `own`).
    owners_stream: Stream,
    /// This broker instance, as named in the ownership records it writes.
    process: Uuid,
    /// What this process knows of the bindings stream.
    bindings: RwLock<Bindings>,
    /// Held while reading the bindings stream, so concurrent publishes share one refresh.
    refresh: tokio::sync::Mutex<()>,
    /// Tickets taken by publishes (see the crate documentation).
    tickets: AtomicU64,
    /// Every ticket up to this one has been covered by a finished refresh.
    covered: AtomicU64,
    /// Groups whose stream and consumers this process has opened.
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Deliveries this process holds, unacknowledged on the server.
    ledger: Arc<Mutex<Held>>,
    /// Woken when a feed brings messages.
    arrived: Arc<tokio::sync::Notify>,
    /// Numbers the feeds: a feed's deliveries are held under its number and forgotten with it.
    links: AtomicU64,
    /// How often the connection was lost, and the count the feeds were last restarted at.
    disconnections: Arc<AtomicU64>,
    disconnections_seen: AtomicU64,
}

#[derive(Default)]
struct Bindings {
    /// The bindings stream's sequence read up to.
    seen: u64,
    patterns: HashMap<String, BTreeSet<String>>,
}

/// The body of a binding message.
#[derive(Serialize, Deserialize)]
struct Binding {
    group: String,
    pattern: String,
}

/// The body of an ownership record (for people reading the stream; keel reads only sequences).
#[derive(Serialize)]
struct OwnerRecord<'a> {
    owner: Uuid,
    group: &'a str,
    partition: u16,
}

struct Group {
    name: String,
    names: GroupNames,
    /// The subject of each slot: partitions `0..K`, then the unkeyed messages (made once, not
    /// per publish).
    subjects: Vec<async_nats::Subject>,
    stream: Stream,
    partitions: Vec<Partition>,
    unkeyed: PullConsumer,
    unkeyed_feed: Mutex<Option<Feed>>,
    /// Set by the first `fetch`: from then on this process consumes the group (claims its
    /// partitions, feeds its unkeyed messages).
    consuming: AtomicBool,
    /// One tending of the ownerships at a time.
    tending: tokio::sync::Mutex<()>,
}

struct Partition {
    index: u16,
    consumer: PullConsumer,
    own: Mutex<Own>,
    feed: Mutex<Option<Feed>>,
}

/// A task pulling one consumer's messages into the ledger, under its link number.
struct Feed {
    link: u64,
    task: tokio::task::AbortHandle,
    /// Messages the server had for this consumer after the last one it sent here; `WARMING`
    /// before the feed's first drain is done.
    pending: Arc<AtomicU64>,
}

impl Group {
    fn subject(&self, slot: Slot) -> async_nats::Subject {
        let index = match slot {
            Slot::Partition(i) => usize::from(i),
            Slot::Unkeyed => self.partitions.len(),
        };
        self.subjects[index].clone()
    }

    /// Stops every feed; returns their links, whose deliveries the caller forgets.
    fn stop_feeds(&self) -> Vec<u64> {
        let feeds: Vec<Feed> = self
            .partitions
            .iter()
            .filter_map(|p| lock(&p.feed).take())
            .chain(lock(&self.unkeyed_feed).take())
            .collect();
        feeds
            .into_iter()
            .map(|feed| {
                feed.task.abort();
                feed.link
            })
            .collect()
    }
}

/// Locks a std mutex, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NatsBroker {
    /// Connects to the server at `url` (e.g. `nats://127.0.0.1:4222`) and opens the namespace's
    /// bindings stream (creating it if needed).
    pub async fn connect(url: &str, options: NatsOptions) -> Result<NatsBroker, BrokerError> {
        check_options(&options)?;
        let disconnections = Arc::new(AtomicU64::new(0));
        let counter = disconnections.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let counter = counter.clone();
                async move {
                    if matches!(event, async_nats::Event::Disconnected) {
                        counter.fetch_add(1, Ordering::AcqRel);
                    }
                }
            })
            .connection_timeout(options.request_timeout)
            .request_timeout(Some(options.request_timeout))
            .connect(url)
            .await
            .map_err(|err| BrokerError::Unavailable(Box::new(err)))?;
        let max_payload = client.server_info().max_payload;
        // Room for keel's headers and a few application headers.
        if options.max_body_bytes + 8 * 1024 > max_payload {
            return Err(BrokerError::Invalid {
                what: "max_body_bytes",
                why: format!(
                    "{} bytes leaves no room for headers under the server's max_payload of {max_payload}",
                    options.max_body_bytes
                ),
            });
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .ack_timeout(options.request_timeout)
            .build(client);
        let bindings_stream = open_register(
            &js,
            names::bindings_stream(&options.namespace),
            names::bindings_filter(&options.namespace),
            "keel bindings: group -> topic pattern",
        )
        .await?;
        let owners_stream = open_register(
            &js,
            names::owners_stream(&options.namespace),
            names::owners_filter(&options.namespace),
            "keel partition ownership: one record per partition",
        )
        .await?;
        let inner = Arc::new(Inner {
            js,
            options,
            bindings_stream,
            owners_stream,
            process: Uuid::new_v4(),
            bindings: RwLock::default(),
            refresh: tokio::sync::Mutex::new(()),
            tickets: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            groups: Mutex::default(),
            ledger: Arc::default(),
            arrived: Arc::default(),
            links: AtomicU64::new(0),
            disconnections,
            disconnections_seen: AtomicU64::new(0),
        });
        let sweeper = tokio::spawn(sweep_until_dropped(Arc::downgrade(&inner))).abort_handle();
        Ok(NatsBroker { inner, sweeper })
    }
}

/// A stream that keeps the last message of each subject (bindings, ownership records).
async fn open_register(
    js: &jetstream::Context,
    name: String,
    filter: String,
    description: &str,
) -> Result<Stream, BrokerError> {
    open_stream(
        js,
        StreamConfig {
            name,
            subjects: vec![filter],
            description: Some(description.to_owned()),
            max_messages_per_subject: 1,
            storage: StorageType::File,
            ..Default::default()
        },
    )
    .await
}

/// Gets a stream, creating it if missing. A create that fails with "error creating store" is
/// tried again: nats-server 2.9 removes the account's `streams` directory when its last stream
/// is deleted, and a create racing with that fails (seen with tests deleting their streams while
/// others create theirs).
async fn open_stream(js: &jetstream::Context, config: StreamConfig) -> Result<Stream, BrokerError> {
    let mut attempt = 1;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(err) if attempt < 3 && error::code(&err) == Some(error::STREAM_STORE_FAILED) => {
                tracing::warn!(stream = config.name, %err, "stream create failed; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(classify(err)),
        }
    }
}

fn check_options(options: &NatsOptions) -> Result<(), BrokerError> {
    let invalid = |what: &'static str, why: &str| {
        Err(BrokerError::Invalid {
            what,
            why: why.to_owned(),
        })
    };
    let ns = &options.namespace;
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return invalid("namespace", "must be 1-64 characters of [A-Za-z0-9_-]");
    }
    if options.partitions == 0 || options.partitions > 1024 {
        return invalid("partitions", "must be 1 to 1024");
    }
    if options.max_depth == 0 || options.max_depth > i64::MAX as u64 {
        return invalid("max_depth", "must be at least 1");
    }
    if options.ack_wait < Duration::from_millis(100) {
        return invalid("ack_wait", "must be at least 100 ms");
    }
    if options.max_deliver == 0 || options.max_deliver < -1 {
        return invalid("max_deliver", "must be positive, or -1 for no limit");
    }
    Ok(())
}

fn check_publish(topic: &str, body: &[u8], max_body: usize) -> Result<(), BrokerError> {
    check_name("topic", topic, false)?;
    if body.len() > max_body {
        return Err(BrokerError::Invalid {
            what: "body",
            why: format!("{} bytes is over the {max_body} byte limit", body.len()),
        });
    }
    Ok(())
}

/// A message of a batch, encoded once for all its copies.
struct Prepared {
    topic: String,
    key: Option<String>,
    slot: Slot,
    id: String,
    headers: async_nats::HeaderMap,
    body: Bytes,
}

async fn sweep_until_dropped(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.sweep().await;
    }
}

impl Inner {
    /// The group's stream and consumers, opened once per process. With `create`, the stream is
    /// created if missing; without, a missing stream is `None` (nothing was ever stored).
    async fn group(&self, name: &str, create: bool) -> Result<Option<Arc<Group>>, BrokerError> {
        if let Some(group) = lock(&self.groups).get(name) {
            return Ok(Some(group.clone()));
        }
        let options = &self.options;
        let names = GroupNames::new(&options.namespace, name);
        // "layout 2": partitions owned by one process at a time, many deliveries outstanding per
        // partition (layout 1 had one outstanding delivery per partition and no owners).
        let description = format!(
            "keel group {name}; partitions {}; layout 2",
            options.partitions
        );
        let stream = if create {
            open_stream(
                &self.js,
                StreamConfig {
                    name: names.stream.clone(),
                    subjects: vec![format!("{}.*", names.subject_prefix)],
                    description: Some(description.clone()),
                    retention: RetentionPolicy::WorkQueue,
                    max_messages: options.max_depth as i64,
                    discard: DiscardPolicy::New,
                    storage: StorageType::File,
                    duplicate_window: options.duplicate_window,
                    ..Default::default()
                },
            )
            .await?
        } else {
            match self.js.get_stream(&names.stream).await {
                Ok(stream) => stream,
                Err(err) if error::code(&err) == Some(error::STREAM_NOT_FOUND) => return Ok(None),
                Err(err) => return Err(classify(err)),
            }
        };
        if stream.cached_info().config.description.as_deref() != Some(description.as_str()) {
            return Err(internal(format!(
                "stream {} was not made for group {name:?} with {} partitions: {:?}",
                names.stream,
                options.partitions,
                stream.cached_info().config.description
            )));
        }
        let slots = (0..options.partitions)
            .map(Slot::Partition)
            .chain([Slot::Unkeyed]);
        let consumers = futures_util::future::try_join_all(slots.map(|slot| {
            let config = PullConfig {
                durable_name: Some(slot.name()),
                filter_subject: names.subject(slot),
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_deliver: options.max_deliver,
                max_ack_pending: match slot {
                    Slot::Partition(_) => i64::from(options.window),
                    Slot::Unkeyed => options.max_depth as i64,
                },
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            };
            let stream = &stream;
            async move { stream.get_or_create_consumer(&slot.name(), config).await }
        }))
        .await
        .map_err(classify)?;
        let mut consumers = consumers;
        let unkeyed = consumers
            .pop()
            .ok_or_else(|| internal("no consumers".into()))?;
        let now = Instant::now();
        let partitions = consumers
            .into_iter()
            .zip(0..)
            .map(|(consumer, index)| Partition {
                index,
                consumer,
                own: Mutex::new(Own::new(now)),
                feed: Mutex::default(),
            })
            .collect();
        let subjects = (0..options.partitions)
            .map(Slot::Partition)
            .chain([Slot::Unkeyed])
            .map(|slot| async_nats::Subject::from(names.subject(slot)))
            .collect();
        let group = Arc::new(Group {
            name: name.to_owned(),
            names,
            subjects,
            stream,
            partitions,
            unkeyed,
            unkeyed_feed: Mutex::default(),
            consuming: AtomicBool::new(false),
            tending: tokio::sync::Mutex::new(()),
        });
        Ok(Some(
            lock(&self.groups)
                .entry(name.to_owned())
                .or_insert(group)
                .clone(),
        ))
    }

    /// Stores one copy in `group`'s stream. A stream deleted behind keel's back is made again.
    async fn store(
        &self,
        group: &str,
        slot: Slot,
        headers: &async_nats::HeaderMap,
        body: &Bytes,
        dedupe_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        for attempt in 0..2 {
            let opened = self
                .group(group, true)
                .await?
                .ok_or_else(|| internal(format!("group {group:?} has no stream")))?;
            // No `Nats-Expected-Stream`: the group's subjects belong to its stream alone (names
            // are made per namespace and group), and a missing stream answers "no responders",
            // which is `StreamNotFound` all the same; one header less on every message.
            let mut message = PublishMessage::build()
                .payload(body.clone())
                .headers(headers.clone());
            if let Some(id) = dedupe_id {
                message = message.message_id(id);
            }
            let sent = self.js.send_publish(opened.subject(slot), message).await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match acked {
                Ok(_) => return Ok(()),
                Err(err)
                    if attempt == 0
                        && err.kind() == jetstream::context::PublishErrorKind::StreamNotFound =>
                {
                    tracing::warn!(group, "group stream missing; creating it again");
                    let gone = lock(&self.groups).remove(group);
                    if let Some(gone) = gone {
                        self.retire(&gone);
                    }
                }
                Err(err) => return Err(classify_publish(err)),
            }
        }
        Err(internal(format!("group {group:?} has no stream")))
    }

    /// Stores a copy in each group; all are attempted, the worst error is returned (`Full` first:
    /// the producer must slow down).
    async fn store_all(
        &self,
        groups: &[String],
        slot: Slot,
        headers: &async_nats::HeaderMap,
        body: &Bytes,
        dedupe_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let results = futures_util::future::join_all(
            groups
                .iter()
                .map(|group| self.store(group, slot, headers, body, dedupe_id)),
        )
        .await;
        worst(results)
    }

    /// Stores a batch: `copies[i]` lists the groups message `i` goes to. Copies of one key bound
    /// for one group are sent one after another, each after the previous one's publish ack, so
    /// that a refusal (`Full`) can never let a later message of a key be stored before an
    /// earlier one; other keys, groups and unkeyed copies go concurrently. Every chain is run to
    /// its end or its first error; the worst error is returned, as in `store_all`.
    async fn store_batch(
        &self,
        batch: &[Prepared],
        copies: &[Vec<String>],
    ) -> Result<(), BrokerError> {
        // Per group, the indices of the messages it gets, then their chains by key.
        let mut per_group: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, groups) in copies.iter().enumerate() {
            for group in groups {
                per_group.entry(group.as_str()).or_default().push(i);
            }
        }
        let chains = per_group.into_iter().flat_map(|(group, indices)| {
            key_chains(indices.iter().map(|&i| batch[i].key.as_deref()))
                .into_iter()
                .map(move |chain| (group, chain.into_iter().map(|c| indices[c]).collect()))
                .collect::<Vec<(&str, Vec<usize>)>>()
        });
        let sent = futures_util::future::join_all(chains.map(|(group, chain)| async move {
            for i in chain {
                let message = &batch[i];
                self.store(
                    group,
                    message.slot,
                    &message.headers,
                    &message.body,
                    Some(&message.id),
                )
                .await?;
            }
            Ok(())
        }))
        .await;
        worst(sent)
    }

    /// The groups bound to each message's topic; a batch's topics repeat, each is matched once.
    fn matching_each(&self, batch: &[Prepared]) -> Vec<Vec<String>> {
        let mut of_topic: HashMap<&str, Vec<String>> = HashMap::new();
        batch
            .iter()
            .map(|m| {
                of_topic
                    .entry(m.topic.as_str())
                    .or_insert_with(|| self.matching(&m.topic))
                    .clone()
            })
            .collect()
    }

    /// The groups bound to `topic`, as this process knows them.
    fn matching(&self, topic: &str) -> Vec<String> {
        let bindings = self.bindings.read().unwrap_or_else(PoisonError::into_inner);
        let mut groups: Vec<String> = bindings
            .patterns
            .iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| topic_matches(p, topic)))
            .map(|(group, _)| group.clone())
            .collect();
        groups.sort();
        groups
    }

    /// Makes sure a refresh that started after `ticket` was taken has read every binding.
    async fn refresh_bindings(&self, ticket: u64) -> Result<(), BrokerError> {
        if self.covered.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let _one_at_a_time = self.refresh.lock().await;
        if self.covered.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        // Every ticket taken so far is covered by the read below, which starts after this load.
        let covering = self.tickets.load(Ordering::Acquire);
        let last = self
            .bindings_stream
            .get_info()
            .await
            .map_err(classify)?
            .state
            .last_sequence;
        let filter = names::bindings_filter(&self.options.namespace);
        let mut seen = self
            .bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .seen;
        while seen < last {
            let message = match self
                .bindings_stream
                .get_first_raw_message_by_subject(&filter, seen + 1)
                .await
            {
                Ok(message) => message,
                Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(err) => return Err(classify(err)),
            };
            let mut bindings = self
                .bindings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match serde_json::from_slice::<Binding>(&message.payload) {
                Ok(binding) => {
                    bindings
                        .patterns
                        .entry(binding.group)
                        .or_default()
                        .insert(binding.pattern);
                }
                Err(err) => {
                    tracing::error!(seq = message.sequence, %err, "unreadable binding skipped");
                }
            }
            seen = message.sequence;
            bindings.seen = seen;
        }
        self.covered.fetch_max(covering, Ordering::AcqRel);
        Ok(())
    }

    /// Forgets an opened group (its stream is gone): stops its feeds and forgets what they
    /// brought; the next call opens it afresh.
    fn retire(&self, group: &Group) {
        let links = group.stop_feeds();
        let mut ledger = lock(&self.ledger);
        for link in links {
            ledger.forget_link(link);
        }
    }

    /// Keeps every consumed group's ownerships (claims, renewals, hand-overs), restarts the
    /// feeds after a lost connection, and tells the server that deliveries held here for long
    /// are still being worked on.
    async fn sweep(&self) {
        let disconnections = self.disconnections.load(Ordering::Acquire);
        if self
            .disconnections_seen
            .swap(disconnections, Ordering::AcqRel)
            != disconnections
        {
            self.restart_feeds();
        }
        let groups: Vec<Arc<Group>> = lock(&self.groups)
            .values()
            .filter(|g| g.consuming.load(Ordering::Acquire))
            .cloned()
            .collect();
        for group in groups {
            self.tend(&group).await;
        }
        let now = Instant::now();
        let stale = lock(&self.ledger).stale(now - self.options.ack_wait / 3, now);
        let alive = stale
            .iter()
            .map(|message| message.ack_with(AckKind::Progress));
        for result in futures_util::future::join_all(alive).await {
            if let Err(err) = result {
                tracing::debug!(%err, "keep-alive of a held delivery not sent");
            }
        }
    }

    /// After a lost connection, messages on their way to this process may have been lost with
    /// it, and the server will deliver them again only after `ack_wait`: a feed that went on
    /// pulling could hand out a key's later message before them. So every feed starts again,
    /// after `ack_wait`, and what it held is forgotten (the server delivers it again).
    fn restart_feeds(&self) {
        let groups: Vec<Arc<Group>> = lock(&self.groups).values().cloned().collect();
        let start = Instant::now() + takeover_wait(self.options.ack_wait);
        for group in groups {
            tracing::warn!(
                group = group.name,
                "connection to NATS lost: feeds start again after ack_wait"
            );
            for partition in &group.partitions {
                let owned = matches!(*lock(&partition.own), Own::Owned { .. });
                if owned {
                    self.start_feed(&group, Slot::Partition(partition.index), start);
                }
            }
            if lock(&group.unkeyed_feed).is_some() {
                self.start_feed(&group, Slot::Unkeyed, start);
            }
        }
    }

    /// Whether one of `group`'s feeds has not finished its first drain yet.
    fn warming(&self, group: &Group) -> bool {
        group
            .partitions
            .iter()
            .map(|p| &p.feed)
            .chain([&group.unkeyed_feed])
            .any(|feed| {
                lock(feed)
                    .as_ref()
                    .is_some_and(|f| f.pending.load(Ordering::Acquire) == WARMING)
            })
    }

    /// Whether one of `group`'s feeds was told that the server has more for it and its window
    /// has room for them (so they are on their way).
    fn on_the_way(&self, group: &Group) -> bool {
        let window = usize::try_from(self.options.window).unwrap_or(usize::MAX);
        let feeds: Vec<(u64, u64)> = group
            .partitions
            .iter()
            .filter_map(|p| {
                lock(&p.feed)
                    .as_ref()
                    .map(|f| (f.link, f.pending.load(Ordering::Acquire)))
            })
            .chain(
                lock(&group.unkeyed_feed)
                    .as_ref()
                    .map(|f| (f.link, f.pending.load(Ordering::Acquire))),
            )
            .filter(|(_, pending)| *pending > 0)
            .collect();
        if feeds.is_empty() {
            return false;
        }
        let held = lock(&self.ledger).held_by_link(&group.name);
        feeds
            .iter()
            .any(|(link, _)| held.get(link).copied().unwrap_or(0) < window)
    }

    /// Tends the ownership of each of `group`'s partitions (one tending at a time per group).
    async fn tend(&self, group: &Arc<Group>) {
        let Ok(_one) = group.tending.try_lock() else {
            return;
        };
        futures_util::future::join_all(
            group
                .partitions
                .iter()
                .map(|partition| self.tend_partition(group, partition)),
        )
        .await;
    }

    async fn tend_partition(&self, group: &Arc<Group>, partition: &Partition) {
        let ttl = self.options.owner_ttl;
        let now = Instant::now();
        let step = own::step(&lock(&partition.own), now, ttl);
        match step {
            Step::Wait => {}
            Step::GiveUp => self.lose(
                group,
                partition,
                "its ownership could not be renewed in time",
            ),
            Step::Renew { seq } => {
                let sent = Instant::now();
                match self.write_owner(group, partition, seq).await {
                    Ok(new_seq) => {
                        if let Own::Owned { seq, renewed, .. } = &mut *lock(&partition.own) {
                            *seq = new_seq;
                            *renewed = sent;
                        }
                    }
                    Err(None) => self.lose(group, partition, "another process took it over"),
                    Err(Some(err)) => {
                        tracing::warn!(group = group.name, partition = partition.index, %err, "ownership not renewed; trying again");
                    }
                }
            }
            Step::Read => {
                let subject =
                    names::owner_subject(&self.options.namespace, &group.names, partition.index);
                let record = match self
                    .owners_stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                {
                    Ok(message) => Some(message.sequence),
                    Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => None,
                    Err(err) => {
                        tracing::warn!(group = group.name, partition = partition.index, %err, "ownership record not read");
                        return;
                    }
                };
                let verdict = own::judge(&lock(&partition.own), record, now, ttl);
                match verdict {
                    Verdict::Watch { seen, since } => {
                        *lock(&partition.own) = Own::Watching {
                            seen: Some(seen),
                            since,
                            checked: Some(now),
                        };
                    }
                    Verdict::Claim { expected, wait } => {
                        let sent = Instant::now();
                        match self.write_owner(group, partition, expected).await {
                            Ok(seq) => {
                                let pull_after = if wait {
                                    sent + takeover_wait(self.options.ack_wait)
                                } else {
                                    sent
                                };
                                *lock(&partition.own) = Own::Owned { seq, renewed: sent };
                                self.start_feed(
                                    group,
                                    Slot::Partition(partition.index),
                                    pull_after,
                                );
                                tracing::info!(
                                    group = group.name,
                                    partition = partition.index,
                                    "partition owned"
                                );
                            }
                            // Another process was faster, or the server did not answer: read
                            // the record again next time.
                            Err(_) => {
                                *lock(&partition.own) = Own::Watching {
                                    seen: None,
                                    since: now,
                                    checked: Some(now),
                                };
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes this process's ownership record, if the subject's last record is still
    /// `expected` (0: none). `Err(None)`: it is not (another process wrote one).
    async fn write_owner(
        &self,
        group: &Group,
        partition: &Partition,
        expected: u64,
    ) -> Result<u64, Option<BrokerError>> {
        let subject = names::owner_subject(&self.options.namespace, &group.names, partition.index);
        let body = serde_json::to_vec(&OwnerRecord {
            owner: self.process,
            group: &group.name,
            partition: partition.index,
        })
        .map_err(|err| Some(BrokerError::Internal(Box::new(err))))?;
        let message = PublishMessage::build()
            .payload(body.into())
            .expected_stream(self.owners_stream.cached_info().config.name.as_str())
            .expected_last_subject_sequence(expected);
        let sent = self.js.send_publish(subject, message).await;
        let acked = match sent {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match acked {
            Ok(ack) => Ok(ack.sequence),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Err(None),
            Err(err) => Err(Some(classify_publish(err))),
        }
    }

    /// Stops owning `partition`: its feed stops, and what it held is forgotten (its tags settle
    /// nothing; the server delivers the messages again to the next owner).
    fn lose(&self, group: &Group, partition: &Partition, why: &str) {
        tracing::warn!(
            group = group.name,
            partition = partition.index,
            why,
            "partition ownership lost"
        );
        *lock(&partition.own) = Own::new(Instant::now());
        if let Some(feed) = lock(&partition.feed).take() {
            feed.task.abort();
            lock(&self.ledger).forget_link(feed.link);
        }
    }

    /// Starts (or restarts) the feed of one consumer of `group`, pulling from `start` on. A feed
    /// it replaces is stopped and its deliveries forgotten.
    fn start_feed(&self, group: &Group, slot: Slot, start: Instant) {
        let link = self.links.fetch_add(1, Ordering::AcqRel) + 1;
        let (consumer, place) = match slot {
            Slot::Partition(i) => {
                let partition = &group.partitions[usize::from(i)];
                (&partition.consumer, &partition.feed)
            }
            Slot::Unkeyed => (&group.unkeyed, &group.unkeyed_feed),
        };
        // `WARMING` until the feed's first drain is done.
        let pending = Arc::new(AtomicU64::new(WARMING));
        let task = tokio::spawn(feed(
            consumer.clone(),
            group.name.clone(),
            slot,
            link,
            pending.clone(),
            self.ledger.clone(),
            self.arrived.clone(),
            usize::try_from(self.options.window).unwrap_or(usize::MAX),
            self.options.ack_wait,
            start,
        ))
        .abort_handle();
        let old = lock(place).replace(Feed {
            link,
            task,
            pending,
        });
        if let Some(old) = old {
            old.task.abort();
            lock(&self.ledger).forget_link(old.link);
        }
    }
}

/// How long after taking a consumer over (from a dead owner, or from a feed that lost its
/// connection) pulling waits: until every delivery the old feed held, or that was on its way to
/// it, or that the server handed to one of its pull requests still open, is back on the server.
fn takeover_wait(ack_wait: Duration) -> Duration {
    PULL_EXPIRES + ack_wait + TAKEOVER_MARGIN
}

/// Pulls one consumer's messages into the ledger from `start` on, `window` at most outstanding,
/// until aborted. A message keel did not write is terminated (it could never be handled).
///
/// Each round first drains what the server can hand over at once, sorted by stream sequence:
/// after a takeover (or a lost connection) that is every delivery the server took back, and
/// JetStream 2.9 redelivers those before newer messages but not necessarily in order among
/// themselves. Only then does a continuous pull start. If the pull stream ends (a deleted
/// consumer, a connection given up), what this feed held is forgotten and the next round starts
/// after `ack_wait`, when the server has taken back whatever was on its way here.
#[allow(clippy::too_many_arguments)]
async fn feed(
    consumer: PullConsumer,
    group: String,
    slot: Slot,
    link: u64,
    pending: Arc<AtomicU64>,
    ledger: Arc<Mutex<Held>>,
    arrived: Arc<tokio::sync::Notify>,
    window: usize,
    ack_wait: Duration,
    start: Instant,
) {
    let mut start = start;
    loop {
        tokio::time::sleep_until(start.into()).await;
        drain(&consumer, &group, slot, link, &ledger, &pending, window).await;
        let _ = pending.compare_exchange(WARMING, 0, Ordering::AcqRel, Ordering::Acquire);
        arrived.notify_waiters();
        let stream = consumer
            .stream()
            .max_messages_per_batch(window)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 2)
            .messages()
            .await;
        match stream {
            Ok(mut messages) => {
                while let Some(next) = messages.next().await {
                    match next {
                        Ok(message) => {
                            // One waiting fetch is enough for one message (each wake-up is a
                            // pass over the held deliveries); a permit is kept if none waits.
                            if accept(&group, slot, link, &ledger, &pending, message).await {
                                arrived.notify_one();
                            }
                        }
                        Err(err) => tracing::debug!(group, %err, "pull stream"),
                    }
                }
                tracing::warn!(group, "pull stream ended; starting again after ack_wait");
            }
            Err(err) => {
                tracing::warn!(group, %err, "pull stream not opened; trying again after ack_wait")
            }
        }
        lock(&ledger).forget_link(link);
        start = Instant::now() + takeover_wait(ack_wait);
    }
}

/// Takes what the consumer can hand over at once (no waiting on the server), in batches of
/// `window`, each sorted by stream sequence before it enters the ledger.
async fn drain(
    consumer: &PullConsumer,
    group: &str,
    slot: Slot,
    link: u64,
    ledger: &Mutex<Held>,
    pending: &AtomicU64,
    window: usize,
) {
    loop {
        let pulled = async {
            // With an expiry: on a 2.9 server a `no_wait` pull without one that finds nothing
            // deliverable stays queued, and would later take a message to an inbox nobody reads.
            let mut messages = consumer
                .fetch()
                .max_messages(window)
                .expires(Duration::from_millis(200))
                .messages()
                .await?;
            let mut out = Vec::with_capacity(window);
            while let Some(next) = messages.next().await {
                match next {
                    Ok(message) => out.push(message),
                    Err(err) => {
                        tracing::debug!(%err, "drain ended");
                        break;
                    }
                }
            }
            Ok::<_, async_nats::Error>(out)
        };
        let mut batch = match tokio::time::timeout(Duration::from_secs(10), pulled).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(err)) => {
                tracing::warn!(group, %err, "drain failed");
                return;
            }
            Err(_) => {
                tracing::warn!(group, "drain unanswered");
                return;
            }
        };
        let full = batch.len() >= window;
        batch.sort_by_key(|m| m.info().map_or(u64::MAX, |info| info.stream_sequence));
        for message in batch {
            accept(group, slot, link, ledger, pending, message).await;
        }
        if !full {
            return;
        }
    }
}

/// Puts a pulled message in the ledger; `false` if it is no keel message (then terminated).
async fn accept(
    group: &str,
    slot: Slot,
    link: u64,
    ledger: &Mutex<Held>,
    pending: &AtomicU64,
    message: jetstream::Message,
) -> bool {
    let (seq, delivered) = match message.info() {
        Ok(info) => {
            pending.store(info.pending, Ordering::Release);
            (info.stream_sequence, info.delivered)
        }
        Err(err) => {
            tracing::error!(group, %err, "pulled a message without JetStream metadata");
            return false;
        }
    };
    let decoded = match codec::decode(message.headers.as_ref()) {
        Ok(decoded) => decoded,
        Err(why) => {
            tracing::error!(group, seq, why, "foreign message terminated");
            if let Err(err) = message.double_ack_with(AckKind::Term).await {
                tracing::warn!(%err, "could not terminate a foreign message");
            }
            return false;
        }
    };
    let incoming = Incoming {
        id: decoded.id,
        topic: decoded.topic,
        key: decoded.key,
        headers: decoded.headers,
        body: message.payload.to_vec(),
        published_at: decoded.published_at,
        expires_at: decoded.expires_at,
        first_attempt: u32::try_from(delivered).unwrap_or(u32::MAX),
    };
    lock(ledger).insert(group, link, slot, incoming, message, Instant::now());
    true
}

#[async_trait]
impl Broker for NatsBroker {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        check_name("group", group, false)?;
        check_name("pattern", pattern, true)?;
        let inner = &self.inner;
        // The stream first: a publisher that sees the binding must find the stream.
        inner.group(group, true).await?;
        let known = inner
            .bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .patterns
            .get(group)
            .is_some_and(|patterns| patterns.contains(pattern));
        if known {
            return Ok(());
        }
        let body = serde_json::to_vec(&Binding {
            group: group.to_owned(),
            pattern: pattern.to_owned(),
        })
        .map_err(|err| BrokerError::Internal(Box::new(err)))?;
        let message = PublishMessage::build()
            .payload(body.into())
            .expected_stream(inner.bindings_stream.cached_info().config.name.as_str());
        inner
            .js
            .send_publish(
                names::binding_subject(&inner.options.namespace, group, pattern),
                message,
            )
            .await
            .map_err(classify_publish)?
            .await
            .map_err(classify_publish)?;
        inner
            .bindings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .patterns
            .entry(group.to_owned())
            .or_default()
            .insert(pattern.to_owned());
        Ok(())
    }

    async fn publish(&self, topic: &str, message: Outgoing) -> Result<bool, BrokerError> {
        let inner = &self.inner;
        check_publish(topic, &message.body, inner.options.max_body_bytes)?;
        let ticket = inner.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let headers = codec::encode(topic, &message, Utc::now());
        let slot = Slot::of(message.key.as_deref(), inner.options.partitions);
        let id = message.id.to_string();
        let body = Bytes::from(message.body);
        let known = inner.matching(topic);
        let (stored, refreshed) = tokio::join!(
            inner.store_all(&known, slot, &headers, &body, Some(&id)),
            inner.refresh_bindings(ticket),
        );
        refreshed?;
        stored?;
        let all = inner.matching(topic);
        let late: Vec<String> = all
            .iter()
            .filter(|group| !known.contains(group))
            .cloned()
            .collect();
        inner
            .store_all(&late, slot, &headers, &body, Some(&id))
            .await?;
        Ok(!all.is_empty())
    }

    async fn publish_many(&self, batch: &[(String, Outgoing)]) -> Result<Vec<bool>, BrokerError> {
        let inner = &self.inner;
        for (topic, message) in batch {
            check_publish(topic, &message.body, inner.options.max_body_bytes)?;
        }
        let ticket = inner.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let now = Utc::now();
        let prepared: Vec<Prepared> = batch
            .iter()
            .map(|(topic, message)| Prepared {
                topic: topic.clone(),
                key: message.key.clone(),
                slot: Slot::of(message.key.as_deref(), inner.options.partitions),
                id: message.id.to_string(),
                headers: codec::encode(topic, message, now),
                body: Bytes::from(message.body.clone()),
            })
            .collect();
        let known = inner.matching_each(&prepared);
        // As in `publish`: the refresh runs beside the stores to the groups already known.
        let (stored, refreshed) = tokio::join!(
            inner.store_batch(&prepared, &known),
            inner.refresh_bindings(ticket),
        );
        refreshed?;
        stored?;
        let all = inner.matching_each(&prepared);
        let late: Vec<Vec<String>> = all
            .iter()
            .zip(&known)
            .map(|(all, known)| all.iter().filter(|g| !known.contains(g)).cloned().collect())
            .collect();
        if late.iter().any(|groups| !groups.is_empty()) {
            inner.store_batch(&prepared, &late).await?;
        }
        Ok(all.iter().map(|groups| !groups.is_empty()).collect())
    }

    async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: Outgoing,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        check_name("group", group, false)?;
        check_publish(topic, &message.body, inner.options.max_body_bytes)?;
        let headers = codec::encode(topic, &message, Utc::now());
        let slot = Slot::of(message.key.as_deref(), inner.options.partitions);
        inner
            .store(group, slot, &headers, &Bytes::from(message.body), None)
            .await
    }

    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let inner = &self.inner;
        check_name("group", group, false)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        // What is held here could be handed out, but its acks could not be sent: say so.
        if inner.js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(BrokerError::Unavailable("not connected to NATS".into()));
        }
        let Some(opened) = inner.group(group, false).await? else {
            return Ok(Vec::new());
        };
        if !opened.consuming.swap(true, Ordering::AcqRel) {
            // The first fetch: feed the unkeyed messages, claim what partitions are free.
            inner.start_feed(&opened, Slot::Unkeyed, Instant::now());
            inner.tend(&opened).await;
        }
        // Messages reach the feeds one by one, and each round of a worker costs a round trip
        // (its acks): so once something is ready, linger a moment to hand out a fuller batch;
        // with nothing ready, wait while messages are on their way (a feed's last message said
        // the server has more for it, and its window has room) or while this process holds
        // deliveries of the group (an ack frees a key's next message). No server call here.
        let start = Instant::now();
        let mut out = Vec::new();
        let mut linger_until = None;
        let holding = loop {
            // Made before looking, so that a change between the look and the wait is not missed.
            let arrived = inner.arrived.notified();
            out.extend(lock(&inner.ledger).take(group, max - out.len(), lease, Instant::now()));
            if out.len() >= max {
                break true;
            }
            let now = Instant::now();
            if !out.is_empty() {
                // Lingering sleeps rather than waking at every arrival: each wake-up costs a
                // pass over the held deliveries, and arrivals come thousands a second.
                let until = *linger_until.get_or_insert(now + LINGER);
                if now >= until {
                    break true;
                }
                tokio::time::sleep_until(until.into()).await;
                continue;
            }
            let until = if lock(&inner.ledger).holds(group) {
                start + BUSY_WAIT
            } else if inner.warming(&opened) {
                start + FETCH_WAIT
            } else if inner.on_the_way(&opened) {
                start + ON_THE_WAY_WAIT
            } else {
                break false;
            };
            if now >= until {
                break true;
            }
            let _ = tokio::time::timeout_at(until.into(), arrived).await;
        };
        if holding || !out.is_empty() {
            return Ok(out);
        }
        // Holding none: if the group stores messages, some may be on their way here (published a
        // moment ago, or being drained): wait for them a little. (They may as well be held by
        // another process, or in partitions it owns: then the wait is an idle worker's pause.)
        let stored = match opened.stream.get_info().await {
            Ok(info) => info.state.messages,
            Err(err) if error::code(&err) == Some(error::STREAM_NOT_FOUND) => {
                // Deleted behind keel's back: forgotten, made again by the next publish.
                let gone = lock(&inner.groups).remove(group);
                if let Some(gone) = gone {
                    inner.retire(&gone);
                }
                return Ok(Vec::new());
            }
            Err(err) => return Err(classify(err)),
        };
        if stored == 0 {
            return Ok(Vec::new());
        }
        let wait = if inner.warming(&opened) {
            FETCH_WAIT
        } else {
            SETTLED_WAIT
        };
        let deadline = Instant::now() + wait;
        loop {
            let arrived = inner.arrived.notified();
            let out = lock(&inner.ledger).take(group, max, lease, Instant::now());
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            let _ = tokio::time::timeout_at(deadline.into(), arrived).await;
        }
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        let message = lock(&self.inner.ledger)
            .ack(tag)
            .map_err(|_| BrokerError::LeaseLost)?;
        // The key's next message, held here, may be ready now.
        self.inner.arrived.notify_waiters();
        // Confirmed by the server. If the confirmation does not come, the message may be
        // delivered again after ack_wait; its handler's effect is recorded with its id.
        message.double_ack().await.map_err(BrokerError::Unavailable)
    }

    /// Takes the batch out of the ledger at once (one wake-up for waiting fetches), then, per
    /// consumer, sends plain acks and a confirmed ack last: a consumer applies the acks it gets
    /// from one connection in order, so the last one's confirmation confirms them all, and the
    /// server sends one reply per consumer instead of one per message.
    async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        let inner = &self.inner;
        let taken: Vec<Result<jetstream::Message, BrokerError>> = {
            let mut ledger = lock(&inner.ledger);
            tags.iter()
                .map(|tag| ledger.ack(*tag).map_err(|_| BrokerError::LeaseLost))
                .collect()
        };
        inner.arrived.notify_waiters();
        let mut by_consumer: HashMap<&str, Vec<(usize, &jetstream::Message)>> = HashMap::new();
        for (i, message) in taken.iter().enumerate() {
            if let Ok(message) = message {
                let consumer = message.info().map(|info| info.consumer).unwrap_or_default();
                by_consumer.entry(consumer).or_default().push((i, message));
            }
        }
        let settled =
            futures_util::future::join_all(by_consumer.into_values().map(|batch| async move {
                let outcome = async {
                    let Some(((_, last), rest)) = batch.split_last() else {
                        return Ok(());
                    };
                    for (_, message) in rest {
                        message.ack().await?;
                    }
                    last.double_ack().await
                }
                .await
                .map_err(|err| err.to_string());
                (
                    batch.into_iter().map(|(i, _)| i).collect::<Vec<_>>(),
                    outcome,
                )
            }))
            .await;
        let mut results: Vec<Result<(), BrokerError>> = taken
            .iter()
            .map(|m| match m {
                Ok(_) => Ok(()),
                Err(_) => Err(BrokerError::LeaseLost),
            })
            .collect();
        for (indices, outcome) in settled {
            if let Err(err) = outcome {
                for i in indices {
                    results[i] = Err(BrokerError::Unavailable(err.clone().into()));
                }
            }
        }
        results
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        // Kept here, unacknowledged (kept alive by the sweeper), and handed out again after the
        // delay: the key's later messages, held here too, wait behind it.
        lock(&self.inner.ledger)
            .retry(tag, ledger::later(Instant::now(), delay))
            .map_err(|_| BrokerError::LeaseLost)
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        check_name("group", group, false)?;
        let Some(opened) = self.inner.group(group, false).await? else {
            return Ok(QueueDepth::default());
        };
        let info = match opened.stream.get_info().await {
            Ok(info) => info,
            Err(err) if error::code(&err) == Some(error::STREAM_NOT_FOUND) => {
                return Ok(QueueDepth::default());
            }
            Err(err) => return Err(classify(err)),
        };
        let state = info.state;
        let in_flight = lock(&self.inner.ledger)
            .held(group, Instant::now())
            .in_flight;
        let oldest = (state.messages > 0)
            .then(|| {
                let first = DateTime::from_timestamp_nanos(
                    i64::try_from(state.first_timestamp.unix_timestamp_nanos()).unwrap_or(i64::MAX),
                );
                (Utc::now() - first).to_std().ok()
            })
            .flatten();
        Ok(QueueDepth {
            ready: state.messages.saturating_sub(in_flight),
            in_flight,
            oldest,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dedupes_publish: true,
        }
    }
}
