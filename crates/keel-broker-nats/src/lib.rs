//! keel's NATS JetStream broker: [`NatsBroker`] implements [`keel_domain::Broker`] on a real
//! JetStream server (2.9 or later) with durable pull consumers, explicit acks, `Nats-Msg-Id`
//! de-duplication and a maximum delivery count.
//!
//! - [`NatsBroker::connect`] with [`NatsOptions`]: the only entry point.
//! - `names`: how groups and patterns become stream, consumer and subject names.
//! - `codec`: how a message's topic, key, headers and times travel in NATS headers.
//! - `plan`: which consumers one `fetch` pulls, and how long each pull may wait.
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
//! # Ordering per key, parallelism across keys
//!
//! A group's stream has `K` = [`NatsOptions::partitions`] keyed subjects `….p<i>`, `i` =
//! FNV-1a(key) mod `K` (a fixed hash: every process and build agrees), each read by its own
//! durable pull consumer `p<i>` with `max_ack_pending = 1`, and one unkeyed subject `….u` read by
//! consumer `u` with `max_ack_pending = max_depth` (it can never be reached, so pulls never stall
//! on it). A partition hands out its next message only when the previous one is acked; a
//! retry (NAK with delay) and an expired lease keep the message pending, and JetStream redelivers
//! pending messages before newer ones, so a key's order survives retries, crashes and other
//! processes. Keys sharing a partition wait for each other: `K` bounds the keyed parallelism of a
//! group (16 by default). `K` must be the same in every process of a namespace.
//!
//! `fetch(group, max, lease)` reads the group's consumers' counts (one `CONSUMER.LIST`) and
//! plans its pulls (module `plan`): a consumer with a deliverable message (a partition with
//! nothing outstanding and something pending; the unkeyed consumer with something pending), or
//! one whose delivery this process released, is pulled at once; a partition this process holds
//! or retried (delay not yet passed) is skipped; any other consumer with deliveries outstanding
//! (held elsewhere, or released by another process or by the server after a crash) is probed at
//! most every 200 ms. The pulls run concurrently, one message per partition and a batch from the
//! unkeyed consumer; the budget is split so that neither keyed nor unkeyed messages starve the
//! other, and at most one message per key is returned because each partition yields at most
//! one. Every pull is `no_wait` with an expiry (200 ms for a deliverable consumer: the answer
//! comes as soon as the message is sent, the expiry only bounds a race lost to another process
//! or a loaded server; 20 ms for a probe): on 2.9 a `no_wait` pull without expiry that finds only
//! held messages stays queued and would later take a message to an inbox nobody reads. An
//! expiry of a few milliseconds proved too short on a loaded machine: the server expired pulls
//! before serving messages it had.
//!
//! # Leases
//!
//! The consumers' `ack_wait` ([`NatsOptions::ack_wait`], 30 s by default) is the lease between
//! processes: a delivery not acked in time (its process died) is redelivered by the server.
//! `fetch`'s own, usually shorter, `lease` is enforced in this process: its deadline is counted
//! from before the pull request (so it ends before the server's), capped at `ack_wait`; a delivery
//! still unsettled at its deadline is NAKed (by the next `fetch`, or a sweeper task every
//! 100 ms), so it comes back at once with `attempt + 1` (= JetStream's delivery count), and its
//! old tag is forgotten: `ack` or `retry` with it returns [`BrokerError::LeaseLost`], as does a
//! tag already settled or unknown to this process. `ack` is a double ack (it waits for the
//! server's confirmation), so when it returns the message is deleted; `retry(tag, delay)` is a
//! NAK with that delay, also confirmed. Because local leases end before the server's, a stale
//! ack never settles a delivery another worker holds. Another process finds a delivery released
//! here (or by the server after `ack_wait`) by its next probe of that consumer, within about
//! 200 ms; this process pulls it again at once.
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
//! `in_flight` is the sum of the consumers' `num_ack_pending` (this includes messages waiting
//! for a retry delay: JetStream keeps them pending); `ready` is the stream's message count minus
//! that; `oldest` is the age of the stream's first message.
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
mod plan;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
    Stream,
};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use keel_domain::queue::check_name;
use keel_domain::queue::topic_matches;
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{classify, classify_publish, internal};
use crate::names::{GroupNames, Slot};
use crate::plan::{Hints, Observed, Pull};

/// How often expired local leases are NAKed when no `fetch` does it first.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Settings of a [`NatsBroker`]. Processes sharing a namespace must agree on `partitions`;
/// the other limits are fixed when a group's stream and consumers are first created.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Prefix of every stream and subject: `[A-Za-z0-9_-]`, 1 to 64 characters.
    pub namespace: String,
    /// Keyed partitions per group (`K`): the most keys of one group handled in parallel.
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
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            namespace: "keel".into(),
            partitions: 16,
            max_depth: 1_000_000,
            max_body_bytes: 256 * 1024,
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            duplicate_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(5),
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
    }
}

