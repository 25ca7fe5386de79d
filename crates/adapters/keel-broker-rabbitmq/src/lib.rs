//! keel's RabbitMQ broker: the domain's [`Broker`] port on a real RabbitMQ server (DESIGN.md C5),
//! with durable queues, persistent messages, publisher confirms and manual acknowledgements.
//!
//! The public surface is [`RabbitBroker`], built by [`RabbitBroker::connect`] from
//! [`RabbitOptions`]. Inside: `topology` (names and declarations), `codec` (a message in AMQP
//! properties, the partition of a key), `session` (the connections, channels and consumers),
//! and the domain's `ledger` (the deliveries this process holds and the rules that hand them
//! out, shared with the NATS adapter).
//!
//! # Topology
//! Everything is named under a namespace `ns` (`keel` by default; tests take a fresh one each).
//! A message is published to the topic exchange `ns` with its topic as routing key. Each group
//! has a headers exchange `ns/<group>`, bound to `ns` once per pattern given to `bind`: AMQP topic
//! patterns are keel's patterns, the bindings live in the server (every process sees them at
//! once), and a message matching two patterns of one group reaches the group's exchange once.
//!
//! # Partitions: order per key, parallel across keys
//! A group has `partitions` queues `ns/<group>/0..K` for keyed messages and one queue
//! `ns/<group>/u` for unkeyed ones. The publisher puts a keyed message in partition
//! `fnv1a(key) % K` by setting the `keel-part` header that the group's exchange routes on, so
//! every message of a key lands in one queue, in publish order. `K` must be the same in every
//! process of a namespace (it is part of the namespace's shape, like the queue arguments).
//! Partition queues have a single active consumer: RabbitMQ delivers a partition to one process
//! at a time and hands it to another when that process goes away, so two processes never hold
//! messages of one key. Unkeyed messages are shared by every consuming process.
//! Within the process, [`Broker::fetch`] hands out at most one message per key, oldest first, and
//! holds back a key's later messages while one is in flight or waiting for its retry.
//! The trade-off: keyed work of a group runs in one process at a time (the first to consume
//! holds every partition until it leaves); unkeyed work spreads over all of them. Within a
//! partition, a key with many messages waiting can fill the prefetch window and hold back the
//! partition's other keys until its messages are acknowledged.
//!
//! # Deliveries and leases
//! Each group a process fetches from gets a consumer channel with a prefetch window of
//! `prefetch` messages per queue, kept until the broker is dropped or its connection fails (a
//! process that fetched a group once goes on receiving its messages). Deliveries wait in the
//! process, unacknowledged, until `fetch` hands them out. The lease is kept in the process: a delivery not settled before its lease ends
//! is handed out again (attempt + 1) and its old tag's `ack` returns
//! [`BrokerError::LeaseLost`]; `retry` keeps the message unacknowledged and hands it out again
//! after the delay (attempt + 1), its key blocked meanwhile. **Across processes the lease is the
//! channel's life:** when a process dies or its connection drops, RabbitMQ returns every message
//! it held to its queue, and the next consumer gets it with a higher attempt (quorum queues count
//! deliveries in `x-delivery-count`; classic queues only flag a redelivery, read as attempt 2).
//! A message prefetched but never handed out counts as attempted when its process dies.
//! RabbitMQ closes a channel whose delivery stays unacknowledged longer than its
//! `consumer_timeout` (30 minutes by default), so leases and retry delays must stay below it;
//! such a channel's deliveries are returned and their tags settle nothing.
//!
//! `fetch` returns at once what the process holds that is ready (possibly fewer than `max`). If
//! that is nothing, it asks the server what is ready (passive declares, then a `basic.qos` round
//! trip so every delivery already sent has arrived) and waits, up to half a second, only while a
//! queue it receives from still has ready messages on their way: an empty result means nothing
//! is ready for this process now.
//!
//! # Publishing and backpressure
//! `publish` sends a persistent message with the `mandatory` flag on a channel in confirm mode and
//! waits for the confirm: a message RabbitMQ returns as unroutable means no group is bound to the
//! topic (`false`). Every queue is declared with `x-max-length = max_depth` and
//! `x-overflow = reject-publish`: a full queue refuses the message and the publisher's nack
//! becomes [`BrokerError::Full`], nothing stored in that queue. The bound is per queue, so a group
//! holds at most `(partitions + 1) × max_depth` ready messages; messages delivered to a consumer
//! and not yet acknowledged (at most `prefetch` per queue and process) do not count. A message
//! routed to several groups, one of them full, is refused for that group and stored by the
//! others: the producer's retry stores it a second time there, and consumers absorb the copy by
//! the message id ([`Capabilities::dedupes_publish`] is `false`: RabbitMQ has no publish
//! de-duplication). Classic queues enforce the bound exactly. Quorum queues (RabbitMQ 3.10)
//! accept the publish that crosses it (one more per publish in flight) and then refuse until
//! their ready count falls below 80% of the bound.
//!
//! # Dead letters
//! keel's own dead-letter path is the error hospital, which the worker runtime feeds. RabbitMQ's
//! dead-lettering covers what never reaches a worker: every queue dead-letters to the namespace's
//! `ns/~dead` queue a message that is no keel message (rejected when it arrives), and on quorum
//! queues with `delivery_limit` a message delivered more often than that, which happens only when
//! processes holding it keep dying (a poison message that crashes its worker). The dead-letter
//! exchange is also each group exchange's alternate exchange: a message the group's exchange
//! cannot route (a publisher configured with more partitions) is kept there, not lost. Quorum
//! queues dead-letter at least once (the source keeps the message until the dead-letter queue
//! confirms it); classic queues at most once. keel does not read `ns/~dead`: an operator does.
//!
//! # Depth
//! `depth(group)`: `ready` is the sum of the ready counts RabbitMQ reports for the group's queues
//! plus the messages this process holds and has not handed out (prefetched, retrying, or with a
//! lapsed lease); `in_flight` is this process's leased deliveries. Messages prefetched or leased
//! by other processes appear in neither. `oldest` is the age of the oldest message this process
//! holds of the group (the head of its queues when it consumes them), `None` when it holds none.
//!
//! # Connections
//! Two connections per broker (publishing and consuming, so that RabbitMQ's flow control on
//! publishers never stops acknowledgements). When either fails, the next call opens new ones
//! and every delivery held on the old ones is forgotten (their tags return `LeaseLost`);
//! an unreachable server is [`BrokerError::Unavailable`]. Every round trip is bounded by
//! `timeout`.

