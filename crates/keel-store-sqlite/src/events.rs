//! [`EventStore`] on SQLite: the outbox, jobs and subscriber effects (see `migrations/0002`).

use std::time::Duration;

use async_trait::async_trait;
use keel_domain::{
    AuditEntry, EventStore, Job, JobState, Notification, OutboxRecord, Outgoing, StoreError, UserId,
};
use keel_store_sql::events as rows;
use keel_store_sql::{micros, now_micros};
use uuid::Uuid;

use crate::{SqliteStore, map_err};

/// Inserts `message` into the outbox within the caller's transaction.
pub(crate) async fn enqueue<'c, E: sqlx::SqliteExecutor<'c>>(
    exec: E,
    topic: &str,
    message: &Outgoing,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (id, topic, msg_key, headers, body, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(message.id.to_string())
    .bind(topic)
    .bind(&message.key)
    .bind(keel_store_sql::headers_json(&message.headers))
    .bind(&message.body)
    .bind(message.expires_at.as_ref().map(micros))
    .execute(exec)
    .await
    .map_err(map_err)
    .map(drop)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn lead_relay(&self, holder: Uuid, lease: Duration) -> Result<bool, StoreError> {
        let now = now_micros();
        let res = sqlx::query(
            "UPDATE outbox_relay SET holder = ?, lease_until = ? \
             WHERE name = 'relay' AND (holder = ? OR holder IS NULL OR lease_until < ?)",
        )
        .bind(holder.to_string())
        .bind(now.saturating_add(keel_store_sql::duration_micros(lease)))
        .bind(holder.to_string())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(res.rows_affected() == 1)
    }

    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRecord>, StoreError> {
        let rows: Vec<rows::OutboxRow> = sqlx::query_as(
            "SELECT seq, id, topic, msg_key, headers, body, expires_at FROM outbox ORDER BY seq LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter().map(rows::outbox_record).collect()
    }

    async fn outbox_remove(&self, seqs: &[i64]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for seq in seqs {
            sqlx::query("DELETE FROM outbox WHERE seq = ?")
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn submit_job(&self, job: &Job, message: &Outgoing) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, subject, state, result, error, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id.to_string())
        .bind(&job.kind)
        .bind(&job.subject)
        .bind(job.state.as_str())
        .bind(&job.result)
        .bind(&job.error)
        .bind(micros(&job.created_at))
        .bind(micros(&job.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        enqueue(&mut *tx, &job.topic(), message).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn job(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        let row: Option<rows::JobRow> = sqlx::query_as(
            "SELECT id, kind, subject, state, result, error, created_at, updated_at FROM jobs WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(rows::job).transpose()
    }

    async fn set_job_state(
        &self,
        id: Uuid,
        state: JobState,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE jobs SET state = ?, result = ?, error = ?, updated_at = ? \
             WHERE id = ? AND state IN ('queued', 'running')",
        )
        .bind(state.as_str())
        .bind(result)
        .bind(error)
        .bind(now_micros())
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(res.rows_affected() == 1)
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "INSERT INTO user_audit (message_id, topic, user_id, version, occurred_at, recorded_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(entry.message_id.to_string())
        .bind(&entry.topic)
        .bind(entry.user_id.to_string())
        .bind(entry.version)
        .bind(micros(&entry.occurred_at))
        .bind(micros(&entry.recorded_at))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(res.rows_affected() == 1)
    }

    async fn audit_of(&self, user: UserId) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<rows::AuditRow> = sqlx::query_as(
            "SELECT message_id, topic, version, occurred_at, recorded_at FROM user_audit \
             WHERE user_id = ? ORDER BY occurred_at, message_id",
        )
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|row| rows::audit_entry(user, row))
            .collect()
    }

    async fn record_notification(&self, n: &Notification) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "INSERT INTO notifications (message_id, user_id, recipient, text, sent_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(n.message_id.to_string())
        .bind(n.user_id.to_string())
        .bind(&n.recipient)
        .bind(&n.text)
        .bind(micros(&n.sent_at))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(res.rows_affected() == 1)
    }

    async fn notifications_of(&self, user: UserId) -> Result<Vec<Notification>, StoreError> {
        let rows: Vec<rows::NotificationRow> = sqlx::query_as(
            "SELECT message_id, recipient, text, sent_at FROM notifications WHERE user_id = ? ORDER BY sent_at",
        )
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|row| rows::notification(user, row))
            .collect()
    }
}
