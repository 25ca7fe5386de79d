//! The queue on PostgreSQL: the SQLite model, with `FOR UPDATE SKIP LOCKED` so that competing
//! workers in many processes never claim the same row.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::{
    DeliveryRow, QueueLimits, check_publish, classify, delivery, depth, duration_micros,
    encode_headers, matching_groups, micros,
};

const MIGRATIONS: &[keel_store_sql::EmbeddedMigration] = &[
    (
        1,
        "queue",
        include_str!("../migrations/postgres/0001_queue.sql"),
    ),
    (
        2,
        "hospital",
        include_str!("../migrations/postgres/0002_hospital.sql"),
    ),
];

/// The queue in PostgreSQL tables.
#[derive(Debug, Clone)]
pub struct PostgresQueue {
    pool: PgPool,
    limits: QueueLimits,
}

impl PostgresQueue {
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connects to the database at `url` and applies the queue's migrations.
    pub async fn open(url: &str, limits: QueueLimits) -> Result<Self, BrokerError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(classify)?;
        keel_store_sql::migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(|e| BrokerError::Internal(Box::new(e)))?;
        Ok(Self { pool, limits })
    }

    /// Stores one copy of `message` per group in `tx`; a group already holding the message id
    /// keeps its copy (a republish), a full group fails the whole transaction.
    async fn store(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        groups: &[&str],
        topic: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        let now = micros(Utc::now());
        let headers = encode_headers(&message.headers);
        for group in groups {
            let inserted = sqlx::query(
                "INSERT INTO queue_messages (grp, id, topic, msg_key, headers, body, published_at, expires_at, available_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (grp, id) DO NOTHING",
            )
            .bind(group)
            .bind(message.id.0)
            .bind(topic)
            .bind(&message.key)
            .bind(&headers)
            .bind(&message.body)
            .bind(now)
            .bind(message.expires_at.map(micros))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
            if inserted.rows_affected() == 0 {
                continue; // a republished message: stored once
            }
            let counted = sqlx::query(
                "UPDATE queue_groups SET depth = depth + 1 WHERE grp = $1 AND depth < $2",
            )
            .bind(group)
            .bind(i64::try_from(self.limits.max_depth).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
            if counted.rows_affected() == 0 {
                return Err(BrokerError::Full); // the transaction rolls back: no group gets it
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for PostgresQueue {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        keel_domain::queue::check_name("group", group, false)?;
        keel_domain::queue::check_name("pattern", pattern, true)?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("INSERT INTO queue_groups (grp) VALUES ($1) ON CONFLICT (grp) DO NOTHING")
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        sqlx::query(
            "INSERT INTO queue_bindings (grp, pattern) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(pattern)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn publish(&self, topic: &str, message: Outgoing) -> Result<bool, BrokerError> {
        check_publish(topic, &message.body, &self.limits)?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let bindings: Vec<(String, String)> =
            sqlx::query_as("SELECT grp, pattern FROM queue_bindings")
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
        let groups = matching_groups(&bindings, topic);
        self.store(&mut tx, &groups, topic, &message).await?;
        tx.commit().await.map_err(classify)?;
        Ok(!groups.is_empty())
    }

    async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: Outgoing,
    ) -> Result<(), BrokerError> {
        keel_domain::queue::check_name("group", group, false)?;
        check_publish(topic, &message.body, &self.limits)?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("INSERT INTO queue_groups (grp) VALUES ($1) ON CONFLICT (grp) DO NOTHING")
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        self.store(&mut tx, &[group], topic, &message).await?;
        tx.commit().await.map_err(classify)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dedupes_publish: true,
        }
    }

    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let now = micros(Utc::now());
        let token = Uuid::new_v4();
        let rows: Vec<DeliveryRow> = sqlx::query_as(
            "UPDATE queue_messages SET lease = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE seq IN ( \
               SELECT m.seq FROM queue_messages m \
               WHERE m.grp = $3 AND m.available_at <= $4 AND (m.lease_until IS NULL OR m.lease_until < $5) \
                 AND (m.msg_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM queue_messages o WHERE o.grp = m.grp AND o.msg_key = m.msg_key AND o.seq < m.seq)) \
               ORDER BY m.seq LIMIT $6 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, id::text, topic, msg_key, headers, body, published_at, expires_at, attempts",
        )
        .bind(token.to_string())
        .bind(now.saturating_add(duration_micros(lease)))
        .bind(group)
        .bind(now)
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut deliveries = rows
            .into_iter()
            .map(|row| delivery(row, group, token))
            .collect::<Result<Vec<_>, _>>()?;
        deliveries.sort_by_key(|d| d.tag.seq);
        Ok(deliveries)
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let group: Option<String> = sqlx::query_scalar(
            "DELETE FROM queue_messages WHERE seq = $1 AND lease = $2 RETURNING grp",
        )
        .bind(tag.seq)
        .bind(tag.lease.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify)?;
        let Some(group) = group else {
            return Err(BrokerError::LeaseLost);
        };
        sqlx::query("UPDATE queue_groups SET depth = depth - 1 WHERE grp = $1")
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        let at = micros(Utc::now()).saturating_add(duration_micros(delay));
        let res = sqlx::query(
            "UPDATE queue_messages SET lease = NULL, lease_until = NULL, available_at = $1 WHERE seq = $2 AND lease = $3",
        )
        .bind(at)
        .bind(tag.seq)
        .bind(tag.lease.to_string())
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        if res.rows_affected() == 0 {
            Err(BrokerError::LeaseLost)
        } else {
            Ok(())
        }
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        let now = micros(Utc::now());
        let (total, in_flight, oldest): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(CASE WHEN lease_until >= $1 THEN 1 ELSE 0 END)::BIGINT, min(published_at) \
             FROM queue_messages WHERE grp = $2",
        )
        .bind(now)
        .bind(group)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(depth(now, total, in_flight, oldest))
    }
}
