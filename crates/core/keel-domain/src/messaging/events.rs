//! Domain events, jobs and their consumers' effects (DESIGN.md C5): the ports behind the
//! transactional outbox, the fire-and-forget jobs and the idempotent subscribers.
//!
//! - A user write and the event it causes are committed in **one transaction** (the outbox row),
//!   then a relay publishes outbox rows to the broker in order and removes them. A crash between
//!   the publish and the removal republishes the same message id, which brokers de-duplicate and
//!   consumers absorb.
//! - A job is a row (its state and result) plus an outbox message, written together.
//! - A consumer records the message id **with** its effect (a primary key on it), so a redelivered
//!   message has no second effect.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::messaging::queue::{MessageId, Outgoing};
use crate::users::repo::StoreError;
use crate::users::{User, UserId};

/// Topics of the user events.
pub const USER_CREATED: &str = "user.created";
pub const USER_UPDATED: &str = "user.updated";
pub const USER_DELETED: &str = "user.deleted";

/// Topics of mails (`mail.verify_email`, `mail.invitation`, `mail.reset_password`) start so.
pub const MAIL_TOPIC_PREFIX: &str = "mail.";

/// A mail on its way to the notifier: the body of a `mail.*` message (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    pub user_id: UserId,
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// The body of a `user.*` event (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: UserId,
    /// The user's version after the write (a deletion carries none).
    pub version: Option<i64>,
    pub occurred_at: DateTime<Utc>,
    /// The user as written; absent for a deletion.
    pub user: Option<User>,
}

/// The outbox message announcing that `user` was written (created when `created`).
pub fn user_written(user: &User, created: bool) -> (&'static str, Outgoing) {
    let topic = if created { USER_CREATED } else { USER_UPDATED };
    let event = UserEvent {
        kind: topic.to_owned(),
        user_id: user.id,
        version: Some(user.version),
        occurred_at: Utc::now(),
        user: Some(user.clone()),
    };
    (topic, event_message(user.id, &event))
}

/// The outbox message announcing that the user `id` was deleted.
pub fn user_deleted(id: UserId) -> (&'static str, Outgoing) {
    let event = UserEvent {
        kind: USER_DELETED.to_owned(),
        user_id: id,
        version: None,
        occurred_at: Utc::now(),
        user: None,
    };
    (USER_DELETED, event_message(id, &event))
}

fn event_message(id: UserId, event: &UserEvent) -> Outgoing {
    // Keyed by user: one user's events are handled in the order they were written.
    let mut message = Outgoing::new(serde_json::to_vec(event).expect("events serialize"))
        .with_key(id.to_string());
    message.headers = crate::messaging::trace::headers();
    message
}

/// An outbox row waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub seq: i64,
    pub topic: String,
    pub message: Outgoing,
}

/// What a job is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Its time to live passed before a worker took it; it was not run.
    Expired,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Expired)
    }
}

/// A fire-and-forget job: requested over HTTP (202), done by a worker, polled by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: Uuid,
    /// What to do, e.g. `user.export`; also the topic `job.<kind>` of its message.
    pub kind: String,
    /// What it is about, e.g. the user id.
    pub subject: String,
    pub state: JobState,
    /// The result as JSON text, once succeeded.
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Job {
    pub fn new(kind: &str, subject: &str) -> Self {
        let now = Utc::now();
        Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            state: JobState::Queued,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The topic of its message.
    pub fn topic(&self) -> String {
        format!("job.{}", self.kind)
    }

    /// Its message: the job id is the message id's source of truth (the body), keyed by job.
    pub fn message(&self, ttl: Option<Duration>) -> Outgoing {
        let mut message =
            Outgoing::new(self.id.to_string().into_bytes()).with_key(self.id.to_string());
        message.headers = crate::messaging::trace::headers();
        message.expires_at = ttl
            .and_then(|ttl| chrono::Duration::from_std(ttl).ok())
            .map(|ttl| self.created_at + ttl);
        message
    }
}

/// An audit log entry, written once per `user.*` event by the `audit` subscriber group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub message_id: MessageId,
    pub topic: String,
    pub user_id: UserId,
    pub version: Option<i64>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

/// A notification sent by the `notifier` subscriber group (a welcome message per new user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub message_id: MessageId,
    pub user_id: UserId,
    pub recipient: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
}

/// Storage behind the outbox, the jobs and the subscribers' effects, in keel's database (the
/// same one as the users, so that a write and its event share a transaction).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Takes (or renews) the relay lease for `holder` for `lease`; `false` while another holder's
    /// lease runs. One relay at a time keeps the outbox's order on the broker.
    async fn lead_relay(&self, holder: Uuid, lease: Duration) -> Result<bool, StoreError>;
    /// The oldest outbox rows, at most `limit`, in commit order.
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRecord>, StoreError>;
    /// Removes published rows.
    async fn outbox_remove(&self, seqs: &[i64]) -> Result<(), StoreError>;
    /// Rows waiting in the outbox.
    async fn outbox_backlog(&self) -> Result<u64, StoreError>;

    /// Puts one message into the outbox on its own (a mail of the identity provider).
    async fn publish(&self, topic: &str, message: &Outgoing) -> Result<(), StoreError>;

    /// Stores a new job and its message in one transaction.
    async fn submit_job(&self, job: &Job, message: &Outgoing) -> Result<(), StoreError>;
    async fn job(&self, id: Uuid) -> Result<Option<Job>, StoreError>;
    /// Moves a job to `state` (with its result or error) unless it is already final; returns
    /// whether it moved. A redelivered job message thus never reruns a finished job.
    async fn set_job_state(
        &self,
        id: Uuid,
        state: JobState,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Records an audit entry; `false` when this message id was already recorded (a duplicate).
    async fn record_audit(&self, entry: &AuditEntry) -> Result<bool, StoreError>;
    /// A user's audit trail, oldest first.
    async fn audit_of(&self, user: UserId) -> Result<Vec<AuditEntry>, StoreError>;
    /// Records a sent notification; `false` when this message id was already recorded.
    async fn record_notification(&self, notification: &Notification) -> Result<bool, StoreError>;
    async fn notifications_of(&self, user: UserId) -> Result<Vec<Notification>, StoreError>;

    /// Erases what the events side keeps of a deleted user's personal data (GDPR): the mails
    /// sent to it, its jobs (an export's result is a copy of its data) and its events not yet
    /// relayed, except the `user.deleted` event that tells subscribers to forget it too.
    async fn erase_user_data(&self, user: UserId) -> Result<Erased, StoreError>;
}

/// What an erasure removed, row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub mails: u64,
    pub jobs: u64,
    pub unsent_events: u64,
}

/// Headers of a stored message from their JSON text, as the stores keep them.
pub fn headers_from_json(raw: &str) -> Option<BTreeMap<String, String>> {
    serde_json::from_str(raw).ok()
}
