//! Replay, discard and edit on the real embedded queue and hospital, with real workers.

use std::time::Duration;

use keel_domain::{
    Broker, Hospital, Outgoing, PatientFilter, PatientState, ReplayClaim, Transition,
};
use keel_hospital::{ReplayOutcome, ReplayTarget};

use keel_test_support::ward::{MAX_BODY, TRACEPARENT, ward};

#[tokio::test]
async fn a_replay_sends_the_message_to_its_own_group_with_its_id_key_headers_and_edited_body() {
    let ward = ward().await;
    let sent = ward
        .publish(
            "order.created",
            "{\"total\": -1} permanent: negative total",
            Some("order-7"),
        )
        .await;
    ward.drain().await;
    assert_eq!(
        ward.consumers.successes("ledger", sent.id),
        1,
        "the other group handled it"
    );
    let patient = ward.patient_of(sent.id).await;
    assert_eq!(
        patient.last_error(),
        Some("{\"total\": -1} permanent: negative total")
    );

    let edited = ward
        .service
        .edit(patient.id, b"ok {\"total\": 1}", "test:carol")
        .await
        .unwrap();
    assert!(matches!(edited, Transition::Done(_)));
    let report = ward
        .service
        .replay(&ReplayTarget::Ids(vec![patient.id]), false, "test:carol")
        .await
        .unwrap();
    assert_eq!(report.items[0].outcome, ReplayOutcome::Replayed);
    assert_eq!(ward.depth("billing").await, 1);
    assert_eq!(
        ward.depth("ledger").await,
        0,
        "only the failing group gets it"
    );

    // What the broker holds is the same message, with the edited body.
    let delivery = ward
        .queue
        .fetch("billing", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (
            delivery.id,
            delivery.key.as_deref(),
            delivery.topic.as_str(),
            &delivery.headers,
            delivery.body.as_slice()
        ),
        (
            sent.id,
            Some("order-7"),
            "order.created",
            &sent.headers,
            b"ok {\"total\": 1}".as_slice()
        )
    );
    assert_eq!(delivery.headers["traceparent"], TRACEPARENT);
    ward.queue
        .retry(delivery.tag, Duration::ZERO)
        .await
        .unwrap();
    ward.drain().await;
    assert_eq!(
        ward.consumers.effect("billing", sent.id).as_deref(),
        Some(b"ok {\"total\": 1}".as_slice())
    );
    assert_eq!(ward.consumers.successes("ledger", sent.id), 1);

    let patient = ward.hospital.get(patient.id).await.unwrap().unwrap();
    assert_eq!(patient.state, PatientState::Replayed);
    assert_eq!(patient.settled.unwrap().by, "test:carol");
    let log = ward.hospital.audit_log(None, None, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["replay", "edit"]
    );
    let detail: serde_json::Value = serde_json::from_str(&log[0].detail).unwrap();
    assert_eq!(detail["message_id"], sent.id.to_string());
    assert_eq!(detail["edited"], true);
}

