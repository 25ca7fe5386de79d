//! The behavioural suite of the `Hospital` port. Each backend invokes
//! [`hospital_suite!`](crate::hospital_suite) with a hospital
//! holding at most [`SUITE_MAX_PATIENTS`] waiting patients and a broker to make real deliveries
//! with (any broker: the hospital only reads the deliveries).

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{
    AdmissionReason, Broker, Delivery, Hospital, HospitalError, Outgoing, Patient, PatientFilter,
    PatientQuery, PatientState, ReplayClaim, Transition,
};

pub const SUITE_MAX_PATIENTS: u64 = 6;

const LEASE: Duration = Duration::from_secs(30);
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Publishes one message to `topic` (which `group` must be bound to) and fetches it from `group`.
/// A message with the trace context `traceparent` and a tenant header, the headers the hospital
/// must keep.
pub(crate) fn traced_message(body: &str, key: Option<&str>, traceparent: &str) -> Outgoing {
    let mut message = Outgoing::new(body.as_bytes().to_vec());
    message.key = key.map(str::to_owned);
    message
        .headers
        .insert("traceparent".into(), traceparent.into());
    message.headers.insert("x-tenant".into(), "acme".into());
    message
}

async fn deliver(
    broker: &dyn Broker,
    group: &str,
    topic: &str,
    body: &str,
    key: Option<&str>,
) -> (Outgoing, Delivery) {
    let message = traced_message(body, key, TRACEPARENT);
    broker.publish(topic, message.clone()).await.unwrap();
    let mut got = broker
        .fetch(group, 1, Duration::from_millis(1))
        .await
        .unwrap();
    (message, got.pop().expect("the message is delivered"))
}

/// Delivers a message, records `error` as its failed attempt, admits it and acknowledges it (as
/// the worker does). Returns the patient id.
async fn admit_one(
    broker: &dyn Broker,
    hospital: &dyn Hospital,
    (group, topic): (&str, &str),
    body: &str,
    error: Option<&str>,
    reason: AdmissionReason,
) -> i64 {
    let (_, delivery) = deliver(broker, group, topic, body, None).await;
    if let Some(error) = error {
        hospital.record_attempt(&delivery, error).await.unwrap();
    }
    let id = hospital.admit(&delivery, reason).await.unwrap();
    broker.ack(delivery.tag).await.unwrap();
    id
}

fn ids(patients: &[Patient]) -> Vec<i64> {
    patients.iter().map(|p| p.id).collect()
}

async fn find(hospital: &dyn Hospital, filter: PatientFilter) -> Vec<i64> {
    let page = hospital
        .find(&PatientQuery::newest(filter, 100))
        .await
        .unwrap();
    assert_eq!(page.next_cursor, None);
    ids(&page.patients)
}

fn done(t: Transition) -> Patient {
    match t {
        Transition::Done(p) => p,
        other => panic!("expected the action done, got {other:?}"),
    }
}

/// A fresh broker and the empty hospital its workers admit to: the subject of each test (not
/// `ward::Ward`, the hospital tests' running queue with workers).
pub struct Subject {
    pub broker: Arc<dyn Broker>,
    pub hospital: Arc<dyn Hospital>,
}

/// One test per behaviour of the suite on one adapter: `$open` is an async fn returning
/// `(guard, Subject)`, a fresh broker and an empty hospital holding [`SUITE_MAX_PATIENTS`].
#[macro_export]
macro_rules! hospital_suite {
    ($open:path) => {
        $crate::behaviours!($crate::hospital_suite::cases, $open;
            admission_keeps_every_attempt,
            a_full_hospital_refuses_and_never_evicts,
            filters_pick_patients_and_pages_continue,
            causes_group_what_varies_only_in_numbers,
            discarding_needs_a_reason_is_idempotent_and_frees_a_bed,
            editing_keeps_the_admitted_body,
            one_replay_claim_wins_and_settles_once,
            a_message_failing_again_after_replay_is_a_new_patient,
            the_audit_log_records_every_action,
            a_notice_channel_is_held_by_one_claimant_at_a_time,
        );
    };
}

