//! The webhook notifier against a real local receiver (a small axum server) and a real SQLite
//! hospital: notices in order, failures retried without loss, several processes notifying each
//! admission once, digests by cause.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keel_domain::Hospital;
use keel_hospital::{Notifier, NotifierConfig};
use keel_sql_sqlite::{QueueLimits, SqliteQueue};
use serde_json::Value;

use keel_test_support::ward::ward;

/// What the receiver got, and how many more posts it accepts before answering 503.
#[derive(Default)]
struct Inbox {
    received: Mutex<Vec<Value>>,
    /// `usize::MAX`: accept all.
    accept: AtomicUsize,
    refused: AtomicUsize,
}

impl Inbox {
    fn notices(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    fn admissions(&self) -> Vec<i64> {
        self.notices()
            .iter()
            .filter(|n| n["kind"] == "admission")
            .map(|n| n["patient_id"].as_i64().unwrap())
            .collect()
    }
}

async fn receive(State(inbox): State<Arc<Inbox>>, Json(notice): Json<Value>) -> StatusCode {
    let accepted = inbox
        .accept
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            usize::MAX => Some(n),
            0 => None,
            n => Some(n - 1),
        })
        .is_ok();
    if !accepted {
        inbox.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    inbox.received.lock().unwrap().push(notice);
    StatusCode::NO_CONTENT
}

/// A receiver on 127.0.0.1:0; returns its URL.
async fn receiver() -> (String, Arc<Inbox>) {
    let inbox = Arc::new(Inbox::default());
    inbox.accept.store(usize::MAX, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), inbox)
}

fn config(url: &str) -> NotifierConfig {
    NotifierConfig {
        console_base_url: Some("https://keel.example/".into()),
        poll_interval: Duration::from_millis(10),
        digest_interval: Duration::ZERO,
        timeout: Duration::from_secs(2),
        ..NotifierConfig::new(url)
    }
}

