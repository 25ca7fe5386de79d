//! The queue on SQLite.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use uuid::Uuid;

use crate::{
    DeliveryRow, QueueLimits, check_publish, classify, delivery, depth, duration_micros,
    encode_headers, matching_groups, micros,
};

const MIGRATIONS: &[keel_store_sql::EmbeddedMigration] = &[
    (
        1,
        "queue",
        include_str!("../migrations/sqlite/0001_queue.sql"),
    ),
    (
        2,
        "hospital",
        include_str!("../migrations/sqlite/0002_hospital.sql"),
    ),
];

/// The embedded queue: tables in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    limits: QueueLimits,
}

impl SqliteQueue {
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Opens (creating if missing) the queue database at `url` and applies its migrations.
    ///
    /// `synchronous = FULL`: a publish acknowledged to a producer survives power loss, not only a
    /// process crash, since the producer forgets the message once it is acknowledged.
    pub async fn open(url: &str, limits: QueueLimits) -> Result<Self, BrokerError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(classify)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
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
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        groups: &[&str],
        topic: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        let now = micros(Utc::now());
        let headers = encode_headers(&message.headers);
        for group in groups {
            let inserted = sqlx::query(
                "INSERT INTO queue_messages (grp, id, topic, msg_key, headers, body, published_at, expires_at, available_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (grp, id) DO NOTHING",
            )
            .bind(group)
            .bind(message.id.to_string())
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
                "UPDATE queue_groups SET depth = depth + 1 WHERE grp = ? AND depth < ?",
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
impl Broker for SqliteQueue {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        keel_domain::queue::check_name("group", group, false)?;
        keel_domain::queue::check_name("pattern", pattern, true)?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("INSERT INTO queue_groups (grp) VALUES (?) ON CONFLICT (grp) DO NOTHING")
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        sqlx::query(
            "INSERT INTO queue_bindings (grp, pattern) VALUES (?, ?) ON CONFLICT DO NOTHING",
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)?;
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)?;
        sqlx::query("INSERT INTO queue_groups (grp) VALUES (?) ON CONFLICT (grp) DO NOTHING")
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
            "UPDATE queue_messages SET lease = ?, lease_until = ?, attempts = attempts + 1 \
             WHERE seq IN ( \
               SELECT m.seq FROM queue_messages m \
               WHERE m.grp = ? AND m.available_at <= ? AND (m.lease_until IS NULL OR m.lease_until < ?) \
                 AND (m.msg_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM queue_messages o WHERE o.grp = m.grp AND o.msg_key = m.msg_key AND o.seq < m.seq)) \
               ORDER BY m.seq LIMIT ?) \
             RETURNING seq, id, topic, msg_key, headers, body, published_at, expires_at, attempts",
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)?;
        let group: Option<String> = sqlx::query_scalar(
            "DELETE FROM queue_messages WHERE seq = ? AND lease = ? RETURNING grp",
        )
        .bind(tag.seq)
        .bind(tag.lease.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify)?;
        let Some(group) = group else {
            return Err(BrokerError::LeaseLost);
        };
        sqlx::query("UPDATE queue_groups SET depth = depth - 1 WHERE grp = ?")
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        let at = micros(Utc::now()).saturating_add(duration_micros(delay));
        let res = sqlx::query(
            "UPDATE queue_messages SET lease = NULL, lease_until = NULL, available_at = ? WHERE seq = ? AND lease = ?",
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
            "SELECT count(*), sum(CASE WHEN lease_until >= ? THEN 1 ELSE 0 END), min(published_at) \
             FROM queue_messages WHERE grp = ?",
        )
        .bind(now)
        .bind(group)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(depth(now, total, in_flight, oldest))
    }
}
