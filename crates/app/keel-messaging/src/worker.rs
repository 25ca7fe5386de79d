//! The worker runtime: many workers (tasks, and processes) compete for a group's messages.
//!
//! A delivery is handled at most once at a time (its lease), its key's successors wait for it
//! (the broker's per-key order), and its outcome is always settled one of four ways:
//! - handled: acknowledged, so it is removed;
//! - transient failure with attempts left: retried after an exponential, jittered backoff;
//! - permanent failure, attempts exhausted, or expired before handling: admitted to the hospital
//!   with every attempt's error, then acknowledged;
//! - the hospital cannot admit it (full or down): not acknowledged, so it stays in its queue and is
//!   tried again later, and an alert is logged. Nothing is dropped silently.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use keel_domain::{AdmissionReason, Broker, BrokerError, Delivery, DeliveryTag, Hospital};

/// How a handler failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Retrying may succeed (a timeout, an unavailable dependency).
    Transient(String),
    /// Retrying cannot succeed (a malformed payload, a refused business rule): no retries.
    Permanent(String),
}

/// The code that does a message's work. Handlers must absorb duplicates (a message can be
/// delivered again after a crash), normally by recording the message id with their effect.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;
}

/// Retries: exponential backoff from `base` doubling up to `max`, each delay shortened by a random
/// fraction up to `jitter` so that failures of many messages do not retry in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; the last failure admits the message to the hospital.
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `failed_attempt + 1`.
    pub fn delay(&self, failed_attempt: u32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        full.mul_f64(1.0 - self.jitter * fastrand::f64())
    }
}

/// What one settled delivery came to (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    Retried,
    Admitted(AdmissionReason),
    /// The hospital refused; the message stays queued.
    Kept,
    /// The lease was lost meanwhile; another worker has the message.
    LeaseLost,
}

/// A worker of one group.
pub struct Worker {
    pub broker: Arc<dyn Broker>,
    pub hospital: Arc<dyn Hospital>,
    pub group: String,
    pub handler: Arc<dyn Handler>,
    pub policy: RetryPolicy,
    /// How long a delivery is held before another worker may take it; longer than any handling.
    pub lease: Duration,
    /// Messages fetched and handled concurrently per round.
    pub batch: usize,
    /// Wait after a round that found nothing.
    pub idle: Duration,
}

/// An idle worker's pause grows to `idle` times 2^this (8x: 160 ms for the usual 20 ms).
const MAX_IDLE_DOUBLINGS: u32 = 3;

impl Worker {
    /// Runs rounds until `shutdown` resolves; the round in progress finishes first, so no
    /// delivery is left half-settled (an unsettled one would only wait for its lease to expire).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Empty rounds in a row: the pause doubles with each, up to `MAX_IDLE_FACTOR` times
        // `idle`, so an idle worker does not poll its broker fifty times a second (on the
        // embedded queue that alone kept a tenth of a core busy); the first message after a
        // quiet spell waits at most that long, and a busy worker never pauses.
        let mut empty_rounds: u32 = 0;
        loop {
            // Shutdown is looked at between rounds only: a round is never cut short.
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = std::future::ready(()) => {}
            }
            let handled = self.run_once().await;
            let pause = match handled {
                Ok(outcomes) if !outcomes.is_empty() => {
                    empty_rounds = 0;
                    continue;
                }
                Ok(_) => {
                    let factor = 1u32 << empty_rounds.min(MAX_IDLE_DOUBLINGS);
                    empty_rounds = empty_rounds.saturating_add(1);
                    self.idle * factor
                }
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "fetch failed; retrying");
                    self.idle * 4
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// One round: fetch a batch, handle every delivery in it, and settle them; the
    /// acknowledgements of the round go to the broker in one `ack_many`.
    pub async fn run_once(&self) -> Result<Vec<Outcome>, BrokerError> {
        let deliveries = self
            .broker
            .fetch(&self.group, self.batch, self.lease)
            .await?;
        // The broker hands out at most one message per key, so handling a batch concurrently
        // keeps the order of every key.
        let settled =
            futures_util::future::join_all(deliveries.iter().map(|d| self.settle(d))).await;
        let tags: Vec<DeliveryTag> = deliveries
            .iter()
            .zip(&settled)
            .filter(|(_, s)| matches!(s, Settle::Ack(_)))
            .map(|(d, _)| d.tag)
            .collect();
        let mut acked = if tags.is_empty() {
            Vec::new()
        } else {
            self.broker.ack_many(&tags).await
        }
        .into_iter();
        let outcomes: Vec<Outcome> = deliveries
            .iter()
            .zip(settled)
            .map(|(delivery, settle)| match settle {
                Settle::Done(outcome) => outcome,
                Settle::Ack(outcome) => match acked.next() {
                    Some(Ok(())) => outcome,
                    Some(Err(BrokerError::LeaseLost)) => Outcome::LeaseLost,
                    Some(Err(e)) => {
                        tracing::warn!(group = %self.group, message_id = %delivery.id, error = %e, "ack failed; the message will come back");
                        Outcome::Kept
                    }
                    None => Outcome::Kept,
                },
            })
            .collect();
        self.count(&outcomes, &deliveries);
        Ok(outcomes)
    }