mod codec;
mod session;
mod topology;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use keel_domain::messaging::queue::{check_name, check_publish, key_chains, worst};
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, QueueDepth};
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Confirmation};

use codec::Slot;
use keel_domain::messaging::ledger::{self, Ledger};
use session::{Activity, Link, Session, classify, too_slow, unavailable, within};
use topology::{Shape, passive};

/// Longest namespace: the longest queue name (`ns/<200-character group>/63`) must fit in
/// AMQP's 255 bytes.
const MAX_NAMESPACE: usize = 48;
const MAX_PARTITIONS: u16 = 64;
/// How long a `fetch` that finds nothing waits for messages the server says are on their way.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// How long a `fetch` that finds nothing ready, while this process holds deliveries of the
/// group, waits for one to arrive before answering.
const BUSY_WAIT: Duration = Duration::from_millis(5);

/// How the broker is set up. Every process of a namespace must use the same `namespace`,
/// `partitions`, `max_depth`, `quorum`, `delivery_limit` and `expire_unused_after`: they shape
/// the queues, and RabbitMQ refuses to redeclare a queue with other arguments.
#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// Prefix of every exchange and queue name (1 to 48 of `[A-Za-z0-9._-]`).
    pub namespace: String,
    /// Queues per group for keyed messages: keys spread over them, each consumed by one process
    /// at a time (1 to 64).
    pub partitions: u16,
    /// Ready messages a group queue holds before publishes to it fail with `Full`.
    pub max_depth: u64,
    /// Largest body accepted (bytes); larger ones belong in the file store.
    pub max_body_bytes: usize,
    /// Quorum queues (replicated, deliveries counted) instead of classic durable queues (exact
    /// `max_depth`). See the crate documentation for the differences.
    pub quorum: bool,
    /// Unacknowledged deliveries RabbitMQ sends this process per queue ahead of `fetch`.
    pub prefetch: u16,
    /// Quorum queues only: a message delivered more times than this is dead-lettered to
    /// `<namespace>/~dead` instead of delivered again. `None`: no limit.
    pub delivery_limit: Option<u32>,
    /// Deletes a queue (with its messages) after it has had no consumer and no declaration for
    /// this long, and its exchanges with it. For throwaway namespaces such as tests; `None` in
    /// production. Classic queues only: RabbitMQ 3.10 stops accepting connections for seconds
    /// while it expires quorum queues.
    pub expire_unused_after: Option<Duration>,
    /// Longest wait for one answer from the server before the call fails as `Unavailable`.
    pub timeout: Duration,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        Self {
            namespace: "keel".to_owned(),
            partitions: 4,
            max_depth: 1_000_000,
            max_body_bytes: 256 * 1024,
            quorum: false,
            prefetch: 128,
            delivery_limit: None,
            expire_unused_after: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The [`Broker`] on RabbitMQ. See the crate documentation for the model.
pub struct RabbitBroker {
    url: String,
    shape: Shape,
    max_body_bytes: usize,
    prefetch: u16,
    timeout: Duration,
    /// The current connections; replaced when they fail.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Deliveries held from the current session's consumers.
    ledger: Mutex<Ledger<Slot, Acker>>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("namespace", &self.shape.namespace)
            .finish_non_exhaustive()
    }
}

