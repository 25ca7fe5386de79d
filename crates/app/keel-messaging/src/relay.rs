//! The outbox relay: the other half of the transactional outbox.
//!
//! A user write and its event commit together in the database; the relay then publishes outbox
//! rows in commit order and deletes them once the broker has confirmed them. A crash after the
//! publish and before the delete publishes the same message id again on restart: brokers that
//! de-duplicate store it once, and every consumer absorbs it by the message id anyway. Only the
//! relay holding the lease publishes, so the outbox's order (per user) reaches the broker intact.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Broker, BrokerError, EventStore};
use uuid::Uuid;

/// How the relay paces itself.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Rows published per round.
    pub batch: u32,
    /// Wait after a round that found nothing.
    pub idle: Duration,
    /// How long a relay's lead lasts without renewal; another relay takes over after it.
    pub lease: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch: 256,
            idle: Duration::from_millis(50),
            lease: Duration::from_secs(10),
        }
    }
}

/// Publishes the outbox to the broker.
pub struct Relay {
    events: Arc<dyn EventStore>,
    broker: Arc<dyn Broker>,
    settings: RelaySettings,
    holder: Uuid,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub published: usize,
    /// Messages no group is bound to: removed, counted and logged (nobody subscribes to them).
    pub unrouted: usize,
    /// Whether this relay holds the lead.
    pub leading: bool,
}

impl Relay {
    pub fn new(
        events: Arc<dyn EventStore>,
        broker: Arc<dyn Broker>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            events,
            broker,
            settings,
            holder: Uuid::new_v4(),
        }
    }

    /// Runs rounds until `shutdown` resolves; the round in progress completes first, so its
    /// published rows are removed rather than published again by the next relay.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let pause = match self.run_once().await {
                Ok(round) if round.published + round.unrouted > 0 => Duration::ZERO,
                Ok(_) => self.settings.idle,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay round failed; retrying");
                    self.settings.idle * 20
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// One round: take the lead, publish a batch in order, remove what was published.
    pub async fn run_once(&self) -> Result<Round, RelayError> {
        let mut round = Round::default();
        if !self
            .events
            .lead_relay(self.holder, self.settings.lease)
            .await?
        {
            return Ok(round);
        }
        round.leading = true;
        let pending = self.events.outbox_pending(self.settings.batch).await?;
        // One batch, in outbox order: the SQL queue stores it in one transaction, other brokers
        // pipeline it. On failure nothing is removed and the whole batch is published again
        // later (the message ids make the copies harmless), so no row overtakes another.
        let mut failure = None;
        if !pending.is_empty() {
            let batch: Vec<(String, keel_domain::Outgoing)> = pending
                .iter()
                .map(|r| (r.topic.clone(), r.message.clone()))
                .collect();
            match self.broker.publish_many(&batch).await {
                Ok(routed) => {
                    for (record, routed) in pending.iter().zip(routed) {
                        let topic = record.topic.clone();
                        if routed {
                            round.published += 1;
                            metrics::counter!("keel_queue_published_total", "topic" => topic)
                                .increment(1);
                        } else {
                            round.unrouted += 1;
                            metrics::counter!("keel_queue_unrouted_total", "topic" => topic)
                                .increment(1);
                            tracing::warn!(topic = %record.topic, message_id = %record.message.id, "no group is bound to this topic; the message went nowhere");
                        }
                    }
                    let done: Vec<i64> = pending.iter().map(|r| r.seq).collect();
                    self.events.outbox_remove(&done).await?;
                }
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            // A full queue is backpressure, not a fault: the rows wait in the outbox.
            Some(BrokerError::Full) => {
                tracing::warn!("a queue is full; the outbox holds the events until it drains");
                Ok(round)
            }
            Some(e) => Err(e.into()),
            None => Ok(round),
        }
    }
}

/// Why a relay round failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] keel_domain::StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}
