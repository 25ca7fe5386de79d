//! keel's NATS JetStream broker: [`NatsBroker`] implements [`keel_domain::Broker`] on a real
//! JetStream server (2.9 or later) with durable pull consumers, explicit acks, `Nats-Msg-Id`
//! de-duplication and a maximum delivery count.
//!
//! - [`NatsBroker::connect`] with [`NatsOptions`]: the only entry point; `setup` connects,
//!   opens the namespace's streams and a group's stream and consumers.
//! - `publish`: bindings, and a copy of each message stored for every bound group.
//! - `claim`: the sweeper that claims and renews partitions, and the feeds that pull messages
//!   into the ledger of held deliveries; `lease`: `fetch`, `ack`, `retry` on that ledger;
//!   `depth`: a group's depth. The [`keel_domain::Broker`] impl here only delegates to them.
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
//! pattern (checked by [`keel_domain::messaging::queue::check_name`]) or a body over
//! [`NatsOptions::max_body_bytes`] is [`BrokerError::Invalid`], as in the SQL queue.

mod claim;
mod codec;
mod depth;
mod error;
mod lease;
mod names;
mod own;
mod publish;
mod setup;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream;
use async_trait::async_trait;
use keel_domain::messaging::ledger::Ledger;
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::{GroupNames, Slot};
use crate::own::Own;

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

#[async_trait]
impl Broker for NatsBroker {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        self.inner.bind(group, pattern).await
    }

    async fn publish(&self, topic: &str, message: Outgoing) -> Result<bool, BrokerError> {
        self.inner.publish(topic, message).await
    }

    async fn publish_many(&self, batch: &[(String, Outgoing)]) -> Result<Vec<bool>, BrokerError> {
        self.inner.publish_many(batch).await
    }

    async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: Outgoing,
    ) -> Result<(), BrokerError> {
        self.inner.redeliver(group, topic, message).await
    }

    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.inner.fetch(group, max, lease).await
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        self.inner.ack(tag).await
    }

    async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        self.inner.ack_many(tags).await
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        self.inner.retry(tag, delay).await
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        self.inner.depth(group).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dedupes_publish: true,
        }
    }
}