/// The behaviours build on each other's patients (the full hospital's beds are what the filters,
/// edits and replays act on), so the test of each runs the ones before it first: the first
/// behaviour that breaks is the one whose own test fails alone.
pub mod cases {
    use super::Subject;

    /// Runs the suite's steps in order, up to and including step `last`.
    async fn through(subject: &Subject, last: u8) {
        subject.broker.bind("subject", "subject.in").await.unwrap();
        subject.broker.bind("clinic", "clinic.*").await.unwrap();
        let (broker, hospital) = (&*subject.broker, &*subject.hospital);
        let first = super::admission_keeps_every_attempt(broker, hospital).await;
        if last == 0 {
            return;
        }
        let beds = super::a_full_hospital_refuses_and_never_evicts(broker, hospital, first).await;
        if last == 1 {
            return;
        }
        super::filters_pick_patients_and_pages_continue(hospital, &beds).await;
        if last == 2 {
            return;
        }
        super::causes_group_what_varies_only_in_numbers(hospital, &beds).await;
        if last == 3 {
            return;
        }
        super::discarding_needs_a_reason_is_idempotent_and_frees_a_bed(broker, hospital, &beds)
            .await;
        if last == 4 {
            return;
        }
        super::editing_keeps_the_admitted_body(hospital, &beds).await;
        if last == 5 {
            return;
        }
        super::one_replay_claim_wins_and_settles_once(broker, hospital, &beds).await;
        if last == 6 {
            return;
        }
        super::a_message_failing_again_after_replay_is_a_new_patient(broker, hospital).await;
        if last == 7 {
            return;
        }
        super::the_audit_log_records_every_action(hospital).await;
        if last == 8 {
            return;
        }
        super::a_notice_channel_is_held_by_one_claimant_at_a_time(hospital).await;
    }

    pub async fn admission_keeps_every_attempt(subject: &Subject) {
        through(subject, 0).await;
    }
    pub async fn a_full_hospital_refuses_and_never_evicts(subject: &Subject) {
        through(subject, 1).await;
    }
    pub async fn filters_pick_patients_and_pages_continue(subject: &Subject) {
        through(subject, 2).await;
    }
    pub async fn causes_group_what_varies_only_in_numbers(subject: &Subject) {
        through(subject, 3).await;
    }
    pub async fn discarding_needs_a_reason_is_idempotent_and_frees_a_bed(subject: &Subject) {
        through(subject, 4).await;
    }
    pub async fn editing_keeps_the_admitted_body(subject: &Subject) {
        through(subject, 5).await;
    }
    pub async fn one_replay_claim_wins_and_settles_once(subject: &Subject) {
        through(subject, 6).await;
    }
    pub async fn a_message_failing_again_after_replay_is_a_new_patient(subject: &Subject) {
        through(subject, 7).await;
    }
    /// Also what an engine's own test runs before it checks that audit rows cannot change.
    pub async fn the_audit_log_records_every_action(subject: &Subject) {
        through(subject, 8).await;
    }
    pub async fn a_notice_channel_is_held_by_one_claimant_at_a_time(subject: &Subject) {
        through(subject, 9).await;
    }
}

/// Two failed attempts (the second after the first lease ran out), then admission; admitting the
/// same delivery again (a crash between admission and ack) finds the same patient.
async fn admission_keeps_every_attempt(broker: &dyn Broker, hospital: &dyn Hospital) -> i64 {
    let (sent, first) = deliver(broker, "subject", "subject.in", "sick", Some("k1")).await;
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
        .fetch("subject", 1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(second.attempt, 2);
    hospital
        .record_attempt(&second, "Second error: order 17 not found")
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
        ("subject", "subject.in", Some("k1"))
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
        vec![
            (1, "first error, recorded twice"),
            (2, "Second error: order 17 not found")
        ]
    );
    assert_eq!(patient.state, PatientState::Waiting);
    assert_eq!(
        (&patient.settled, &patient.edited, &patient.replay_claim),
        (&None, &None, &None)
    );
    assert_eq!(patient.cause, "Second error: order <n> not found");
    assert_eq!(
        patient.last_error(),
        Some("Second error: order 17 not found")
    );
    assert!(patient.published_at <= patient.admitted_at);
    assert!(hospital.get(id + 1000).await.unwrap().is_none());
    id
}