#[tokio::test]
async fn every_admission_is_notified_once_in_order_and_failures_are_sent_later() {
    let (url, inbox) = receiver().await;
    let ward = ward().await;
    let notifier = Notifier::new(ward.hospital.clone(), config(&url)).unwrap();
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(
            ward.publish("order.created", &format!("permanent: case {n}"), Some("k"))
                .await,
        );
        ward.drain().await;
    }
    let patients: Vec<_> = ward
        .hospital
        .list(10)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .collect();

    // The receiver takes one notice, then fails: the rest wait, none is skipped.
    inbox.accept.store(1, Ordering::SeqCst);
    assert!(notifier.notify_admissions().await.is_err());
    assert_eq!(inbox.admissions(), vec![patients[0].id]);
    assert!(notifier.notify_admissions().await.is_err());
    assert_eq!(inbox.admissions().len(), 1, "nothing new while it fails");
    inbox.accept.store(usize::MAX, Ordering::SeqCst);
    assert_eq!(notifier.notify_admissions().await.unwrap(), 2);
    assert_eq!(notifier.notify_admissions().await.unwrap(), 0);
    assert_eq!(
        inbox.admissions(),
        patients.iter().map(|p| p.id).collect::<Vec<_>>(),
        "each once, in admission order"
    );

    let notice = &inbox.notices()[0];
    let p = &patients[0];
    assert_eq!(notice["notice_id"], format!("admission-{}", p.id));
    assert_eq!(notice["group"], "billing");
    assert_eq!(notice["topic"], "order.created");
    assert_eq!(notice["message_id"], p.message_id.to_string());
    assert_eq!(notice["key"], "k");
    assert_eq!(notice["reason"], "permanent");
    assert_eq!(notice["last_error"], "permanent: case 0");
    assert_eq!(notice["cause"], "permanent: case <n>");
    assert_eq!(notice["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        notice["console_url"],
        format!("https://keel.example/admin/hospital/patients/{}", p.id)
    );
    assert!(notice["admitted_at"].as_str().unwrap().ends_with('Z'));

    // A later admission is the next notice.
    ward.publish("order.created", "permanent: case 3", None)
        .await;
    ward.drain().await;
    assert_eq!(notifier.notify_admissions().await.unwrap(), 1);
    assert_eq!(inbox.admissions().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifiers_in_several_processes_notify_each_admission_once() {
    let (url, inbox) = receiver().await;
    let ward = ward().await;
    // Two more "processes": their own pools on the same database file.
    let mut others = Vec::new();
    for _ in 0..2 {
        let queue = SqliteQueue::open(&ward.url, QueueLimits::default())
            .await
            .unwrap();
        others.push(Arc::new(queue.hospital(10_000)));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for hospital in others {
        let notifier = Notifier::new(hospital, config(&url)).unwrap();
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            notifier
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    // Admissions arrive while both notify; the receiver fails now and then.
    for n in 0..12 {
        if n == 5 {
            inbox.accept.store(0, Ordering::SeqCst);
        }
        if n == 7 {
            inbox.accept.store(usize::MAX, Ordering::SeqCst);
        }
        ward.publish("order.created", &format!("permanent: {n}"), None)
            .await;
        ward.drain().await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while inbox.admissions().len() < 12 {
        assert!(
            Instant::now() < deadline,
            "only {:?} notified",
            inbox.admissions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // a duplicate would come by now
    stop.send(true).unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the notifier stops on shutdown")
            .unwrap();
    }
    let notified = inbox.admissions();
    let mut expected: Vec<i64> = ward
        .hospital
        .list(100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    expected.sort();
    assert_eq!(notified, expected, "each admission once, in order");
    assert!(
        inbox.refused.load(Ordering::SeqCst) > 0,
        "the failures happened"
    );
}

#[tokio::test]
async fn a_digest_counts_the_admissions_since_the_last_one_by_cause() {
    let (url, inbox) = receiver().await;
    let ward = ward().await;
    let notifier = Notifier::new(ward.hospital.clone(), config(&url)).unwrap();
    assert!(
        notifier
            .send_digest(chrono::Utc::now())
            .await
            .unwrap()
            .is_none(),
        "nothing admitted, nothing sent"
    );
    for body in [
        "permanent: order 1 refused",
        "permanent: order 2 refused",
        "slow",
    ] {
        ward.publish("order.created", body, None).await;
    }
    ward.drain().await;
    let digest = notifier
        .send_digest(chrono::Utc::now())
        .await
        .unwrap()
        .expect("a digest");
    assert_eq!(digest.admitted, 3);
    assert_eq!(digest.waiting_now, 3);
    let causes: Vec<_> = digest
        .causes
        .iter()
        .map(|c| (c.group.as_str(), c.reason, c.cause.as_str(), c.count))
        .collect();
    assert_eq!(
        causes,
        [
            ("billing", "permanent", "permanent: order <n> refused", 2),
            (
                "billing",
                "exhausted",
                "Timeout: billing did not answer within <n>s (attempt <n>)",
                1
            ),
        ]
    );
    let posted = inbox.notices();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["kind"], "digest");
    assert_eq!(posted[0]["admitted"], 3);
    assert_eq!(
        posted[0]["console_url"],
        "https://keel.example/admin/hospital/causes"
    );
    assert!(
        notifier
            .send_digest(chrono::Utc::now())
            .await
            .unwrap()
            .is_none(),
        "nothing new"
    );

    ward.publish("order.created", "permanent: order 3 refused", None)
        .await;
    ward.drain().await;
    // Not before the interval: a notifier with an hour's interval sends nothing yet.
    let hourly = Notifier::new(
        ward.hospital.clone(),
        NotifierConfig {
            digest_interval: Duration::from_secs(3600),
            ..config(&url)
        },
    )
    .unwrap();
    assert!(
        hourly
            .send_digest(chrono::Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        hourly
            .send_digest(chrono::Utc::now() + chrono::Duration::hours(2))
            .await
            .unwrap()
            .is_some()
    );
    let last = inbox.notices().pop().unwrap();
    assert_eq!(last["admitted"], 1, "only what came since: {last}");
    assert_eq!(last["waiting_now"], 4);
}

#[test]
fn only_http_webhooks_are_accepted() {
    let hospital: Arc<dyn Hospital> = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { ward().await.hospital as Arc<dyn Hospital> })
    };
    assert!(Notifier::new(hospital.clone(), NotifierConfig::new("not a url")).is_err());
    assert!(Notifier::new(hospital.clone(), NotifierConfig::new("ftp://x/")).is_err());
    assert!(Notifier::new(hospital, NotifierConfig::new("http://127.0.0.1:9/")).is_ok());
}
