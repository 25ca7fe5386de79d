//! Consuming: the sweeper that claims, renews and hands over the ownership of partitions,
//! and the feeds that pull each consumer's messages into the ledger of held deliveries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use keel_domain::BrokerError;
use keel_domain::messaging::ledger::Incoming;

use crate::error::classify_publish;
use crate::names::Slot;
use crate::own::{Own, Step, Verdict};
use crate::{Feed, Group, Held, Inner, OwnerRecord, Partition, codec, lock, names, own};

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

/// A feed's `pending` before its first drain is done.
const WARMING: u64 = u64::MAX;

pub(crate) async fn sweep_until_dropped(inner: Weak<Inner>) {
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
    /// Forgets an opened group (its stream is gone): stops its feeds and forgets what they
    /// brought; the next call opens it afresh.
    pub(crate) fn retire(&self, group: &Group) {
        let links = group.stop_feeds();
        let mut ledger = lock(&self.ledger);
        for link in links {
            ledger.forget_link(link);
        }
    }

    /// Keeps every consumed group's ownerships (claims, renewals, hand-overs), restarts the
    /// feeds after a lost connection, and tells the server that deliveries held here for long
    /// are still being worked on.
    pub(crate) async fn sweep(&self) {
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
    pub(crate) fn restart_feeds(&self) {
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
    pub(crate) fn warming(&self, group: &Group) -> bool {
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
    pub(crate) fn on_the_way(&self, group: &Group) -> bool {
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
    pub(crate) async fn tend(&self, group: &Arc<Group>) {
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

    pub(crate) async fn tend_partition(&self, group: &Arc<Group>, partition: &Partition) {
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
    pub(crate) async fn write_owner(
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
    pub(crate) fn lose(&self, group: &Group, partition: &Partition, why: &str) {
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
    pub(crate) fn start_feed(&self, group: &Group, slot: Slot, start: Instant) {
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
                tracing::warn!(group, %err, "pull stream not opened; trying again after ack_wait");
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
