//! The worker runtime on the embedded queue and hospital: retries, admission, expiry, and a
//! hospital that refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keel_domain::{AdmissionReason, Broker, Delivery, Hospital, Outgoing};
use keel_messaging::worker::{Handler, HandlerError, Outcome, RetryPolicy, Worker};
use keel_sql_sqlite::{QueueLimits, SqliteHospital, SqliteQueue};

/// Behaves by the message body: `ok`, `flaky-N` (fails N times, then succeeds), `always`
/// (always fails transiently), `poison` (fails permanently). Counts calls per body.
#[derive(Default)]
struct Scripted {
    calls: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let body = String::from_utf8(delivery.body.clone()).unwrap();
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(body.clone()).or_default();
            *n += 1;
            *n
        };
        match body.as_str() {
            "poison" => Err(HandlerError::Permanent("cannot parse the payload".into())),
            "always" => Err(HandlerError::Transient(format!(
                "attempt {calls} timed out"
            ))),
            flaky if flaky.starts_with("flaky-") => {
                let fails: u32 = flaky["flaky-".len()..].parse().unwrap();
                if calls <= fails {
                    Err(HandlerError::Transient(format!("flaky failure {calls}")))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

impl Scripted {
    fn calls(&self, body: &str) -> u32 {
        self.calls.lock().unwrap().get(body).copied().unwrap_or(0)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    queue: Arc<SqliteQueue>,
    hospital: Arc<SqliteHospital>,
    handler: Arc<Scripted>,
    worker: Worker,
}

async fn fixture(max_patients: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queue = Arc::new(
        SqliteQueue::open(&url, QueueLimits::default())
            .await
            .unwrap(),
    );
    queue.bind("workers", "job.#").await.unwrap();
    let hospital = Arc::new(queue.hospital(max_patients));
    let handler = Arc::new(Scripted::default());
    let worker = Worker {
        broker: queue.clone(),
        hospital: hospital.clone(),
        group: "workers".into(),
        handler: handler.clone(),
        policy: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
            jitter: 0.2,
        },
        lease: Duration::from_secs(30),
        batch: 8,
        idle: Duration::from_millis(10),
    };
    Fixture {
        _dir: dir,
        queue,
        hospital,
        handler,
        worker,
    }
}

impl Fixture {
    async fn publish(&self, body: &str) -> Outgoing {
        let message = Outgoing::new(body.as_bytes().to_vec());
        self.queue
            .publish("job.test", message.clone())
            .await
            .unwrap();
        message
    }

    /// Runs rounds until the group's queue is empty (bounded), returning every outcome.
    async fn drain(&self) -> Vec<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut outcomes = Vec::new();
        loop {
            outcomes.extend(self.worker.run_once().await.unwrap());
            let depth = self.queue.depth("workers").await.unwrap();
            if depth.ready + depth.in_flight == 0 {
                return outcomes;
            }
            assert!(
                Instant::now() < deadline,
                "the queue did not drain: {depth:?}, outcomes {outcomes:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_handled_message_is_acknowledged_and_gone() {
    let fx = fixture(100).await;
    fx.publish("ok").await;
    assert_eq!(fx.drain().await, vec![Outcome::Acked]);
    assert_eq!(fx.handler.calls("ok"), 1);
    assert!(fx.hospital.list(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_backoff_until_it_succeeds() {
    let fx = fixture(100).await;
    fx.publish("flaky-2").await;
    let started = Instant::now();
    let outcomes = fx.drain().await;
    assert_eq!(
        outcomes,
        vec![Outcome::Retried, Outcome::Retried, Outcome::Acked]
    );
    assert_eq!(fx.handler.calls("flaky-2"), 3);
    // Backoff 20 ms then 40 ms, each at most 20 % shorter.
    assert!(
        started.elapsed() >= Duration::from_millis(48),
        "{:?}",
        started.elapsed()
    );
    assert!(fx.hospital.list(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn exhausted_attempts_admit_the_message_with_every_error() {
    let fx = fixture(100).await;
    let mut message = Outgoing::new(b"always".to_vec());
    message.headers.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    fx.queue.publish("job.test", message.clone()).await.unwrap();
    let outcomes = fx.drain().await;
    assert_eq!(
        outcomes.last(),
        Some(&Outcome::Admitted(AdmissionReason::Exhausted))
    );
    assert_eq!(fx.handler.calls("always"), 3, "max_attempts in all");
    let patients = fx.hospital.list(10).await.unwrap();
    assert_eq!(patients.len(), 1);
    let patient = fx.hospital.get(patients[0].id).await.unwrap().unwrap();
    assert_eq!(patient.message_id, message.id);
    assert_eq!(patient.body, b"always");
    assert_eq!(patient.headers, message.headers);
    assert_eq!(
        patient.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let errors: Vec<_> = patient
        .attempts
        .iter()
        .map(|a| (a.attempt, a.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "attempt 1 timed out"),
            (2, "attempt 2 timed out"),
            (3, "attempt 3 timed out")
        ]
    );
}

#[tokio::test]
async fn a_permanent_failure_skips_retries() {
    let fx = fixture(100).await;
    fx.publish("poison").await;
    assert_eq!(
        fx.drain().await,
        vec![Outcome::Admitted(AdmissionReason::Permanent)]
    );
    assert_eq!(fx.handler.calls("poison"), 1);
    let patient = &fx.hospital.list(10).await.unwrap()[0];
    assert_eq!(patient.reason, AdmissionReason::Permanent);
    assert_eq!(patient.attempts[0].error, "cannot parse the payload");
}

#[tokio::test]
async fn an_expired_message_is_not_handled_and_goes_to_the_hospital() {
    let fx = fixture(100).await;
    let mut message = Outgoing::new(b"ok".to_vec());
    message.expires_at = Some(chrono::Utc::now() - chrono::TimeDelta::seconds(1));
    fx.queue.publish("job.test", message).await.unwrap();
    assert_eq!(
        fx.drain().await,
        vec![Outcome::Admitted(AdmissionReason::Expired)]
    );
    assert_eq!(
        fx.handler.calls("ok"),
        0,
        "an expired message must not be processed"
    );
    assert_eq!(
        fx.hospital.list(10).await.unwrap()[0].reason,
        AdmissionReason::Expired
    );
}

#[tokio::test]
async fn a_full_hospital_keeps_the_message_queued_instead_of_dropping_it() {
    let fx = fixture(1).await;
    fx.publish("poison").await;
    fx.drain().await; // the one bed is taken
    let second = fx.publish("poison").await;
    // "poison" was seen once already; the second message fails permanently as well.
    let outcomes = fx.worker.run_once().await.unwrap();
    assert_eq!(outcomes, vec![Outcome::Kept]);
    let depth = fx.queue.depth("workers").await.unwrap();
    assert_eq!(
        depth.ready + depth.in_flight,
        1,
        "the refused message must stay in its queue"
    );
    let patients = fx.hospital.list(10).await.unwrap();
    assert_eq!(patients.len(), 1, "no patient was evicted to make room");
    assert_ne!(patients[0].message_id, second.id);
}