struct Inner {
    js: jetstream::Context,
    options: NatsOptions,
    bindings_stream: Stream,
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
    /// Deliveries this process holds, by lease token.
    leases: Mutex<HashMap<Uuid, Lease>>,
    /// Rotates the first partition tried, so partitions take turns when `max` is small.
    turn: AtomicUsize,
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

struct Group {
    name: String,
    names: GroupNames,
    stream: Stream,
    partitions: Vec<Puller>,
    unkeyed: Puller,
    /// What this process knows of each consumer beyond the server's counts (see `plan`).
    hints: Mutex<HashMap<Slot, Hints>>,
}

impl Group {
    fn with_hint<R>(&self, slot: Slot, change: impl FnOnce(&mut Hints) -> R) -> R {
        change(lock(&self.hints).entry(slot).or_default())
    }

    fn puller(&self, slot: Slot) -> &Puller {
        match slot {
            Slot::Partition(i) => &self.partitions[usize::from(i)],
            Slot::Unkeyed => &self.unkeyed,
        }
    }
}

struct Puller {
    consumer: PullConsumer,
    /// One pull at a time per consumer in this process: concurrent no-wait pulls on one consumer
    /// make the server answer "requests pending" instead of messages.
    lock: tokio::sync::Mutex<()>,
}

struct Lease {
    group: Arc<Group>,
    slot: Slot,
    message: jetstream::Message,
    deadline: Instant,
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
        let client = async_nats::ConnectOptions::new()
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
        let bindings_stream = open_stream(
            &js,
            StreamConfig {
                name: names::bindings_stream(&options.namespace),
                subjects: vec![names::bindings_filter(&options.namespace)],
                description: Some("keel bindings: group -> topic pattern".into()),
                max_messages_per_subject: 1,
                storage: StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let inner = Arc::new(Inner {
            js,
            options,
            bindings_stream,
            bindings: RwLock::default(),
            refresh: tokio::sync::Mutex::new(()),
            tickets: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            groups: Mutex::default(),
            leases: Mutex::default(),
            turn: AtomicUsize::new(0),
        });
        let sweeper = tokio::spawn(sweep_until_dropped(Arc::downgrade(&inner))).abort_handle();
        Ok(NatsBroker { inner, sweeper })
    }
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
        let description = format!("keel group {name}; partitions {}", options.partitions);
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
                    Slot::Partition(_) => 1,
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
        let mut pullers: Vec<Puller> = consumers
            .into_iter()
            .map(|consumer| Puller {
                consumer,
                lock: tokio::sync::Mutex::new(()),
            })
            .collect();
        let unkeyed = pullers
            .pop()
            .ok_or_else(|| internal("no consumers".into()))?;
        let group = Arc::new(Group {
            name: name.to_owned(),
            names,
            stream,
            partitions: pullers,
            unkeyed,
            hints: Mutex::default(),
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
            let mut message = PublishMessage::build()
                .payload(body.clone())
                .headers(headers.clone())
                .expected_stream(&opened.names.stream);
            if let Some(id) = dedupe_id {
                message = message.message_id(id);
            }
            let sent = self
                .js
                .send_publish(opened.names.subject(slot), message)
                .await;
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
                    lock(&self.groups).remove(group);
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
        let mut worst = None;
        for result in results {
            match (result, &worst) {
                (Ok(()), _) => {}
                (Err(BrokerError::Full), _) => worst = Some(BrokerError::Full),
                (Err(err), None) => worst = Some(err),
                (Err(_), Some(_)) => {}
            }
        }
        worst.map_or(Ok(()), Err)
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

    /// NAKs every delivery whose local lease has ended, so it comes back at once.
    async fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Lease> = {
            let mut leases = lock(&self.leases);
            let ids: Vec<Uuid> = leases
                .iter()
                .filter(|(_, lease)| lease.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| leases.remove(id)).collect()
        };
        if expired.is_empty() {
            return;
        }
        let naks = expired
            .iter()
            .map(|lease| lease.message.double_ack_with(AckKind::Nak(None)));
        for (lease, result) in expired
            .iter()
            .zip(futures_util::future::join_all(naks).await)
        {
            if let Err(err) = result {
                // The server redelivers it after ack_wait anyway.
                tracing::warn!(group = lease.group.name, %err, "could not release an expired lease");
            }
            lease
                .group
                .with_hint(lease.slot, |hint| hint.released = true);
        }
    }

    /// Removes a lease to settle it; `LeaseLost` if it is unknown or its deadline has passed
    /// (then it is released at once).
    async fn take_lease(&self, tag: DeliveryTag) -> Result<Lease, BrokerError> {
        let lease = lock(&self.leases)
            .remove(&tag.lease)
            .ok_or(BrokerError::LeaseLost)?;
        if lease.deadline <= Instant::now() {
            if let Err(err) = lease.message.double_ack_with(AckKind::Nak(None)).await {
                tracing::warn!(group = lease.group.name, %err, "could not release an expired lease");
            }
            lease
                .group
                .with_hint(lease.slot, |hint| hint.released = true);
            return Err(BrokerError::LeaseLost);
        }
        Ok(lease)
    }

    /// Forgets an opened group whose stream is gone (if the cache still holds that one).
    fn forget(&self, group: &Group) {
        let mut groups = lock(&self.groups);
        if groups
            .get(&group.name)
            .is_some_and(|cached| std::ptr::eq(&**cached, group))
        {
            groups.remove(&group.name);
        }
    }

    /// Partitions of `group` this process holds a delivery of.
    fn held(&self, group: &Group) -> HashSet<u16> {
        lock(&self.leases)
            .values()
            .filter(|lease| lease.group.name == group.name)
            .filter_map(|lease| match lease.slot {
                Slot::Partition(i) => Some(i),
                Slot::Unkeyed => None,
            })
            .collect()
    }

    /// The server's counts for each of the group's consumers (one `CONSUMER.LIST`).
    /// `None` when the stream is gone (deleted behind keel's back): the group is forgotten, so
    /// the next call opens it afresh.
    async fn observe(&self, group: &Group) -> Result<Option<HashMap<Slot, Observed>>, BrokerError> {
        let infos: Vec<_> = match group.stream.consumers().try_collect().await {
            Ok(infos) => infos,
            Err(err) if error::code(&err) == Some(error::STREAM_NOT_FOUND) => {
                self.forget(group);
                return Ok(None);
            }
            Err(err) => return Err(classify(err)),
        };
        let slots: HashMap<String, Slot> = (0..self.options.partitions)
            .map(Slot::Partition)
            .chain([Slot::Unkeyed])
            .map(|slot| (slot.name(), slot))
            .collect();
        Ok(Some(
            infos
                .iter()
                .filter_map(|info| {
                    let slot = *slots.get(&info.name)?;
                    Some((
                        slot,
                        Observed {
                            pending: info.num_pending,
                            outstanding: info.num_ack_pending as u64,
                        },
                    ))
                })
                .collect(),
        ))
    }

    /// Runs one planned pull. A partition another task of this process is pulling is skipped:
    /// that task gets its message.
    async fn pull_slot(
        &self,
        group: &Group,
        pull: Pull,
    ) -> Result<Vec<jetstream::Message>, BrokerError> {
        let puller = group.puller(pull.slot);
        let _pulling = match pull.slot {
            Slot::Partition(_) => match puller.lock.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(Vec::new()),
            },
            Slot::Unkeyed => puller.lock.lock().await,
        };
        self.pull(puller, pull.batch, pull.wait.duration()).await
    }

    /// Pulls up to `batch` messages, waiting at most `wait` on the server for them.
    async fn pull(
        &self,
        puller: &Puller,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<jetstream::Message>, BrokerError> {
        let request = puller.consumer.fetch().max_messages(batch).expires(wait);
        let collect = async {
            let mut messages = request.messages().await.map_err(classify)?;
            let mut out = Vec::with_capacity(batch);
            while let Some(next) = messages.next().await {
                match next {
                    Ok(message) => out.push(message),
                    // A status other than "no messages" or "timeout" (e.g. 409 when the server
                    // has too many waiting pulls): nothing more from this pull.
                    Err(err) => {
                        tracing::debug!(%err, "pull ended");
                        break;
                    }
                }
            }
            Ok(out)
        };
        // The server answers within `wait`; past the request timeout it is not answering at all.
        tokio::time::timeout(self.options.request_timeout, collect)
            .await
            .map_err(|elapsed| {
                tracing::warn!(
                    consumer = puller.consumer.cached_info().name,
                    "pull unanswered"
                );
                BrokerError::Unavailable(Box::new(elapsed))
            })?
    }

    /// Turns pulled messages into leased deliveries.
    async fn lease(
        &self,
        group: &Arc<Group>,
        pulled: Vec<(Slot, jetstream::Message)>,
        deadline: Instant,
    ) -> Vec<Delivery> {
        let mut deliveries = Vec::with_capacity(pulled.len());
        for (slot, message) in pulled {
            let (seq, attempt) = match message.info() {
                Ok(info) => (info.stream_sequence, info.delivered),
                Err(err) => {
                    tracing::error!(group = group.name, %err, "pulled a message without JetStream metadata");
                    continue;
                }
            };
            let decoded = match codec::decode(message.headers.as_ref()) {
                Ok(decoded) => decoded,
                Err(why) => {
                    // Not written by keel: it can never be handled, so it is terminated rather
                    // than redelivered forever.
                    tracing::error!(group = group.name, seq, why, "foreign message terminated");
                    if let Err(err) = message.double_ack_with(AckKind::Term).await {
                        tracing::warn!(%err, "could not terminate a foreign message");
                    }
                    continue;
                }
            };
            let tag = DeliveryTag {
                seq: i64::try_from(seq).unwrap_or(i64::MAX),
                lease: Uuid::new_v4(),
            };
            deliveries.push(Delivery {
                tag,
                id: decoded.id,
                group: group.name.clone(),
                topic: decoded.topic,
                key: decoded.key,
                headers: decoded.headers,
                body: message.payload.to_vec(),
                published_at: decoded.published_at,
                expires_at: decoded.expires_at,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            });
            lock(&self.leases).insert(
                tag.lease,
                Lease {
                    group: group.clone(),
                    slot,
                    message,
                    deadline,
                },
            );
        }
        deliveries.sort_by_key(|d| d.tag.seq);
        deliveries
    }
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
        inner.sweep().await;
        if max == 0 {
            return Ok(Vec::new());
        }
        let Some(opened) = inner.group(group, false).await? else {
            return Ok(Vec::new());
        };
        // Counted from before the pull: the server's ack_wait starts later, so ours ends first.
        // A real clock (not tokio's, which tests may pause): the server's runs regardless.
        let deadline = Instant::now() + lease.min(inner.options.ack_wait);
        let Some(observed) = inner.observe(&opened).await? else {
            return Ok(Vec::new());
        };
        let held = inner.held(&opened);
        let turn = inner.turn.fetch_add(1, Ordering::Relaxed);
        let pulls = plan::plan(
            max,
            inner.options.partitions,
            &observed,
            &mut lock(&opened.hints),
            &held,
            Instant::now(),
            turn,
        );
        let results = futures_util::future::join_all(
            pulls.iter().map(|pull| inner.pull_slot(&opened, *pull)),
        )
        .await;
        let mut pulled = Vec::new();
        let mut failure = None;
        for (pull, result) in pulls.iter().zip(results) {
            match result {
                Ok(messages) => {
                    if messages.len() < pull.batch {
                        // Drained: whatever this process released has been taken again.
                        opened.with_hint(pull.slot, |hint| hint.released = false);
                    }
                    pulled.extend(messages.into_iter().map(|m| (pull.slot, m)));
                }
                Err(err) => failure = Some(err),
            }
        }
        // Partitions that turned out blocked elsewhere leave budget the unkeyed consumer may use.
        let room = max - pulled.len();
        let unkeyed_full = pulls.iter().any(|pull| {
            pull.slot == Slot::Unkeyed
                && pulled.iter().filter(|(s, _)| *s == Slot::Unkeyed).count() == pull.batch
        });
        if room > 0 && unkeyed_full {
            let more = Pull {
                slot: Slot::Unkeyed,
                batch: room,
                wait: plan::Wait::Ready,
            };
            match inner.pull_slot(&opened, more).await {
                Ok(messages) => pulled.extend(messages.into_iter().map(|m| (Slot::Unkeyed, m))),
                Err(err) => failure = Some(err),
            }
        }
        // Messages already pulled are leased and returned even if another pull failed: dropping
        // them would delay them by a whole ack_wait.
        if pulled.is_empty()
            && let Some(err) = failure
        {
            return Err(err);
        }
        Ok(inner.lease(&opened, pulled, deadline).await)
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let lease = inner.take_lease(tag).await?;
        if let Err(err) = lease.message.double_ack().await {
            // Unconfirmed: keep the lease so the caller may try again.
            lock(&inner.leases).insert(tag.lease, lease);
            return Err(BrokerError::Unavailable(err));
        }
        Ok(())
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let lease = inner.take_lease(tag).await?;
        // The server's delay starts when it reads the NAK, after this instant: the local block
        // never outlasts the server's.
        let until = Instant::now() + delay;
        if let Err(err) = lease
            .message
            .double_ack_with(AckKind::Nak(Some(delay)))
            .await
        {
            lock(&inner.leases).insert(tag.lease, lease);
            return Err(BrokerError::Unavailable(err));
        }
        lease
            .group
            .with_hint(lease.slot, |hint| hint.retries.push(until));
        Ok(())
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        check_name("group", group, false)?;
        let Some(opened) = self.inner.group(group, false).await? else {
            return Ok(QueueDepth::default());
        };
        let (info, observed) = tokio::join!(opened.stream.get_info(), self.inner.observe(&opened));
        let Some(observed) = observed? else {
            return Ok(QueueDepth::default());
        };
        let state = info.map_err(classify)?.state;
        let in_flight: u64 = observed.values().map(|o| o.outstanding).sum();
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