#[tokio::test]
async fn two_operators_replaying_one_patient_send_it_once() {
    let ward = ward().await;
    let sent = ward.publish("order.paid", "permanent: boom", None).await;
    ward.drain().await;
    let id = ward.patient_of(sent.id).await.id;
    ward.consumers
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let target = ReplayTarget::Ids(vec![id]);
    let (a, b) = tokio::join!(
        ward.service.replay(&target, false, "test:erin"),
        ward.service.replay(&target, false, "test:frank")
    );
    let mut outcomes = [
        a.unwrap().items[0].outcome.clone(),
        b.unwrap().items[0].outcome.clone(),
    ];
    outcomes.sort_by_key(keel_hospital::ReplayOutcome::label);
    assert_eq!(outcomes[1], ReplayOutcome::Replayed, "{outcomes:?}");
    assert!(
        matches!(
            outcomes[0],
            ReplayOutcome::Busy | ReplayOutcome::Settled(PatientState::Replayed)
        ),
        "{outcomes:?}"
    );
    ward.drain().await;
    assert_eq!(ward.consumers.successes("billing", sent.id), 1, "sent once");
    let replays = ward.hospital.audit_log(Some(id), None, 10).await.unwrap();
    assert_eq!(replays.len(), 1, "{replays:?}");
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_its_confirmation_replays_the_previewed_set() {
    let ward = ward().await;
    let mut timeouts = Vec::new();
    for n in 0..3 {
        timeouts.push(
            ward.publish("order.created", &format!("slow {n}"), None)
                .await,
        );
    }
    let bad = ward.publish("order.created", "permanent: bad", None).await;
    ward.drain().await;
    let filter = PatientFilter {
        group: Some("billing".into()),
        error_contains: Some("timeout".into()),
        ..PatientFilter::default()
    };
    let preview = ward
        .service
        .replay(&ReplayTarget::Filter(filter.clone()), true, "test:gina")
        .await
        .unwrap();
    assert!(preview.dry_run);
    assert_eq!(preview.count("would replay"), 3);
    let mut previewed: Vec<_> = preview
        .items
        .iter()
        .map(|i| i.summary.as_ref().unwrap().message_id)
        .collect();
    assert!(
        preview.items.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first"
    );
    previewed.sort();
    let mut expected: Vec<_> = timeouts.iter().map(|m| m.id).collect();
    expected.sort();
    assert_eq!(previewed, expected);
    assert_eq!(ward.depth("billing").await, 0, "the dry run sent nothing");
    assert!(
        ward.hospital
            .audit_log(None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // One more matching patient arrives between the preview and its confirmation.
    let late = ward.publish("order.created", "slow late", None).await;
    ward.drain().await;
    ward.consumers
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let confirmed = PatientFilter {
        through_id: preview.through_id,
        ..filter
    };
    let report = ward
        .service
        .replay(&ReplayTarget::Filter(confirmed), false, "test:gina")
        .await
        .unwrap();
    assert_eq!(report.count("replayed"), 3);
    ward.drain().await;
    for m in &timeouts {
        assert_eq!(ward.consumers.successes("billing", m.id), 1);
    }
    assert_eq!(
        ward.consumers.successes("billing", late.id),
        0,
        "not previewed"
    );
    assert_eq!(ward.patient_of(late.id).await.state, PatientState::Waiting);
    assert_eq!(ward.patient_of(bad.id).await.state, PatientState::Waiting);
    let log = ward.hospital.audit_log(None, None, 10).await.unwrap();
    assert_eq!(log.len(), 3);
    let detail: serde_json::Value = serde_json::from_str(&log[0].detail).unwrap();
    assert_eq!(detail["filter"]["error_contains"], "timeout");
    assert!(log.iter().all(|e| {
        e.detail
            .contains(&detail["batch"].as_str().unwrap().to_string())
    }));
}

#[tokio::test]
async fn a_failed_redelivery_leaves_the_patient_waiting_and_free() {
    let ward = ward().await;
    let sent = ward.publish("order.created", "permanent: x", None).await;
    ward.drain().await;
    let id = ward.patient_of(sent.id).await.id;
    let too_big = vec![b'a'; MAX_BODY + 1];
    ward.service.edit(id, &too_big, "test:hal").await.unwrap();
    let report = ward
        .service
        .replay(&ReplayTarget::Ids(vec![id]), false, "test:hal")
        .await
        .unwrap();
    match &report.items[0].outcome {
        ReplayOutcome::Failed(why) => assert!(why.starts_with("not sent"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let patient = ward.hospital.get(id).await.unwrap().unwrap();
    assert_eq!(
        (patient.state, patient.replay_claim),
        (PatientState::Waiting, None)
    );
    assert_eq!(ward.depth("billing").await, 0);
    // Fixed, it replays.
    ward.service.edit(id, b"ok", "test:hal").await.unwrap();
    let report = ward
        .service
        .replay(&ReplayTarget::Ids(vec![id]), false, "test:hal")
        .await
        .unwrap();
    assert_eq!(report.items[0].outcome, ReplayOutcome::Replayed);
}

/// A replayer that dies after sending and before marking: the claim's lease ends, a later
/// replay sends the message again, and the consumer absorbs the copy by its message id.
#[tokio::test]
async fn a_replay_that_died_before_marking_is_sent_again_and_absorbed_by_the_message_id() {
    let ward = ward().await;
    let sent = ward.publish("order.created", "permanent: y", None).await;
    ward.drain().await;
    let patient = ward.patient_of(sent.id).await;
    ward.consumers
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The first replayer claims and sends, then dies.
    let ReplayClaim::Claimed { .. } = ward
        .hospital
        .claim_replay(patient.id, "test:died", Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    let mut message = Outgoing::new(patient.body.clone());
    message.id = patient.message_id;
    message.headers = patient.headers.clone();
    ward.queue
        .redeliver(&patient.group, &patient.topic, message)
        .await
        .unwrap();
    ward.drain().await;
    assert_eq!(ward.consumers.successes("billing", sent.id), 1);
    // Until its lease ends, nobody else replays it.
    let report = ward
        .service
        .replay(&ReplayTarget::Ids(vec![patient.id]), false, "test:next")
        .await
        .unwrap();
    assert_eq!(report.items[0].outcome, ReplayOutcome::Busy);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = ward
        .service
        .replay(&ReplayTarget::Ids(vec![patient.id]), false, "test:next")
        .await
        .unwrap();
    assert_eq!(report.items[0].outcome, ReplayOutcome::Replayed);
    ward.drain().await;
    assert_eq!(
        ward.consumers.successes("billing", sent.id),
        2,
        "delivered twice"
    );
    assert!(ward.consumers.effect("billing", sent.id).is_some());
    assert_eq!(ward.consumers.effects_of("billing"), 1, "one effect");
}

#[tokio::test]
async fn a_message_failing_again_after_replay_returns_as_a_new_patient() {
    let ward = ward().await;
    let sent = ward.publish("order.created", "still broken", None).await;
    ward.drain().await;
    let first = ward.patient_of(sent.id).await;
    assert_eq!(first.attempts.len(), 2, "two attempts, then admission");
    let report = ward
        .service
        .replay(&ReplayTarget::Ids(vec![first.id]), false, "test:ivan")
        .await
        .unwrap();
    assert_eq!(report.items[0].outcome, ReplayOutcome::Replayed);
    ward.drain().await;
    let second = ward.patient_of(sent.id).await;
    assert_ne!(second.id, first.id);
    assert_eq!(second.attempts.len(), 2);
    let first = ward.hospital.get(first.id).await.unwrap().unwrap();
    assert_eq!(first.state, PatientState::Replayed);
    assert_eq!(
        first.attempts.len(),
        2,
        "the old patient keeps its own attempts"
    );
}

#[tokio::test]
async fn a_discard_needs_a_reason_and_is_recorded() {
    let ward = ward().await;
    let sent = ward.publish("order.created", "permanent: z", None).await;
    ward.drain().await;
    let id = ward.patient_of(sent.id).await.id;
    assert!(ward.service.discard(id, " ", "test:judy").await.is_err());
    let done = ward
        .service
        .discard(id, "  duplicate order, refunded by hand ", "test:judy")
        .await
        .unwrap();
    let Transition::Done(patient) = done else {
        panic!("discarded");
    };
    assert_eq!(
        patient.settled.unwrap().note.as_deref(),
        Some("duplicate order, refunded by hand")
    );
    let report = ward
        .service
        .replay(&ReplayTarget::Ids(vec![id, id + 100]), false, "test:judy")
        .await
        .unwrap();
    assert_eq!(
        report
            .items
            .iter()
            .map(|i| i.outcome.clone())
            .collect::<Vec<_>>(),
        [
            ReplayOutcome::Settled(PatientState::Discarded),
            ReplayOutcome::NotFound
        ]
    );
    assert_eq!(ward.depth("billing").await, 0);
}
