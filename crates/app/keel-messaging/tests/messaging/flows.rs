//! The asynchronous flows end to end on the embedded defaults (SQLite database, SQLite queue):
//! outbox → relay → broker → every subscriber group → effects recorded once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_domain::{
    Broker, EventStore, Hospital, Job, JobState, NewUser, User, UserEmail, UserName, UserRepo,
};
use keel_messaging::topology::{self, Subscription};
use keel_messaging::worker::{RetryPolicy, Worker};
use keel_messaging::{Relay, RelaySettings};
use keel_sql_sqlite::{PoolSettings, SqliteStore};
use keel_sql_sqlite::{QueueLimits, SqliteHospital, SqliteQueue};

struct World {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    broker: Arc<SqliteQueue>,
    hospital: Arc<SqliteHospital>,
    subscriptions: Vec<Subscription>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keel.db").display());
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = Arc::new(SqliteStore::connect(&db, &pool).await.unwrap());
    store.migrate().await.unwrap();
    let queue = format!("sqlite://{}", dir.path().join("queue.db").display());
    let broker = Arc::new(
        SqliteQueue::open(&queue, QueueLimits::default())
            .await
            .unwrap(),
    );
    let hospital = Arc::new(broker.hospital(1000));
    let subscriptions = topology::subscriptions(store.clone(), store.clone());
    topology::declare(&*broker, &subscriptions).await.unwrap();
    World {
        _dir: dir,
        store,
        broker,
        hospital,
        subscriptions,
    }
}

impl World {
    fn relay(&self) -> Relay {
        Relay::new(
            self.store.clone(),
            self.broker.clone(),
            RelaySettings::default(),
        )
    }

    /// Runs every group's worker until no group has anything left.
    async fn drain(&self) {
        loop {
            let mut handled = 0;
            for sub in &self.subscriptions {
                let worker = Worker {
                    broker: self.broker.clone(),
                    hospital: self.hospital.clone() as Arc<dyn Hospital>,
                    group: sub.group.to_owned(),
                    handler: sub.handler.clone(),
                    policy: RetryPolicy::default(),
                    lease: Duration::from_secs(30),
                    batch: 16,
                    idle: Duration::from_millis(10),
                };
                handled += worker.run_once().await.unwrap().len();
            }
            if handled == 0 {
                return;
            }
        }
    }
}

fn user(email: &str) -> User {
    User::create(
        NewUser {
            name: UserName::parse("Ada").unwrap(),
            email: UserEmail::parse(email).unwrap(),
        },
        Utc::now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_fan_out_to_every_group_and_take_effect_once() {
    let w = world().await;
    let ada = user("ada@example.com");
    w.store.insert(&ada).await.unwrap();
    let mut renamed = ada.clone();
    renamed.version = 2;
    renamed.name = UserName::parse("Ada King").unwrap();
    w.store.update(&renamed).await.unwrap();

    // The relay publishes, then "crashes" before removing: the next relay publishes again.
    let pending = w.store.outbox_pending(100).await.unwrap();
    for record in &pending {
        w.broker
            .publish(&record.topic, record.message.clone())
            .await
            .unwrap();
    }
    let round = w.relay().run_once().await.unwrap();
    assert_eq!(round.published, 2);
    assert_eq!(w.store.outbox_backlog().await.unwrap(), 0);
    // And a broker that delivers a message twice: the consumers absorb it.
    w.broker
        .redeliver("audit", &pending[0].topic, pending[0].message.clone())
        .await
        .ok();

    w.drain().await;
    let audit = w.store.audit_of(ada.id).await.unwrap();
    let topics: Vec<&str> = audit.iter().map(|a| a.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["user.created", "user.updated"],
        "one entry per event, in order"
    );
    let sent = w.store.notifications_of(ada.id).await.unwrap();
    assert_eq!(sent.len(), 1, "one welcome, whatever the redeliveries");
    assert_eq!(sent[0].recipient, "ada@example.com");
    assert!(w.hospital.list(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_job_runs_once_and_reports_its_result() {
    let w = world().await;
    let ada = user("export@example.com");
    w.store.insert(&ada).await.unwrap();
    let job = Job::new("user.export", &ada.id.to_string());
    w.store.submit_job(&job, &job.message(None)).await.unwrap();
    let missing = Job::new("user.export", &keel_domain::UserId::generate().to_string());
    w.store
        .submit_job(&missing, &missing.message(None))
        .await
        .unwrap();
    w.relay().run_once().await.unwrap();
    w.drain().await;

    let done = w.store.job(job.id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let result: serde_json::Value = serde_json::from_str(done.result.as_deref().unwrap()).unwrap();
    assert_eq!(result["user"]["email"], "export@example.com");
    assert_eq!(result["audit"][0]["topic"], "user.created");
    let failed = w.store.job(missing.id).await.unwrap().unwrap();
    assert_eq!(
        (failed.state, failed.error.as_deref()),
        (JobState::Failed, Some("User not found"))
    );

    // Replaying the job's message does not run it again.
    let before = w.store.job(job.id).await.unwrap().unwrap().updated_at;
    w.broker
        .redeliver("jobs", &job.topic(), job.message(None))
        .await
        .unwrap();
    w.drain().await;
    assert_eq!(
        w.store.job(job.id).await.unwrap().unwrap().updated_at,
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_goes_to_the_hospital_without_retries() {
    let w = world().await;
    w.broker
        .publish(
            "user.created",
            keel_domain::Outgoing::new(b"not json".to_vec()),
        )
        .await
        .unwrap();
    w.drain().await;
    let patients = w.hospital.list(10).await.unwrap();
    assert_eq!(
        patients.len(),
        2,
        "audit and notifier each admit their copy"
    );
    assert!(
        patients
            .iter()
            .all(|p| p.attempts.len() == 1 && p.attempts[0].error.contains("malformed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_relay_publishes_at_a_time() {
    let w = world().await;
    w.store.insert(&user("one@example.com")).await.unwrap();
    let (first, second) = (w.relay(), w.relay());
    let a = first.run_once().await.unwrap();
    let b = second.run_once().await.unwrap();
    assert!(a.leading && !b.leading);
    assert_eq!(a.published, 1);
}