impl RabbitBroker {
    /// Connects to the server at `url` (`amqp://user:password@host:port/vhost`) and declares the
    /// namespace's topic exchange and dead-letter queue.
    pub async fn connect(url: &str, options: RabbitOptions) -> Result<Self, BrokerError> {
        check_name("namespace", &options.namespace, false)?;
        let invalid = |what, why: &str| {
            Err(BrokerError::Invalid {
                what,
                why: why.to_owned(),
            })
        };
        if options.namespace.len() > MAX_NAMESPACE {
            return invalid("namespace", "at most 48 characters");
        }
        if !(1..=MAX_PARTITIONS).contains(&options.partitions) {
            return invalid("partitions", "1 to 64");
        }
        if options.max_depth == 0 || options.prefetch == 0 {
            return invalid("limits", "max_depth and prefetch must be at least 1");
        }
        if options.quorum && options.expire_unused_after.is_some() {
            // Measured on RabbitMQ 3.10: while it expires quorum queues, the server stops
            // accepting connections for seconds at a time.
            return invalid(
                "expire_unused_after",
                "applies to classic queues only; delete quorum queues explicitly",
            );
        }
        let broker = Self {
            url: url.to_owned(),
            shape: Shape {
                namespace: options.namespace,
                partitions: options.partitions,
                max_depth: options.max_depth,
                quorum: options.quorum,
                delivery_limit: options.delivery_limit,
                expire_unused_after: options.expire_unused_after,
            },
            max_body_bytes: options.max_body_bytes,
            prefetch: options.prefetch,
            timeout: options.timeout,
            session: tokio::sync::Mutex::new(None),
            ledger: Mutex::new(Ledger::default()),
        };
        broker.session().await?;
        Ok(broker)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger<Slot, Acker>> {
        // The ledger's invariants hold between statements, so a panic elsewhere leaves it sound.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live session, opening a new one if there is none or it failed.
    async fn session(&self) -> Result<Arc<Session>, BrokerError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref()
            && session.alive()
        {
            return Ok(session.clone());
        }
        if let Some(old) = current.take() {
            tracing::warn!(namespace = %self.shape.namespace, "rabbitmq connection lost; reconnecting");
            // RabbitMQ returned the old connection's deliveries to their queues.
            self.ledger().forget_all();
            // Closed in the background: a half-dead connection must not hold up the new one.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), old.close()).await;
            });
        }
        let session = Arc::new(Session::open(&self.url, &self.shape, self.timeout).await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// Bounds a multi-step exchange with the server, poisoning the session if it hangs.
    async fn bounded<T>(
        &self,
        session: &Session,
        steps: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.timeout * 4, steps).await {
            Ok(result) => result,
            Err(_) => {
                session.poison();
                Err(too_slow("declarations", self.timeout * 4))
            }
        }
    }

