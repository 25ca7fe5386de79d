//! What each subscriber group does with a message. Each records the message id with its effect
//! (a primary key on it), so a redelivery — after a crash before the ack, or a broker that
//! delivers twice — has no second effect.

use std::sync::Arc;

use crate::worker::{Handler, HandlerError};
use async_trait::async_trait;
use chrono::Utc;
use keel_domain::messaging::events::{MAIL_TOPIC_PREFIX, Mail, USER_CREATED, UserEvent};
use keel_domain::{
    AuditEntry, Delivery, EventStore, JobState, Notification, StoreError, UserId, UserRepo,
};
use serde_json::json;
use uuid::Uuid;

/// A store failure: unavailable or not, the next attempt may succeed (the database may come
/// back); a message never reaches the hospital for a database blip unless attempts run out.
fn transient(e: StoreError) -> HandlerError {
    HandlerError::Transient(format!("store: {e}"))
}

fn user_event(delivery: &Delivery) -> Result<UserEvent, HandlerError> {
    serde_json::from_slice(&delivery.body)
        .map_err(|e| HandlerError::Permanent(format!("malformed user event: {e}")))
}

/// `audit`: one audit log entry per user event.
pub struct AuditHandler {
    pub events: Arc<dyn EventStore>,
}

#[async_trait]
impl Handler for AuditHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let event = user_event(delivery)?;
        let entry = AuditEntry {
            message_id: delivery.id,
            topic: delivery.topic.clone(),
            user_id: event.user_id,
            version: event.version,
            occurred_at: event.occurred_at,
            recorded_at: Utc::now(),
        };
        let fresh = self.events.record_audit(&entry).await.map_err(transient)?;
        if !fresh {
            tracing::debug!(message_id = %delivery.id, "audit entry already recorded (redelivery)");
        }
        Ok(())
    }
}

/// `notifier`: a welcome message to each new user, and the identity provider's mails
/// (`mail.*`: verification, invitation and reset links). Each is recorded as sent with the
/// message id, so a redelivery sends nothing twice; the record is the dev mailbox. Nothing is
/// sent to an account that no longer exists (erased while its message was on its way).
pub struct NotifierHandler {
    pub events: Arc<dyn EventStore>,
    pub users: Arc<dyn UserRepo>,
}

#[async_trait]
impl Handler for NotifierHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let (user_id, mail) = if delivery.topic == USER_CREATED {
            (user_event(delivery)?.user_id, None)
        } else if delivery.topic.starts_with(MAIL_TOPIC_PREFIX) {
            let mail: Mail = serde_json::from_slice(&delivery.body)
                .map_err(|e| HandlerError::Permanent(format!("malformed mail: {e}")))?;
            (mail.user_id, Some(mail))
        } else {
            return Ok(()); // not a topic this group sends anything for
        };
        // The account as it is now: its name opened (events carry it sealed), and nothing sent
        // to an account erased while the message was on its way.
        let Some(user) = self.users.get(user_id).await.map_err(transient)? else {
            tracing::info!(%user_id, topic = %delivery.topic, "notification dropped: the account is gone");
            return Ok(());
        };
        let (recipient, text) = match mail {
            Some(mail) => (
                mail.to,
                format!("Subject: {}\n\n{}", mail.subject, mail.text),
            ),
            None => (
                user.email.as_str().to_owned(),
                format!("Welcome to keel, {}!", user.name.as_str()),
            ),
        };
        let notification = Notification {
            message_id: delivery.id,
            user_id,
            recipient,
            text,
            sent_at: Utc::now(),
        };
        if self
            .events
            .record_notification(&notification)
            .await
            .map_err(transient)?
        {
            // Neither the address nor the text is logged: personal data, and mails carry links.
            tracing::info!(%user_id, topic = %delivery.topic, "notification sent");
        }
        Ok(())
    }
}

/// `jobs`: runs the job named by the message. A job already final is not run again.
pub struct JobHandler {
    pub events: Arc<dyn EventStore>,
    pub users: Arc<dyn UserRepo>,
}

#[async_trait]
impl Handler for JobHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let id = std::str::from_utf8(&delivery.body)
            .ok()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| HandlerError::Permanent("a job message carries its job id".into()))?;
        let Some(job) = self.events.job(id).await.map_err(transient)? else {
            return Err(HandlerError::Permanent(format!("job {id} does not exist")));
        };
        if job.state.is_final() {
            return Ok(()); // a redelivery of a finished job
        }
        self.events
            .set_job_state(id, JobState::Running, None, None)
            .await
            .map_err(transient)?;
        let outcome = match job.kind.as_str() {
            "user.export" => self.export_user(&job.subject).await?,
            other => Err(format!("unknown job kind {other:?}")),
        };
        let (state, result, error) = match &outcome {
            Ok(result) => (JobState::Succeeded, Some(result.as_str()), None),
            Err(error) => (JobState::Failed, None, Some(error.as_str())),
        };
        self.events
            .set_job_state(id, state, result, error)
            .await
            .map_err(transient)?;
        Ok(())
    }
}

impl JobHandler {
    /// A user's data export: the user and their audit trail, as JSON. `Err` is the job's own
    /// failure (reported on the job); a store failure is the handler's (retried).
    async fn export_user(&self, subject: &str) -> Result<Result<String, String>, HandlerError> {
        let Ok(uuid) = Uuid::parse_str(subject) else {
            return Ok(Err(format!("{subject:?} is not a user id")));
        };
        let id = UserId::from_uuid(uuid);
        let Some(user) = self.users.get(id).await.map_err(transient)? else {
            return Ok(Err("User not found".into()));
        };
        let audit = self.events.audit_of(id).await.map_err(transient)?;
        let export = json!({
            "user": user,
            "audit": audit,
            "exported_at": Utc::now(),
        });
        Ok(Ok(export.to_string()))
    }
}