/// Fills every bed with patients of two groups, topics, reasons and errors; then admission is
/// refused, never evicting. Returns the patient ids in admission order.
async fn a_full_hospital_refuses_and_never_evicts(
    broker: &dyn Broker,
    hospital: &dyn Hospital,
    first: i64,
) -> Vec<i64> {
    let mut beds = vec![first];
    let more: [(&str, &str, Option<&str>, AdmissionReason); 5] = [
        (
            "clinic.billing",
            "{\"order\": 42}",
            Some("OrderNotFound: order 42 not found\n  at billing::charge"),
            AdmissionReason::Permanent,
        ),
        (
            "clinic.billing",
            "{\"order\": 7}",
            Some("OrderNotFound: order 7 not found"),
            AdmissionReason::Permanent,
        ),
        (
            "clinic.mail",
            "mail",
            Some("Timeout: SMTP 100% busy after 30s"),
            AdmissionReason::Exhausted,
        ),
        ("clinic.mail", "late", None, AdmissionReason::Expired),
        (
            "subject.in",
            "subject again",
            Some("OrderNotFound: order 9 not found"),
            AdmissionReason::Permanent,
        ),
    ];
    for (topic, body, error, reason) in more {
        let group = if topic.starts_with("clinic") {
            "clinic"
        } else {
            "subject"
        };
        beds.push(admit_one(broker, hospital, (group, topic), body, error, reason).await);
    }
    assert_eq!(beds.len() as u64, SUITE_MAX_PATIENTS);
    assert!(beds.windows(2).all(|w| w[0] < w[1]), "ids grow: {beds:?}");

    let (_, overflow) = deliver(broker, "subject", "subject.in", "one too many", None).await;
    assert!(matches!(
        hospital.admit(&overflow, AdmissionReason::Expired).await,
        Err(HospitalError::Full)
    ));
    broker.ack(overflow.tag).await.unwrap();
    let listed = hospital.list(10).await.unwrap();
    assert_eq!(
        ids(&listed),
        beds.iter().rev().copied().collect::<Vec<_>>(),
        "newest first; the first patient is still there"
    );
    assert_eq!(listed[0].reason, AdmissionReason::Permanent);
    let expired = listed.iter().find(|p| p.id == beds[4]).unwrap();
    assert_eq!(
        (expired.last_error(), expired.cause.as_str()),
        (None, ""),
        "an expired message has no error"
    );
    beds
}

