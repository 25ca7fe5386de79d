//! The keel rows: a backend behind `Arc<dyn Broker>`, driven by keel's own `Worker` with the
//! hospital on, exactly as an application runs it.
//!
//! "Every guarantee switched on" means here:
//! - **no loss**: `publish_many` returns once the batch is durable (the SQL queue commits with
//!   `synchronous = FULL` on SQLite, a normal commit on PostgreSQL); a delivery is acknowledged
//!   only after its handler returned;
//! - **duplicates**: every message carries a fresh UUIDv7 id, and the handler records that id
//!   with its effect in one critical section (see `load::Effects`), so a redelivery has no
//!   second effect;
//! - **ordering**: messages carry keys (`--keys`, 1,000 by default), so the broker hands out at
//!   most one message per key at a time, and the run fails if any key's messages were handled
//!   out of publish order;
//! - **TTL**: every message has an expiry (an hour away), which the worker checks before
//!   handling;
//! - **size and backpressure**: the queue's body limit and depth bound are on (defaults); a
//!   publisher told `Full` waits and retries the batch;
//! - **hospital**: the worker has its hospital and its retry policy (the defaults); nothing
//!   fails in this run, so neither is written to, but every delivery passes through the code
//!   that would use them;
//! - **tracing**: every message carries a `traceparent` header, which travels to the worker.
//!
//! The handler's effect store is in memory, for keel and the raw clients alike: a durable effect
//! store would measure that store, not the queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use keel_domain::{Broker, BrokerError, Delivery, Hospital, Outgoing};
use keel_messaging::worker::{Handler, HandlerError, RetryPolicy, Worker};
use tokio::sync::watch;

use super::load::{self, Effects, Figures, Pace, Plan};

/// Where the run's messages go: topic `bench.<n % 16>` (so a pattern does the routing), bound to
/// the group with `bench.#`.
pub(super) const GROUP: &str = "bench";
const PATTERN: &str = "bench.#";

type Cleanup = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A keel backend ready for one run: broker and hospital on fresh names, and what removes them.
pub(super) struct Backend {
    pub broker: Arc<dyn Broker>,
    pub hospital: Arc<dyn Hospital>,
    /// Drops the run's queues, database or files; awaited after the run, whatever its outcome.
    pub cleanup: Cleanup,
    pub notes: Vec<String>,
}

impl Backend {
    pub(super) fn new(
        broker: Arc<dyn Broker>,
        hospital: Arc<dyn Hospital>,
        cleanup: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        Self {
            broker,
            hospital,
            cleanup: Box::pin(cleanup),
            notes: Vec::new(),
        }
    }
}

struct BenchHandler {
    effects: Arc<Effects>,
}

#[async_trait]
impl Handler for BenchHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        // The message id is the idempotency key: recorded with the effect, once.
        self.effects.record(delivery.id.0.as_u128(), &delivery.body);
        Ok(())
    }
}

fn outgoing(plan: &Plan, n: u64, origin: Instant) -> (String, Outgoing) {
    // `Outgoing::new` gives the message a fresh UUIDv7 id.
    let mut message = Outgoing::new(load::body(plan, n, origin));
    message.key = plan.key_name(n);
    message.expires_at = Some(chrono::Utc::now() + chrono::TimeDelta::hours(1));
    // A W3C traceparent, as an HTTP request would hand on (the trace id varies per message).
    message.headers.insert(
        "traceparent".into(),
        format!("00-{:032x}-{:016x}-01", u128::from(n) + 1, n + 1),
    );
    (format!("bench.{}", n % 16), message)
}

/// Runs `plan` through `backend`'s broker with keel's `Worker`s and returns the figures.
pub(super) async fn run(plan: Plan, backend: &Backend) -> anyhow::Result<Figures> {
    let broker = backend.broker.clone();
    broker.bind(GROUP, PATTERN).await.context("bind")?;
    let origin = Instant::now();
    let effects = Arc::new(Effects::new(plan, origin, true));
    let (stop, stopped) = watch::channel(false);

    let mut workers = Vec::new();
    for _ in 0..plan.workers {
        let worker = Worker {
            broker: broker.clone(),
            hospital: backend.hospital.clone(),
            group: GROUP.into(),
            handler: Arc::new(BenchHandler {
                effects: effects.clone(),
            }),
            policy: RetryPolicy::default(),
            lease: Duration::from_secs(60),
            batch: plan.fetch_batch,
            idle: Duration::from_millis(1),
        };
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(async move {
            worker
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        }));
    }

    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..plan.publishers {
        let broker = broker.clone();
        publishers.push(tokio::spawn(async move {
            let mut pace = Pace::new(&plan);
            let mut full_waits = 0u64;
            for numbers in plan.batches(p) {
                pace.wait(numbers.len()).await;
                let batch: Vec<(String, Outgoing)> = numbers
                    .iter()
                    .map(|&n| outgoing(&plan, n, origin))
                    .collect();
                loop {
                    match broker.publish_many(&batch).await {
                        Ok(routed) if routed.iter().all(|r| *r) => break,
                        Ok(_) => return Err(anyhow!("a message was not routed to the group")),
                        // Backpressure: the queue is at its bound; retrying the batch is safe.
                        Err(BrokerError::Full) => {
                            full_waits += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => return Err(anyhow!(e).context("publish_many")),
                    }
                }
            }
            Ok::<_, anyhow::Error>(full_waits)
        }));
    }
    let mut full_waits = 0;
    let mut publish_error = None;
    for p in publishers {
        match p.await.context("publisher panicked")? {
            Ok(n) => full_waits += n,
            Err(e) => publish_error = Some(e),
        }
    }
    let publish_elapsed = started.elapsed();
    let outcome = match publish_error {
        Some(e) => Err(e),
        None => load::wait_done(&effects, &plan).await,
    };
    // Workers finish the round in progress (its acknowledgements) before they stop.
    stop.send_replace(true);
    for w in workers {
        w.await.context("worker panicked")?;
    }
    let elapsed = started.elapsed();
    outcome?;

    let tally = effects.tally();
    load::verify(&plan, &tally, true)?;
    let depth = broker.depth(GROUP).await.context("depth")?;
    anyhow::ensure!(
        depth.ready + depth.in_flight == 0,
        "the queue is not empty after the run: {depth:?}"
    );
    let mut notes = backend.notes.clone();
    if tally.duplicates > 0 {
        notes.push(format!(
            "{} duplicate deliveries absorbed",
            tally.duplicates
        ));
    }
    if full_waits > 0 {
        notes.push(format!(
            "publishers waited {full_waits} times on a full queue"
        ));
    }
    Ok(Figures {
        messages: plan.messages,
        elapsed,
        publish_elapsed,
        tally,
        notes,
    })
}
