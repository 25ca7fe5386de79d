//! [`EventStore`] on PostgreSQL: the outbox, jobs and subscriber effects (see `migrations/0002`).

use std::time::Duration;

use async_trait::async_trait;
use keel_domain::events::headers_from_json;
use keel_domain::{
    AuditEntry, EventStore, Job, JobState, MessageId, Notification, OutboxRecord, Outgoing,
    StoreError, UserId,
};
use keel_store_sql::{from_micros, micros, now_micros};
use sqlx::Row;
use uuid::Uuid;

use crate::{PostgresStore, map_err};

/// Inserts `message` into the outbox within the caller's transaction.
pub(crate) async fn enqueue<'c, E: sqlx::PgExecutor<'c>>(
    exec: E,
    topic: &str,
    message: &Outgoing,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (id, topic, msg_key, headers, body, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
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

fn parse_uuid(raw: &str, what: &'static str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(raw).map_err(|_| keel_store_sql::corrupt(what))
}

fn row_to_job(row: &sqlx::postgres::PgRow) -> Result<Job, StoreError> {
    let id: String = row.try_get("id").map_err(map_err)?;
    let state: String = row.try_get("state").map_err(map_err)?;
    Ok(Job {
        id: parse_uuid(&id, "job id")?,
        kind: row.try_get("kind").map_err(map_err)?,
        subject: row.try_get("subject").map_err(map_err)?,
        state: JobState::parse(&state).ok_or_else(|| keel_store_sql::corrupt("job state"))?,
        result: row.try_get("result").map_err(map_err)?,
        error: row.try_get("error").map_err(map_err)?,
        created_at: from_micros(row.try_get("created_at").map_err(map_err)?),
        updated_at: from_micros(row.try_get("updated_at").map_err(map_err)?),
    })
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn lead_relay(&self, holder: Uuid, lease: Duration) -> Result<bool, StoreError> {
        let now = now_micros();
        let res = sqlx::query(
            "UPDATE outbox_relay SET holder = $1, lease_until = $2 \
             WHERE name = 'relay' AND (holder = $3 OR holder IS NULL OR lease_until < $4)",
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
        let rows = sqlx::query(
            "SELECT seq, id, topic, msg_key, headers, body, expires_at FROM outbox ORDER BY seq LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id").map_err(map_err)?;
                let headers: String = row.try_get("headers").map_err(map_err)?;
                let expires_at: Option<i64> = row.try_get("expires_at").map_err(map_err)?;
                Ok(OutboxRecord {
                    seq: row.try_get("seq").map_err(map_err)?,
                    topic: row.try_get("topic").map_err(map_err)?,
                    message: Outgoing {
                        id: MessageId(parse_uuid(&id, "message id")?),
                        key: row.try_get("msg_key").map_err(map_err)?,
                        headers: headers_from_json(&headers)
                            .ok_or_else(|| keel_store_sql::corrupt("headers"))?,
                        body: row.try_get("body").map_err(map_err)?,
                        expires_at: expires_at.map(from_micros),
                    },
                })
            })
            .collect()
    }

    async fn outbox_remove(&self, seqs: &[i64]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for seq in seqs {
            sqlx::query("DELETE FROM outbox WHERE seq = $1")
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
        let row = sqlx::query(
            "SELECT id, kind, subject, state, result, error, created_at, updated_at FROM jobs WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(row_to_job).transpose()
    }

    async fn set_job_state(
        &self,
        id: Uuid,
        state: JobState,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, error = $3, updated_at = $4 \
             WHERE id = $5 AND state IN ('queued', 'running')",
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
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
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
        let rows = sqlx::query(
            "SELECT message_id, topic, user_id, version, occurred_at, recorded_at FROM user_audit \
             WHERE user_id = $1 ORDER BY occurred_at, message_id",
        )
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let message_id: String = row.try_get("message_id").map_err(map_err)?;
                Ok(AuditEntry {
                    message_id: MessageId(parse_uuid(&message_id, "message id")?),
                    topic: row.try_get("topic").map_err(map_err)?,
                    user_id: user,
                    version: row.try_get("version").map_err(map_err)?,
                    occurred_at: from_micros(row.try_get("occurred_at").map_err(map_err)?),
                    recorded_at: from_micros(row.try_get("recorded_at").map_err(map_err)?),
                })
            })
            .collect()
    }

    async fn record_notification(&self, n: &Notification) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "INSERT INTO notifications (message_id, user_id, recipient, text, sent_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
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
        let rows = sqlx::query(
            "SELECT message_id, recipient, text, sent_at FROM notifications WHERE user_id = $1 ORDER BY sent_at",
        )
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let message_id: String = row.try_get("message_id").map_err(map_err)?;
                Ok(Notification {
                    message_id: MessageId(parse_uuid(&message_id, "message id")?),
                    user_id: user,
                    recipient: row.try_get("recipient").map_err(map_err)?,
                    text: row.try_get("text").map_err(map_err)?,
                    sent_at: from_micros(row.try_get("sent_at").map_err(map_err)?),
                })
            })
            .collect()
    }
}
