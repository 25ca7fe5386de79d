//! The `EventStore` rows as every engine returns them (tuples of portable column types: text,
//! BIGINT microseconds, bytes), and their conversion into domain values — so each store crate
//! keeps only its SQL dialect.

use keel_domain::messaging::events::headers_from_json;
use keel_domain::{
    AuditEntry, Job, JobState, MessageId, Notification, OutboxRecord, Outgoing, StoreError, UserId,
};
use uuid::Uuid;

use crate::{corrupt, from_micros};

/// `SELECT seq, id, topic, msg_key, headers, body, expires_at FROM outbox`.
pub type OutboxRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    Vec<u8>,
    Option<i64>,
);
/// `SELECT id, kind, subject, state, result, error, created_at, updated_at FROM jobs`.
pub type JobRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
);
/// `SELECT message_id, topic, version, occurred_at, recorded_at FROM user_audit`.
pub type AuditRow = (String, String, Option<i64>, i64, i64);
/// `SELECT message_id, recipient, text, sent_at FROM notifications`.
pub type NotificationRow = (String, String, String, i64);

fn uuid(raw: &str, what: &'static str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(raw).map_err(|_| corrupt(what))
}

pub fn outbox_record(row: OutboxRow) -> Result<OutboxRecord, StoreError> {
    let (seq, id, topic, key, headers, body, expires_at) = row;
    Ok(OutboxRecord {
        seq,
        topic,
        message: Outgoing {
            id: MessageId(uuid(&id, "message id")?),
            key,
            headers: headers_from_json(&headers).ok_or_else(|| corrupt("headers"))?,
            body,
            expires_at: expires_at.map(from_micros),
        },
    })
}

pub fn job(row: JobRow) -> Result<Job, StoreError> {
    let (id, kind, subject, state, result, error, created_at, updated_at) = row;
    Ok(Job {
        id: uuid(&id, "job id")?,
        kind,
        subject,
        state: JobState::parse(&state).ok_or_else(|| corrupt("job state"))?,
        result,
        error,
        created_at: from_micros(created_at),
        updated_at: from_micros(updated_at),
    })
}

pub fn audit_entry(user_id: UserId, row: AuditRow) -> Result<AuditEntry, StoreError> {
    let (message_id, topic, version, occurred_at, recorded_at) = row;
    Ok(AuditEntry {
        message_id: MessageId(uuid(&message_id, "message id")?),
        topic,
        user_id,
        version,
        occurred_at: from_micros(occurred_at),
        recorded_at: from_micros(recorded_at),
    })
}

pub fn notification(user_id: UserId, row: NotificationRow) -> Result<Notification, StoreError> {
    let (message_id, recipient, text, sent_at) = row;
    Ok(Notification {
        message_id: MessageId(uuid(&message_id, "message id")?),
        user_id,
        recipient,
        text,
        sent_at: from_micros(sent_at),
    })
}