async fn filters_pick_patients_and_pages_continue(hospital: &dyn Hospital, beds: &[i64]) {
    let b = |i: usize| beds[i];
    let all = || PatientFilter::default();
    assert_eq!(find(hospital, all()).await.len(), beds.len());
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                group: Some("clinic".into()),
                ..all()
            }
        )
        .await,
        vec![b(4), b(3), b(2), b(1)]
    );
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                topic: Some("clinic.mail".into()),
                ..all()
            }
        )
        .await,
        vec![b(4), b(3)]
    );
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                reason: Some(AdmissionReason::Permanent),
                ..all()
            }
        )
        .await,
        vec![b(5), b(2), b(1)]
    );
    // The error filter is a case-insensitive substring of the last error, `%` taken literally.
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                error_contains: Some("ordernotfound".into()),
                ..all()
            }
        )
        .await,
        vec![b(5), b(2), b(1)]
    );
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                error_contains: Some("100%".into()),
                ..all()
            }
        )
        .await,
        vec![b(3)]
    );
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                error_contains: Some("1_0".into()),
                ..all()
            }
        )
        .await,
        Vec::<i64>::new(),
        "`_` is no wildcard"
    );
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                cause: Some("OrderNotFound: order <n> not found".into()),
                ..all()
            }
        )
        .await,
        vec![b(5), b(2), b(1)]
    );
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                state: Some(PatientState::Waiting),
                group: Some("subject".into()),
                ..all()
            }
        )
        .await,
        vec![b(5), b(0)]
    );
    assert!(
        find(
            hospital,
            PatientFilter {
                state: Some(PatientState::Discarded),
                ..all()
            }
        )
        .await
        .is_empty()
    );
    let admitted = |i: usize| {
        let id = beds[i];
        async move { hospital.get(id).await.unwrap().unwrap().admitted_at }
    };
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                admitted_from: Some(admitted(2).await),
                admitted_until: Some(admitted(4).await),
                ..all()
            }
        )
        .await,
        vec![b(3), b(2)],
        "from is inclusive, until exclusive"
    );
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                after_id: Some(b(1)),
                through_id: Some(b(3)),
                ..all()
            }
        )
        .await,
        vec![b(3), b(2)]
    );

    // Pages of two, newest first, then oldest first; every patient once.
    for oldest_first in [false, true] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = hospital
                .find(&PatientQuery {
                    filter: all(),
                    cursor,
                    limit: 2,
                    oldest_first,
                })
                .await
                .unwrap();
            assert!(page.patients.len() <= 2);
            seen.extend(ids(&page.patients));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected = beds.to_vec();
        if !oldest_first {
            expected.reverse();
        }
        assert_eq!(seen, expected, "oldest_first {oldest_first}");
    }
    let page = hospital
        .find(&PatientQuery::newest(all(), 1))
        .await
        .unwrap();
    assert_eq!(
        page.patients[0].attempts.len(),
        1,
        "pages carry the attempts"
    );
}

