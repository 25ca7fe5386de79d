//! The behavioural suite of the `Hospital` port. Each backend calls [`run_all`] with a hospital
//! admitting at most [`SUITE_MAX_PATIENTS`] and a broker to make real deliveries with.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{AdmissionReason, Broker, Delivery, Hospital, HospitalError, Outgoing};

pub const SUITE_MAX_PATIENTS: u64 = 3;

async fn deliver(broker: &dyn Broker, body: &str, key: Option<&str>) -> (Outgoing, Delivery) {
    let mut message = Outgoing::new(body.as_bytes().to_vec());
    message.key = key.map(str::to_owned);
    message.headers.insert(
        "traceparent".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    broker.publish("ward.in", message.clone()).await.unwrap();
    let mut got = broker
        .fetch("ward", 1, Duration::from_millis(1))
        .await
        .unwrap();
    (message, got.pop().expect("the message is delivered"))
}

/// Runs every behaviour; the hospital must start empty.
pub async fn run_all(broker: Arc<dyn Broker>, hospital: Arc<dyn Hospital>) {
    broker.bind("ward", "ward.in").await.unwrap();

    // Two failed attempts (the second after the first lease ran out), then admission.
    let (sent, first) = deliver(&*broker, "sick", Some("k1")).await;
    hospital
        .record_attempt(&first, "first error")
        .await
        .unwrap();
    hospital
        .record_attempt(&first, "first error, recorded twice")
        .await
        .unwrap(); // a retried write
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = broker
        .fetch("ward", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(second.attempt, 2);
    hospital
        .record_attempt(&second, "second error")
        .await
        .unwrap();
    let id = hospital
        .admit(&second, AdmissionReason::Exhausted)
        .await
        .unwrap();
    assert_eq!(
        hospital
            .admit(&second, AdmissionReason::Exhausted)
            .await
            .unwrap(),
        id,
        "admission is idempotent"
    );
    broker.ack(second.tag).await.unwrap(); // as the worker does once the patient is admitted

    let patient = hospital
        .get(id)
        .await
        .unwrap()
        .expect("admitted patient is found");
    assert_eq!(
        (
            patient.group.as_str(),
            patient.topic.as_str(),
            patient.key.as_deref()
        ),
        ("ward", "ward.in", Some("k1"))
    );
    assert_eq!(
        (patient.message_id, &patient.body, &patient.headers),
        (sent.id, &sent.body, &sent.headers)
    );
    assert_eq!(patient.reason, AdmissionReason::Exhausted);
    assert_eq!(
        patient.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    let errors: Vec<_> = patient
        .attempts
        .iter()
        .map(|a| (a.attempt, a.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![(1, "first error, recorded twice"), (2, "second error")]
    );
    assert!(hospital.get(id + 1000).await.unwrap().is_none());

    // Fill the remaining beds; then admission is refused, never evicting.
    for n in 1..SUITE_MAX_PATIENTS {
        let (_, d) = deliver(&*broker, &format!("more {n}"), None).await;
        hospital
            .admit(&d, AdmissionReason::Permanent)
            .await
            .unwrap();
        broker.ack(d.tag).await.unwrap();
    }
    let (_, overflow) = deliver(&*broker, "one too many", None).await;
    assert!(matches!(
        hospital.admit(&overflow, AdmissionReason::Expired).await,
        Err(HospitalError::Full)
    ));
    let listed = hospital.list(10).await.unwrap();
    assert_eq!(listed.len() as u64, SUITE_MAX_PATIENTS);
    assert_eq!(
        listed.last().unwrap().id,
        id,
        "newest first; the first patient is still there"
    );
    assert_eq!(listed[0].reason, AdmissionReason::Permanent);
}