    /// Per-group counters of what rounds came to, and the publish-to-handle latency: one
    /// increment per outcome and round, and the histogram's handle looked up at most once per
    /// round (each lookup hashes the name and labels in the recorder's registry).
    fn count(&self, outcomes: &[Outcome], deliveries: &[Delivery]) {
        let now = Utc::now();
        let group = &self.group;
        let (mut acked, mut retried, mut kept, mut lost) = (0, 0, 0, 0);
        let mut admitted: Vec<AdmissionReason> = Vec::new();
        let mut latency = None;
        for (outcome, delivery) in outcomes.iter().zip(deliveries) {
            match outcome {
                Outcome::Acked => {
                    acked += 1;
                    let waited = (now - delivery.published_at).to_std().unwrap_or_default();
                    latency
                        .get_or_insert_with(|| {
                            metrics::histogram!(
                                "keel_queue_publish_to_handle_seconds", "group" => group.clone()
                            )
                        })
                        .record(waited.as_secs_f64());
                }
                Outcome::Retried => retried += 1,
                Outcome::Admitted(reason) => admitted.push(*reason),
                Outcome::Kept => kept += 1,
                Outcome::LeaseLost => lost += 1,
            }
        }
        for (name, n) in [
            ("keel_queue_acked_total", acked),
            ("keel_queue_retried_total", retried),
            ("keel_queue_kept_total", kept),
            ("keel_queue_lease_lost_total", lost),
        ] {
            if n > 0 {
                metrics::counter!(name, "group" => group.clone()).increment(n);
            }
        }
        for reason in admitted {
            metrics::counter!(
                "keel_queue_admitted_total", "group" => group.clone(), "reason" => reason.as_str()
            )
            .increment(1);
        }
    }

    /// Decides a delivery's fate: handled (or admitted) deliveries are left to the round's
    /// acknowledgement; the others are settled here.
    async fn settle(&self, delivery: &Delivery) -> Settle {
        if delivery.is_expired(Utc::now()) {
            return self
                .admit(
                    delivery,
                    AdmissionReason::Expired,
                    "expired before it was handled",
                )
                .await;
        }
        match self.handler.handle(delivery).await {
            Ok(()) => Settle::Ack(Outcome::Acked),
            Err(HandlerError::Permanent(error)) => {
                self.record(delivery, &error).await;
                self.admit(delivery, AdmissionReason::Permanent, &error)
                    .await
            }
            Err(HandlerError::Transient(error)) => {
                self.record(delivery, &error).await;
                if delivery.attempt >= self.policy.max_attempts {
                    return self
                        .admit(delivery, AdmissionReason::Exhausted, &error)
                        .await;
                }
                Settle::Done(
                    match self
                        .broker
                        .retry(delivery.tag, self.policy.delay(delivery.attempt))
                        .await
                    {
                        Ok(()) => Outcome::Retried,
                        Err(BrokerError::LeaseLost) => Outcome::LeaseLost,
                        Err(e) => {
                            // The lease will expire and the message come back: nothing is lost.
                            tracing::warn!(group = %self.group, message_id = %delivery.id, error = %e, "retry not recorded");
                            Outcome::Kept
                        }
                    },
                )
            }
        }
    }

    async fn record(&self, delivery: &Delivery, error: &str) {
        if let Err(e) = self.hospital.record_attempt(delivery, error).await {
            tracing::warn!(group = %self.group, message_id = %delivery.id, error = %e, "attempt not recorded");
        }
    }

    /// Admits the delivery to the hospital; acknowledged with the round once admitted. If the
    /// hospital refuses, the message is kept: it stays queued and comes back after the longest
    /// backoff.
    async fn admit(&self, delivery: &Delivery, reason: AdmissionReason, error: &str) -> Settle {
        match self.hospital.admit(delivery, reason).await {
            Ok(patient) => {
                tracing::warn!(
                    group = %self.group,
                    message_id = %delivery.id,
                    patient,
                    reason = reason.as_str(),
                    error,
                    "message admitted to the hospital"
                );
                Settle::Ack(Outcome::Admitted(reason))
            }
            Err(e) => {
                // Alert, keep the message: a full or failing hospital never makes us drop one.
                tracing::error!(
                    group = %self.group,
                    message_id = %delivery.id,
                    error = %e,
                    "ALERT: the hospital refused a message; it stays in its queue"
                );
                let _ = self.broker.retry(delivery.tag, self.policy.max).await;
                Settle::Done(Outcome::Kept)
            }
        }
    }
}

/// A delivery's fate before the round's acknowledgement.
enum Settle {
    /// To acknowledge; the outcome once acknowledged.
    Ack(Outcome),
    /// Settled already (retried, kept, or its lease lost).
    Done(Outcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_only_shortens() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.2,
        };
        for _ in 0..100 {
            let first = policy.delay(1);
            assert!(
                first <= Duration::from_millis(100) && first >= Duration::from_millis(80),
                "{first:?}"
            );
            let third = policy.delay(3);
            assert!(
                third <= Duration::from_millis(400) && third >= Duration::from_millis(320),
                "{third:?}"
            );
            assert!(policy.delay(20) <= Duration::from_secs(1));
        }
    }
}