async fn causes_group_what_varies_only_in_numbers(hospital: &dyn Hospital, beds: &[i64]) {
    let causes = hospital.causes(&PatientFilter::default()).await.unwrap();
    let rows: Vec<_> = causes
        .iter()
        .map(|c| (c.group.as_str(), c.reason, c.cause.as_str(), c.count))
        .collect();
    assert_eq!(
        rows[0],
        (
            "clinic",
            AdmissionReason::Permanent,
            "OrderNotFound: order <n> not found",
            2
        ),
        "most numerous first: {rows:?}"
    );
    assert_eq!(causes.len(), 5, "{rows:?}");
    assert_eq!(causes[0].latest_id, beds[2]);
    assert!(causes[0].first_admitted < causes[0].last_admitted);
    assert!(rows.contains(&(
        "subject",
        AdmissionReason::Permanent,
        "OrderNotFound: order <n> not found",
        1
    )));
    assert!(rows.contains(&("clinic", AdmissionReason::Expired, "", 1)));
    let subject = hospital
        .causes(&PatientFilter {
            group: Some("subject".into()),
            ..PatientFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(subject.len(), 2, "{subject:?}");
}

async fn discarding_needs_a_reason_is_idempotent_and_frees_a_bed(
    broker: &dyn Broker,
    hospital: &dyn Hospital,
    beds: &[i64],
) {
    let id = beds[4]; // the expired one
    assert!(matches!(
        hospital.discard(id, "  ", "alice").await,
        Err(HospitalError::Invalid { what: "reason", .. })
    ));
    assert!(matches!(
        hospital.discard(id, "stale", "").await,
        Err(HospitalError::Invalid { what: "actor", .. })
    ));
    assert!(matches!(
        hospital.discard(9_999_999, "stale", "alice").await,
        Err(HospitalError::NotFound(9_999_999))
    ));
    let patient = done(
        hospital
            .discard(id, "promotion ended; no resend", "alice")
            .await
            .unwrap(),
    );
    assert_eq!(patient.state, PatientState::Discarded);
    let settled = patient.settled.clone().expect("who, when, why");
    assert_eq!(
        (settled.by.as_str(), settled.note.as_deref()),
        ("alice", Some("promotion ended; no resend"))
    );
    match hospital.discard(id, "again", "bob").await.unwrap() {
        Transition::Settled(p) => assert_eq!(p.settled, Some(settled), "the first discard stays"),
        other => panic!("a second discard changes nothing: {other:?}"),
    }
    assert_eq!(
        find(
            hospital,
            PatientFilter {
                state: Some(PatientState::Discarded),
                ..PatientFilter::default()
            }
        )
        .await,
        vec![id],
        "a discarded patient stays for the record"
    );

    // The bed it freed takes one admission; the next is refused again.
    let extra = admit_one(
        broker,
        hospital,
        ("subject", "subject.in"),
        "extra",
        Some("boom"),
        AdmissionReason::Permanent,
    )
    .await;
    assert!(extra > beds[beds.len() - 1]);
    let (_, overflow) = deliver(broker, "subject", "subject.in", "overflow", None).await;
    assert!(matches!(
        hospital.admit(&overflow, AdmissionReason::Permanent).await,
        Err(HospitalError::Full)
    ));
    broker.ack(overflow.tag).await.unwrap();
    // Discard the extra one too, so the later behaviours have a bed.
    done(hospital.discard(extra, "test bed", "alice").await.unwrap());
}

async fn editing_keeps_the_admitted_body(hospital: &dyn Hospital, beds: &[i64]) {
    let id = beds[1];
    let admitted = hospital.get(id).await.unwrap().unwrap().body;
    let patient = done(
        hospital
            .edit_body(id, b"{\"order\": 43}", "carol")
            .await
            .unwrap(),
    );
    assert_eq!(patient.body, b"{\"order\": 43}");
    let edit = patient.edited.expect("the edit is recorded");
    assert_eq!(
        (edit.by.as_str(), &edit.original_body),
        ("carol", &admitted)
    );
    let patient = done(
        hospital
            .edit_body(id, b"{\"order\": 44}", "dave")
            .await
            .unwrap(),
    );
    let edit = patient.edited.unwrap();
    assert_eq!(
        (
            patient.body.as_slice(),
            edit.by.as_str(),
            &edit.original_body
        ),
        (b"{\"order\": 44}".as_slice(), "dave", &admitted),
        "the admitted body is kept through later edits"
    );
    assert!(matches!(
        hospital.edit_body(beds[4], b"x", "carol").await.unwrap(),
        Transition::Settled(_)
    ));
    assert!(matches!(
        hospital.edit_body(9_999_999, b"x", "carol").await,
        Err(HospitalError::NotFound(_))
    ));
}

async fn one_replay_claim_wins_and_settles_once(
    broker: &dyn Broker,
    hospital: &dyn Hospital,
    beds: &[i64],
) {
    let id = beds[2];
    // Two operators at once: one claim wins.
    let (a, b) = tokio::join!(
        hospital.claim_replay(id, "erin", LEASE),
        hospital.claim_replay(id, "frank", LEASE)
    );
    let (token, holder, other) = match (a.unwrap(), b.unwrap()) {
        (ReplayClaim::Claimed { token, patient }, ReplayClaim::Busy(other))
        | (ReplayClaim::Busy(other), ReplayClaim::Claimed { token, patient }) => {
            (token, patient, other)
        }
        other => panic!("exactly one claim wins: {other:?}"),
    };
    let claimant = holder.replay_claim.clone().expect("the claim shows").0;
    assert!(claimant == "erin" || claimant == "frank");
    assert!(other.is_claimed(chrono::Utc::now()));
    // While claimed, it can be neither edited nor discarded.
    assert!(matches!(
        hospital.edit_body(id, b"x", "gina").await.unwrap(),
        Transition::Busy(_)
    ));
    assert!(matches!(
        hospital.discard(id, "no", "gina").await.unwrap(),
        Transition::Busy(_)
    ));
    // A wrong token cannot mark it.
    assert!(matches!(
        hospital
            .mark_replayed(id, uuid::Uuid::new_v4(), "gina", "{}")
            .await
            .unwrap(),
        Transition::Busy(_)
    ));
    let patient = done(
        hospital
            .mark_replayed(id, token, &claimant, "{\"note\": \"suite\"}")
            .await
            .unwrap(),
    );
    assert_eq!(patient.state, PatientState::Replayed);
    assert_eq!(patient.settled.as_ref().unwrap().by, claimant);
    assert_eq!(patient.replay_claim, None);
    assert!(matches!(
        hospital
            .mark_replayed(id, token, &claimant, "{}")
            .await
            .unwrap(),
        Transition::Settled(_)
    ));
    assert!(matches!(
        hospital.claim_replay(id, "erin", LEASE).await.unwrap(),
        ReplayClaim::Settled(_)
    ));
    assert!(matches!(
        hospital.discard(id, "late", "erin").await.unwrap(),
        Transition::Settled(_)
    ));

    // A released claim frees the patient; a claim whose lease ended is taken over, and its
    // holder can no longer mark the patient.
    let id = beds[3];
    let ReplayClaim::Claimed { token, .. } =
        hospital.claim_replay(id, "erin", LEASE).await.unwrap()
    else {
        panic!("free patient is claimed");
    };
    hospital.release_replay(id, token).await.unwrap();
    let ReplayClaim::Claimed { token: stale, .. } = hospital
        .claim_replay(id, "erin", Duration::from_millis(1))
        .await
        .unwrap()
    else {
        panic!("a released patient is claimed again");
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ReplayClaim::Claimed { token: fresh, .. } =
        hospital.claim_replay(id, "frank", LEASE).await.unwrap()
    else {
        panic!("an ended lease is taken over");
    };
    assert!(matches!(
        hospital
            .mark_replayed(id, stale, "erin", "{}")
            .await
            .unwrap(),
        Transition::Busy(_)
    ));
    hospital.release_replay(id, stale).await.unwrap(); // not its claim any more: no effect
    assert!(matches!(
        hospital.discard(id, "no", "gina").await.unwrap(),
        Transition::Busy(_)
    ));
    hospital.release_replay(id, fresh).await.unwrap();
    let _ = broker; // deliveries of replays are the service's; see the next behaviour
}

/// A replay sends the message back with its id; if it fails again, even before the replay is
/// marked, that is a new patient with only the new attempts, and the old one keeps its own.
async fn a_message_failing_again_after_replay_is_a_new_patient(
    broker: &dyn Broker,
    hospital: &dyn Hospital,
) {
    let old = admit_one(
        broker,
        hospital,
        ("subject", "subject.in"),
        "relapse",
        Some("first illness"),
        AdmissionReason::Permanent,
    )
    .await;
    let ReplayClaim::Claimed { token, patient } =
        hospital.claim_replay(old, "erin", LEASE).await.unwrap()
    else {
        panic!("claimed");
    };
    let mut again = Outgoing::new(patient.body.clone());
    again.id = patient.message_id;
    again.key = patient.key.clone();
    again.headers = patient.headers.clone();
    broker
        .redeliver(&patient.group, &patient.topic, again)
        .await
        .unwrap();
    let delivery = broker
        .fetch("subject", 1, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("the replayed message is delivered");
    assert_eq!(
        (
            delivery.id,
            &delivery.body,
            &delivery.headers,
            delivery.attempt
        ),
        (patient.message_id, &patient.body, &patient.headers, 1)
    );
    hospital
        .record_attempt(&delivery, "second illness")
        .await
        .unwrap();
    // It fails again before the replay is marked: a new patient, not the claimed one.
    let new = hospital
        .admit(&delivery, AdmissionReason::Permanent)
        .await
        .unwrap();
    assert_ne!(new, old);
    assert_eq!(
        hospital
            .admit(&delivery, AdmissionReason::Permanent)
            .await
            .unwrap(),
        new,
        "and admitting that delivery again finds it"
    );
    broker.ack(delivery.tag).await.unwrap();
    done(
        hospital
            .mark_replayed(old, token, "erin", "{}")
            .await
            .unwrap(),
    );
    let old = hospital.get(old).await.unwrap().unwrap();
    let new = hospital.get(new).await.unwrap().unwrap();
    assert_eq!(old.last_error(), Some("first illness"));
    assert_eq!(old.attempts.len(), 1);
    assert_eq!(new.last_error(), Some("second illness"));
    assert_eq!(new.attempts.len(), 1);
    assert_eq!(
        (new.state, new.message_id, old.state),
        (
            PatientState::Waiting,
            old.message_id,
            PatientState::Replayed
        )
    );
    done(hospital.discard(new.id, "cleanup", "erin").await.unwrap());
}

async fn the_audit_log_records_every_action(hospital: &dyn Hospital) {
    let log = hospital.audit_log(None, None, 100).await.unwrap();
    let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "discard", "replay", "replay", "edit", "edit", "discard", "discard"
        ],
        "newest first, one entry per action done (refused ones leave none)"
    );
    assert!(
        log.windows(2)
            .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at)
    );
    let first_discard = log.last().unwrap();
    assert_eq!(first_discard.actor, "alice");
    assert_eq!(first_discard.patient_ids.len(), 1);
    let detail: serde_json::Value = serde_json::from_str(&first_discard.detail).unwrap();
    assert_eq!(detail["reason"], "promotion ended; no resend");
    let edit = &log[3];
    let detail: serde_json::Value = serde_json::from_str(&edit.detail).unwrap();
    assert_eq!(
        (
            edit.actor.as_str(),
            &detail["before"]["text"],
            &detail["after"]["text"]
        ),
        (
            "dave",
            &serde_json::json!("{\"order\": 43}"),
            &serde_json::json!("{\"order\": 44}")
        )
    );
    let replay: serde_json::Value = serde_json::from_str(&log[2].detail).unwrap();
    assert_eq!(replay["note"], "suite", "the caller's detail is kept");

    // About one patient; and pages by cursor.
    let edited = edit.patient_ids[0];
    let about = hospital.audit_log(Some(edited), None, 100).await.unwrap();
    assert_eq!(
        about.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["edit", "edit"]
    );
    let page = hospital.audit_log(None, Some(log[2].id), 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![log[3].id, log[4].id]
    );
}

async fn a_notice_channel_is_held_by_one_claimant_at_a_time(hospital: &dyn Hospital) {
    let claim = hospital
        .claim_notices("admissions", LEASE)
        .await
        .unwrap()
        .expect("a new channel is free");
    assert_eq!(claim.position, 0);
    assert!(
        hospital
            .claim_notices("admissions", LEASE)
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    assert!(
        hospital
            .claim_notices("digest", LEASE)
            .await
            .unwrap()
            .is_some(),
        "channels are apart"
    );
    assert!(
        !hospital
            .advance_notices("admissions", uuid::Uuid::new_v4(), 99)
            .await
            .unwrap(),
        "only the holder advances"
    );
    assert!(
        hospital
            .advance_notices("admissions", claim.token, 3)
            .await
            .unwrap()
    );
    hospital
        .release_notices("admissions", claim.token)
        .await
        .unwrap();
    let again = hospital
        .claim_notices("admissions", Duration::from_millis(1))
        .await
        .unwrap()
        .expect("released");
    assert_eq!(again.position, 3);
    assert!(again.updated_at >= claim.updated_at);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let taken = hospital
        .claim_notices("admissions", LEASE)
        .await
        .unwrap()
        .expect("an ended lease is taken over");
    assert!(
        !hospital
            .advance_notices("admissions", again.token, 5)
            .await
            .unwrap(),
        "the old holder must stop"
    );
    assert!(
        hospital
            .advance_notices("admissions", taken.token, 5)
            .await
            .unwrap()
    );
}
