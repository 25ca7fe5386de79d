//! A real ward for the hospital's tests (keel-hospital's service and notifier, keel-api's
//! console, the binary's `keel hospital` in process): the embedded SQLite queue and hospital in
//! a temporary directory, real workers of two groups that fail messages by their bodies, and the
//! service. Behind the `ward` feature: only those tests need the queue and the hospital.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keel_domain::{Broker, Delivery, MessageId, Outgoing};
use keel_hospital::HospitalService;
use keel_messaging::worker::{Handler, HandlerError, RetryPolicy, Worker};
use keel_sql_sqlite::{QueueLimits, SqliteHospital, SqliteQueue};

pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Largest body the ward's queue takes (small, so a test can exceed it).
pub const MAX_BODY: usize = 4096;

/// The consumers: `billing` (topics `order.#`) fails by body — a body starting with `ok`
/// succeeds, one containing `permanent` fails permanently with the body's text as the error,
/// anything else times out (transiently) until its attempts run out; `ledger` (also `order.#`)
/// and every group once `healed` always succeed. Effects are recorded once per group and message
/// id, as an idempotent consumer does; every call is counted.
#[derive(Default)]
pub struct Consumers {
    pub healed: std::sync::atomic::AtomicBool,
    /// (group, message id) → the body of the effect, recorded once.
    effects: Mutex<HashMap<(String, MessageId), Vec<u8>>>,
    /// (group, message id) → how many times it was handled successfully (duplicates included).
    successes: Mutex<HashMap<(String, MessageId), u32>>,
}

#[async_trait]
impl Handler for Consumers {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        let body = String::from_utf8_lossy(&d.body).into_owned();
        let healed = self.healed.load(std::sync::atomic::Ordering::SeqCst);
        if d.group == "billing" && !healed && !body.starts_with("ok") {
            if body.contains("permanent") {
                return Err(HandlerError::Permanent(body));
            }
            return Err(HandlerError::Transient(format!(
                "Timeout: billing did not answer within 30s (attempt {})",
                d.attempt
            )));
        }
        let key = (d.group.clone(), d.id);
        *self
            .successes
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default() += 1;
        self.effects
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| d.body.clone());
        Ok(())
    }
}

impl Consumers {
    /// The effect's body, if `group` handled message `id`.
    pub fn effect(&self, group: &str, id: MessageId) -> Option<Vec<u8>> {
        self.effects
            .lock()
            .unwrap()
            .get(&(group.to_owned(), id))
            .cloned()
    }

    /// How many times `group` handled message `id` successfully.
    pub fn successes(&self, group: &str, id: MessageId) -> u32 {
        self.successes
            .lock()
            .unwrap()
            .get(&(group.to_owned(), id))
            .copied()
            .unwrap_or(0)
    }

    pub fn effects_of(&self, group: &str) -> usize {
        self.effects
            .lock()
            .unwrap()
            .keys()
            .filter(|(g, _)| g == group)
            .count()
    }
}

pub struct Ward {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub queue: Arc<SqliteQueue>,
    pub hospital: Arc<SqliteHospital>,
    pub service: HospitalService,
    pub consumers: Arc<Consumers>,
    pub workers: Vec<Worker>,
}

pub async fn ward() -> Ward {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queue = Arc::new(
        SqliteQueue::open(
            &url,
            QueueLimits {
                max_depth: 10_000,
                max_body_bytes: MAX_BODY,
            },
        )
        .await
        .unwrap(),
    );
    queue.bind("billing", "order.#").await.unwrap();
    queue.bind("ledger", "order.#").await.unwrap();
    let hospital = Arc::new(queue.hospital(10_000));
    let consumers = Arc::new(Consumers::default());
    let workers = ["billing", "ledger"]
        .into_iter()
        .map(|group| Worker {
            broker: queue.clone(),
            hospital: hospital.clone(),
            group: group.into(),
            handler: consumers.clone(),
            policy: RetryPolicy {
                max_attempts: 2,
                base: Duration::from_millis(1),
                max: Duration::from_millis(2),
                jitter: 0.0,
            },
            lease: Duration::from_secs(30),
            batch: 16,
            idle: Duration::from_millis(5),
        })
        .collect();
    let service = HospitalService::new(hospital.clone(), queue.clone());
    Ward {
        dir,
        url,
        queue,
        hospital,
        service,
        consumers,
        workers,
    }
}

impl Ward {
    /// Publishes a message with a trace context and a tenant header.
    pub async fn publish(&self, topic: &str, body: &str, key: Option<&str>) -> Outgoing {
        let message = crate::hospital_suite::traced_message(body, key, TRACEPARENT);
        assert!(self.queue.publish(topic, message.clone()).await.unwrap());
        message
    }

    /// Runs the workers until every queue is empty (bounded in time).
    pub async fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut busy = false;
            for worker in &self.workers {
                let outcomes = worker.run_once().await.unwrap();
                busy |= !outcomes.is_empty();
                let depth = self.queue.depth(&worker.group).await.unwrap();
                busy |= depth.ready + depth.in_flight > 0;
            }
            if !busy {
                return;
            }
            assert!(Instant::now() < deadline, "the queues did not drain");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The waiting patient of a message.
    pub async fn patient_of(&self, id: MessageId) -> keel_domain::Patient {
        use keel_domain::Hospital;
        self.hospital
            .list(1000)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.message_id == id && p.state == keel_domain::PatientState::Waiting)
            .expect("the message is a waiting patient")
    }

    /// How many messages wait in `group`'s queue.
    pub async fn depth(&self, group: &str) -> u64 {
        let d = self.queue.depth(group).await.unwrap();
        d.ready + d.in_flight
    }
}
