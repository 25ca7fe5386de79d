//! The behavioural suite of the `EventStore` port and of the outbox writes every `UserRepo`
//! makes. Each store invokes [`event_suite!`](crate::event_suite), which runs every behaviour as
//! its own test on a fresh, empty, migrated database.

use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use keel_domain::messaging::events::{USER_CREATED, USER_DELETED, USER_UPDATED, UserEvent};
use keel_domain::{
    AuditEntry, EventStore, Job, JobState, MessageId, NewUser, Notification, User, UserEmail,
    UserName, UserRepo,
};
use uuid::Uuid;

fn new_user(email: &str) -> User {
    let now = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap();
    User::create(
        NewUser {
            name: UserName::parse("Grace").unwrap(),
            email: UserEmail::parse(email).unwrap(),
        },
        now,
    )
}

/// One test per behaviour of the suite on one adapter: `$open` is an async fn returning
/// `(guard, store)` on a fresh, empty database.
#[macro_export]
macro_rules! event_suite {
    ($open:path) => {
        $crate::behaviours!($crate::event_suite, $open;
            every_user_write_enqueues_its_event_in_order,
            a_write_that_changes_nothing_enqueues_nothing,
            one_relay_leads_at_a_time,
            a_job_and_its_message_are_stored_together_and_final_states_stick,
            effects_are_recorded_once_per_message,
        );
    };
}

async fn drain<S: EventStore>(store: &S) -> Vec<(String, UserEvent, Option<String>)> {
    let pending = store.outbox_pending(1000).await.unwrap();
    let seqs: Vec<i64> = pending.iter().map(|r| r.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "the outbox comes out in commit order");
    store.outbox_remove(&seqs).await.unwrap();
    pending
        .into_iter()
        .map(|r| {
            let event: UserEvent = serde_json::from_slice(&r.message.body).unwrap();
            (r.topic, event, r.message.key)
        })
        .collect()
}

pub async fn every_user_write_enqueues_its_event_in_order<S: UserRepo + EventStore>(store: &S) {
    let user = new_user("events@example.com");
    store.insert(&user).await.unwrap();
    let mut next = user.clone();
    next.version += 1;
    next.name = UserName::parse("Grace Hopper").unwrap();
    assert!(store.update(&next).await.unwrap());
    assert!(store.delete(user.id).await.unwrap());
    assert_eq!(store.outbox_backlog().await.unwrap(), 3);
    let events = drain(store).await;
    let topics: Vec<&str> = events.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(topics, [USER_CREATED, USER_UPDATED, USER_DELETED]);
    let key = user.id.to_string();
    assert!(
        events
            .iter()
            .all(|(_, e, k)| e.user_id == user.id && k.as_deref() == Some(key.as_str()))
    );
    assert_eq!(
        events[1].1.user.as_ref().unwrap().name.as_str(),
        "Grace Hopper"
    );
    assert_eq!(events[1].1.version, Some(2));
    assert!(events[2].1.user.is_none());
    assert_eq!(
        store.outbox_backlog().await.unwrap(),
        0,
        "removed rows are gone"
    );
}

pub async fn a_write_that_changes_nothing_enqueues_nothing<S: UserRepo + EventStore>(store: &S) {
    let user = new_user("quiet@example.com");
    store.insert(&user).await.unwrap();
    drain(store).await;
    // A stale update, a missing delete, a refused duplicate: no event.
    assert!(store.update(&user).await.is_err());
    assert!(!store.delete(keel_domain::UserId::generate()).await.unwrap());
    assert!(store.insert(&new_user("quiet@example.com")).await.is_err());
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);
    // The write-back flusher: a batch announces each change once, a replay of it nothing.
    let mut next = user.clone();
    next.version += 1;
    let fresh = new_user("batch@example.com");
    store
        .apply_batch(&[next.clone(), fresh.clone()], &[])
        .await
        .unwrap();
    store
        .apply_batch(&[next, fresh.clone()], &[])
        .await
        .unwrap();
    let events = drain(store).await;
    let mut got: Vec<(&str, _)> = events
        .iter()
        .map(|(t, e, _)| (t.as_str(), e.user_id))
        .collect();
    got.sort();
    let mut want = vec![(USER_UPDATED, user.id), (USER_CREATED, fresh.id)];
    want.sort();
    assert_eq!(got, want);
    store.apply_batch(&[], &[user.id, user.id]).await.unwrap();
    let events = drain(store).await;
    assert_eq!(events.len(), 1, "a deletion announces itself once");
    assert_eq!(events[0].0, USER_DELETED);
}

pub async fn one_relay_leads_at_a_time<S: EventStore>(store: &S) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(
        store
            .lead_relay(a, Duration::from_millis(200))
            .await
            .unwrap()
    );
    assert!(
        !store.lead_relay(b, Duration::from_secs(5)).await.unwrap(),
        "a's lease runs"
    );
    assert!(
        store
            .lead_relay(a, Duration::from_millis(200))
            .await
            .unwrap(),
        "a renews"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        store.lead_relay(b, Duration::from_secs(5)).await.unwrap(),
        "a's lease ran out"
    );
    assert!(!store.lead_relay(a, Duration::from_secs(5)).await.unwrap());
}

pub async fn a_job_and_its_message_are_stored_together_and_final_states_stick<S: EventStore>(
    store: &S,
) {
    let job = Job::new("user.export", "someone");
    let message = job.message(Some(Duration::from_secs(60)));
    store.submit_job(&job, &message).await.unwrap();
    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].topic, "job.user.export");
    assert_eq!(pending[0].message.id, message.id);
    assert!(pending[0].message.expires_at.is_some());
    store.outbox_remove(&[pending[0].seq]).await.unwrap();

    let stored = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.kind.as_str()),
        (JobState::Queued, "user.export")
    );
    assert!(
        store
            .set_job_state(job.id, JobState::Running, None, None)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_job_state(job.id, JobState::Succeeded, Some(r#"{"ok":true}"#), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_job_state(job.id, JobState::Running, None, None)
            .await
            .unwrap(),
        "a finished job does not run again"
    );
    let done = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.result.as_deref()),
        (JobState::Succeeded, Some(r#"{"ok":true}"#))
    );
    assert!(store.job(Uuid::now_v7()).await.unwrap().is_none());
}

pub async fn effects_are_recorded_once_per_message<S: EventStore>(store: &S) {
    let user = keel_domain::UserId::generate();
    let now = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap();
    let entry = AuditEntry {
        message_id: MessageId::generate(),
        topic: USER_CREATED.into(),
        user_id: user,
        version: Some(1),
        occurred_at: now,
        recorded_at: now,
    };
    assert!(store.record_audit(&entry).await.unwrap());
    assert!(
        !store.record_audit(&entry).await.unwrap(),
        "a redelivery has no second effect"
    );
    assert_eq!(store.audit_of(user).await.unwrap(), [entry]);
    let sent = Notification {
        message_id: MessageId::generate(),
        user_id: user,
        recipient: "g@example.com".into(),
        text: "Welcome".into(),
        sent_at: now,
    };
    assert!(store.record_notification(&sent).await.unwrap());
    assert!(!store.record_notification(&sent).await.unwrap());
    assert_eq!(store.notifications_of(user).await.unwrap(), [sent]);
}
