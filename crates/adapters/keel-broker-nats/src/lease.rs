//! Handing out and settling deliveries: `fetch` from the ledger of held deliveries, and
//! `ack`, `ack_many`, `retry` of the deliveries it handed out (the leases kept in the process).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self};
use keel_domain::messaging::ledger::{self};
use keel_domain::messaging::queue::check_name;
use keel_domain::{BrokerError, Delivery, DeliveryTag};

use crate::error::classify;
use crate::names::Slot;
use crate::{Inner, error, lock};

/// How long a `fetch` that has found something lingers for more, to hand out a fuller batch.
const LINGER: Duration = Duration::from_millis(1);

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

impl Inner {
    pub(crate) async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        check_name("group", group, false)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        // What is held here could be handed out, but its acks could not be sent: say so.
        if self.js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(BrokerError::Unavailable("not connected to NATS".into()));
        }
        let Some(opened) = self.group(group, false).await? else {
            return Ok(Vec::new());
        };
        if !opened.consuming.swap(true, Ordering::AcqRel) {
            // The first fetch: feed the unkeyed messages, claim what partitions are free.
            self.start_feed(&opened, Slot::Unkeyed, Instant::now());
            self.tend(&opened).await;
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
            let arrived = self.arrived.notified();
            out.extend(lock(&self.ledger).take(group, max - out.len(), lease, Instant::now()));
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
            let until = if lock(&self.ledger).holds(group) {
                start + BUSY_WAIT
            } else if self.warming(&opened) {
                start + FETCH_WAIT
            } else if self.on_the_way(&opened) {
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
                let gone = lock(&self.groups).remove(group);
                if let Some(gone) = gone {
                    self.retire(&gone);
                }
                return Ok(Vec::new());
            }
            Err(err) => return Err(classify(err)),
        };
        if stored == 0 {
            return Ok(Vec::new());
        }
        let wait = if self.warming(&opened) {
            FETCH_WAIT
        } else {
            SETTLED_WAIT
        };
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            let out = lock(&self.ledger).take(group, max, lease, Instant::now());
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            let _ = tokio::time::timeout_at(deadline.into(), arrived).await;
        }
    }

    pub(crate) async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        let message = lock(&self.ledger)
            .ack(tag)
            .map_err(|_| BrokerError::LeaseLost)?;
        // The key's next message, held here, may be ready now.
        self.arrived.notify_waiters();
        // Confirmed by the server. If the confirmation does not come, the message may be
        // delivered again after ack_wait; its handler's effect is recorded with its id.
        message.double_ack().await.map_err(BrokerError::Unavailable)
    }

    /// Takes the batch out of the ledger at once (one wake-up for waiting fetches), then, per
    /// consumer, sends plain acks and a confirmed ack last: a consumer applies the acks it gets
    /// from one connection in order, so the last one's confirmation confirms them all, and the
    /// server sends one reply per consumer instead of one per message.
    pub(crate) async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        let taken: Vec<Result<jetstream::Message, BrokerError>> = {
            let mut ledger = lock(&self.ledger);
            tags.iter()
                .map(|tag| ledger.ack(*tag).map_err(|_| BrokerError::LeaseLost))
                .collect()
        };
        self.arrived.notify_waiters();
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

    pub(crate) async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        // Kept here, unacknowledged (kept alive by the sweeper), and handed out again after the
        // delay: the key's later messages, held here too, wait behind it.
        lock(&self.ledger)
            .retry(tag, ledger::later(Instant::now(), delay))
            .map_err(|_| BrokerError::LeaseLost)
    }
}