    /// Declares `group`'s exchange and queues once per session.
    async fn declare(&self, session: &Session, group: &str) -> Result<(), BrokerError> {
        if session.is_declared(group) {
            return Ok(());
        }
        let channel = session.scratch_channel(self.timeout).await?;
        self.bounded(session, self.shape.declare_group(&channel, group))
            .await?;
        session.mark_declared(group);
        Ok(())
    }

    /// Publishes with `mandatory` and waits for the confirm: `Ok(false)` if returned unroutable.
    async fn send(
        &self,
        session: &Session,
        exchange: ShortString,
        topic: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<bool, BrokerError> {
        let confirm = async {
            session
                .publisher()
                .basic_publish(
                    exchange,
                    topic.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        // A timeout here does not poison the session: RabbitMQ may be holding publishers back
        // (a memory or disk alarm) while consumers, on their own connection, go on draining.
        match within(self.timeout, "a publish confirm", confirm).await? {
            Confirmation::Ack(None) => Ok(true),
            Confirmation::Ack(Some(_returned)) => Ok(false),
            // RabbitMQ nacks a publish when a queue refused it: here, a full queue.
            Confirmation::Nack(_) => Err(BrokerError::Full),
            Confirmation::NotRequested => Err(BrokerError::Internal(
                "publisher confirms are not enabled".into(),
            )),
        }
    }

    /// The group's live consumer channel, locked for this fetch; opened if missing or dead.
    async fn link(
        &self,
        session: &Session,
        group: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<Link>, BrokerError> {
        for _ in 0..3 {
            // The map is locked only to find or open the link, not while a fetch holds one:
            // a fetch waiting on one group must not hold up the others.
            let link = {
                let mut links = session.links.lock().await;
                match links.get(group) {
                    Some(link) => link.clone(),
                    None => {
                        self.declare(session, group).await?;
                        let opened =
                            Link::open(session, &self.shape, group, self.prefetch, self.timeout);
                        let link = Arc::new(tokio::sync::Mutex::new(
                            self.bounded(session, opened).await?,
                        ));
                        links.insert(group.to_owned(), link.clone());
                        link
                    }
                }
            };
            let guard = link.clone().lock_owned().await;
            if guard.alive() {
                return Ok(guard);
            }
            // Its channel is gone and with it the deliveries it held.
            self.ledger().forget_link(guard.id);
            let mut links = session.links.lock().await;
            if links.get(group).is_some_and(|l| Arc::ptr_eq(l, &link)) {
                links.remove(group);
            }
        }
        Err(unavailable("rabbitmq keeps closing the consumer channel"))
    }

    /// Moves every delivery that has arrived on `link` into the ledger, without waiting.
    fn drain(&self, link: &mut Link, group: &str) -> Result<(), BrokerError> {
        for index in 0..link.consumers.len() {
            while let Some(item) = link.consumers[index].1.next().now_or_never() {
                let slot = link.consumers[index].0;
                self.accept(link, group, slot, item)?;
            }
        }
        Ok(())
    }

    fn accept(
        &self,
        link: &mut Link,
        group: &str,
        slot: Slot,
        item: Option<lapin::Result<lapin::message::Delivery>>,
    ) -> Result<(), BrokerError> {
        let delivery = match item {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                link.dead = true;
                return Err(classify(e));
            }
            None => {
                link.dead = true;
                return Err(unavailable("rabbitmq cancelled a consumer"));
            }
        };
        link.activity.insert(slot, Activity::Active);
        let lapin::message::Delivery {
            routing_key,
            redelivered,
            properties,
            data,
            acker,
            ..
        } = delivery;
        match codec::decode(routing_key.as_str(), &properties, data, redelivered) {
            Ok(message) => {
                self.ledger()
                    .insert(group, link.id, slot, message, acker, Instant::now());
            }
            Err(why) => {
                // Not a keel message: handing it out would need an id it has not got. It goes
                // to the namespace's dead-letter queue rather than vanish.
                tracing::error!(group, why, "not a keel message; dead-lettered");
                tokio::spawn(async move {
                    let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                });
            }
        }
        Ok(())
    }

    async fn fetch_on(
        &self,
        link: &mut Link,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        // Leases and retry delays are judged at the call's start: a message whose delay ends
        // while this fetch talks to the server waits for the next fetch, as it would have had
        // the server answered at once.
        let now = Instant::now();
        let deadline = now + FETCH_WAIT;
        loop {
            self.drain(link, group)?;
            let out = self.ledger().take(group, max, lease, now);
            if !out.is_empty() {
                return Ok(out);
            }
            // Nothing held is ready. While this process holds deliveries of the group, one will
            // be ready soon (an ack frees a key's next message, more arrive): wait a moment for
            // an arrival instead of asking the server, whose probe costs a round trip per queue.
            if self.ledger().holds(group) {
                let arrival = futures_util::future::select_all(
                    link.consumers
                        .iter_mut()
                        .map(|(_, consumer)| consumer.next()),
                );
                if let Ok((item, index, _)) = tokio::time::timeout(BUSY_WAIT, arrival).await {
                    let slot = link.consumers[index].0;
                    self.accept(link, group, slot, item)?;
                    self.drain(link, group)?;
                }
                return Ok(self.ledger().take(group, max, lease, Instant::now()));
            }
            // Nothing held at all: see what the server has, then take what it had sent.
            let ready = match link.probe(&self.shape, group, self.timeout).await {
                Ok(ready) => ready,
                Err(e) => {
                    link.dead = true;
                    return Err(e);
                }
            };
            self.drain(link, group)?;
            let out = self.ledger().take(group, max, lease, now);
            if !out.is_empty() {
                return Ok(out);
            }
            let held = self.ledger().held_from(group, link.id);
            let coming: Vec<Slot> = ready
                .iter()
                .filter(|&(slot, &count)| {
                    count > 0
                        && held.get(slot).copied().unwrap_or(0) < usize::from(link.prefetch)
                        && link.activity.get(slot) != Some(&Activity::Passive)
                })
                .map(|(slot, _)| *slot)
                .collect();
            if coming.is_empty() {
                return Ok(Vec::new());
            }
            let arrival = futures_util::future::select_all(
                link.consumers
                    .iter_mut()
                    .map(|(_, consumer)| consumer.next()),
            );
            match tokio::time::timeout_at(deadline.into(), arrival).await {
                Ok((item, index, _)) => {
                    let slot = link.consumers[index].0;
                    self.accept(link, group, slot, item)?;
                }
                Err(_) => {
                    // Ready messages that never came: another process is their partition's
                    // single active consumer. Stop waiting for them until one arrives here.
                    for slot in coming {
                        if link.activity.get(&slot) == Some(&Activity::Unknown) {
                            link.activity.insert(slot, Activity::Passive);
                        }
                    }
                    return Ok(Vec::new());
                }
            }
        }
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        check_name("group", group, false)?;
        check_name("pattern", pattern, true)?;
        let session = self.session().await?;
        self.declare(&session, group).await?;
        let channel = session.scratch_channel(self.timeout).await?;
        self.bounded(&session, self.shape.bind(&channel, group, pattern))
            .await
    }

    async fn publish(
        &self,
        topic: &str,
        message: keel_domain::Outgoing,
    ) -> Result<bool, BrokerError> {
        check_publish(topic, &message.body, self.max_body_bytes)?;
        let slot = Slot::of(message.key.as_deref(), self.shape.partitions);
        let properties = codec::properties(&message, slot, Utc::now())?;
        let session = self.session().await?;
        self.send(
            &session,
            self.shape.topic_exchange(),
            topic,
            &message.body,
            properties,
        )
        .await
    }

    /// Publishes concurrently on the confirm channel, except that the messages of one key go
    /// one after another, each after the previous one's confirm: a queue at its bound refuses
    /// a message (`Full`), and a later message of that key must not be stored before it.
    async fn publish_many(
        &self,
        batch: &[(String, keel_domain::Outgoing)],
    ) -> Result<Vec<bool>, BrokerError> {
        for (topic, message) in batch {
            check_publish(topic, &message.body, self.max_body_bytes)?;
        }
        let session = self.session().await?;
        let now = Utc::now();
        let chains = key_chains(batch.iter().map(|(_, message)| message.key.as_deref()));
        let session = &session;
        let sent = futures_util::future::join_all(chains.into_iter().map(|chain| async move {
            let mut out = Vec::with_capacity(chain.len());
            for i in chain {
                let (topic, message) = &batch[i];
                let slot = Slot::of(message.key.as_deref(), self.shape.partitions);
                let result = match codec::properties(message, slot, now) {
                    Ok(properties) => {
                        self.send(
                            session,
                            self.shape.topic_exchange(),
                            topic,
                            &message.body,
                            properties,
                        )
                        .await
                    }
                    Err(err) => Err(err),
                };
                let failed = result.is_err();
                out.push((i, result));
                if failed {
                    break;
                }
            }
            out
        }))
        .await;
        let mut routed = vec![false; batch.len()];
        let mut outcomes = Vec::new();
        for (i, result) in sent.into_iter().flatten() {
            outcomes.push(result.map(|r| routed[i] = r));
        }
        worst(outcomes).map(|()| routed)
    }

    async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        futures_util::future::join_all(tags.iter().map(|tag| self.ack(*tag))).await
    }

    async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: keel_domain::Outgoing,
    ) -> Result<(), BrokerError> {
        check_name("group", group, false)?;
        check_publish(topic, &message.body, self.max_body_bytes)?;
        let slot = Slot::of(message.key.as_deref(), self.shape.partitions);
        let properties = codec::properties(&message, slot, Utc::now())?;
        let session = self.session().await?;
        self.declare(&session, group).await?;
        // Straight to the group's exchange: only this group's queues get it.
        let routed = self
            .send(
                &session,
                self.shape.group_exchange(group),
                topic,
                &message.body,
                properties,
            )
            .await?;
        if routed {
            Ok(())
        } else {
            Err(BrokerError::Internal(
                format!("group {group:?} has no queue for the message").into(),
            ))
        }
    }

    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        check_name("group", group, false)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let session = self.session().await?;
        let mut link = self.link(&session, group).await?;
        let result = self.fetch_on(&mut link, group, max, lease).await;
        if !link.alive() {
            self.ledger().forget_link(link.id);
        }
        result
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        let acker = self.ledger().ack(tag).map_err(|_| BrokerError::LeaseLost)?;
        match within(
            self.timeout,
            "basic.ack",
            acker.ack(BasicAckOptions::default()),
        )
        .await?
        {
            true => Ok(()),
            // Its channel closed: RabbitMQ has returned the message to its queue.
            false => Err(BrokerError::LeaseLost),
        }
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        self.ledger()
            .retry(tag, ledger::later(Instant::now(), delay))
            .map_err(|_| BrokerError::LeaseLost)
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        check_name("group", group, false)?;
        let session = self.session().await?;
        let channel = session.scratch_channel(self.timeout).await?;
        let mut ready: u64 = 0;
        for slot in Slot::all(self.shape.partitions) {
            let declared = tokio::time::timeout(
                self.timeout,
                channel.queue_declare(
                    self.shape.queue(group, slot),
                    passive(),
                    FieldTable::default(),
                ),
            )
            .await
            .map_err(|_| too_slow("a passive queue.declare", self.timeout))?;
            match declared {
                Ok(queue) => ready += u64::from(queue.message_count()),
                // The first queue is missing: the group was never declared, nothing is queued.
                Err(e) if slot == Slot::Partition(0) && is_not_found(&e) => break,
                Err(e) => return Err(classify(e)),
            }
        }
        let now = Instant::now();
        let held = self.ledger().held(group, now);
        Ok(QueueDepth {
            ready: ready + held.waiting,
            in_flight: held.in_flight,
            oldest: held
                .oldest
                .map(|at| (Utc::now() - at).to_std().unwrap_or_default()),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dedupes_publish: false,
        }
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}
