//! The queue on PostgreSQL: the SQLite model, with `FOR UPDATE SKIP LOCKED` so that competing
//! workers in many processes never claim the same row.
//!
//! A batch is one statement: `publish_many` inserts every copy from arrays (`UNNEST … WITH
//! ORDINALITY`, in batch order so that `seq` follows publish order) and `ack_many` deletes every
//! tag from arrays, each in one transaction with one depth update per group. PostgreSQL commits
//! concurrent transactions with shared WAL flushes by itself, so unlike SQLite no writer task is
//! needed.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::{
    DeliveryRow, QueueLimits, check_publish, classify, delivery, depth, duration_micros,
    encode_headers, matching_groups, micros, replicate,
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
    (
        4,
        "queue claim order",
        include_str!("../migrations/postgres/0004_queue_claim_order.sql"),
    ),
];

/// The queue in PostgreSQL tables.
#[derive(Debug, Clone)]
pub struct PostgresQueue {
    pool: PgPool,
    limits: QueueLimits,
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

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
        crate::migrations::run_postgres(&pool, MIGRATIONS)
            .await
            .map_err(|e| BrokerError::Internal(Box::new(e)))?;
        Ok(Self { pool, limits })
    }

    /// Stores each `(group, topic, message)` copy in `tx` with one statement; a group already
    /// holding the message id keeps its copy (a republish), and a group without room fails the
    /// whole transaction with `Full`.
    async fn store(
        &self,
        tx: &mut Tx<'_>,
        copies: &[(&str, &str, &Outgoing)],
    ) -> Result<(), BrokerError> {
        if copies.is_empty() {
            return Ok(());
        }
        let now = micros(Utc::now());
        let groups: Vec<&str> = copies.iter().map(|c| c.0).collect();
        let ids: Vec<Uuid> = copies.iter().map(|c| c.2.id.0).collect();
        let topics: Vec<&str> = copies.iter().map(|c| c.1).collect();
        let keys: Vec<Option<&str>> = copies.iter().map(|c| c.2.key.as_deref()).collect();
        let headers: Vec<String> = copies
            .iter()
            .map(|c| encode_headers(&c.2.headers))
            .collect();
        let bodies: Vec<&[u8]> = copies.iter().map(|c| c.2.body.as_slice()).collect();
        let expires: Vec<Option<i64>> = copies.iter().map(|c| c.2.expires_at.map(micros)).collect();
        let stored: Vec<String> = sqlx::query_scalar(
            "INSERT INTO queue_messages (grp, id, topic, msg_key, headers, body, published_at, expires_at, available_at) \
             SELECT grp, id, topic, msg_key, headers, body, $8, expires_at, $8 \
             FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bigint[]) \
               WITH ORDINALITY AS c (grp, id, topic, msg_key, headers, body, expires_at, ord) \
             ORDER BY ord \
             ON CONFLICT (grp, id) DO NOTHING RETURNING grp",
        )
        .bind(groups)
        .bind(ids)
        .bind(topics)
        .bind(keys)
        .bind(headers)
        .bind(bodies)
        .bind(expires)
        .bind(now)
        .fetch_all(&mut **tx)
        .await
        .map_err(classify)?;
        let mut per_group: BTreeMap<String, i64> = BTreeMap::new();
        for group in stored {
            *per_group.entry(group).or_default() += 1;
        }
        // Groups in name order, in publishes and acks alike, so two transactions never wait on
        // each other's depth rows in opposite orders.
        for (group, n) in per_group {
            let counted = sqlx::query(
                "UPDATE queue_groups SET depth = depth + $2 WHERE grp = $1 AND depth + $2 <= $3",
            )
            .bind(group)
            .bind(n)
            .bind(i64::try_from(self.limits.max_depth).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
            if counted.rows_affected() == 0 {
                return Err(BrokerError::Full); // the transaction rolls back: nothing is stored
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
        let routed = self.publish_many(&[(topic.to_owned(), message)]).await?;
        Ok(routed.first().copied().unwrap_or(false))
    }

    async fn publish_many(&self, batch: &[(String, Outgoing)]) -> Result<Vec<bool>, BrokerError> {
        for (topic, message) in batch {
            check_publish(topic, &message.body, &self.limits)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let bindings: Vec<(String, String)> =
            sqlx::query_as("SELECT grp, pattern FROM queue_bindings")
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
        let mut routed = Vec::with_capacity(batch.len());
        let mut copies = Vec::with_capacity(batch.len());
        for (topic, message) in batch {
            let groups = matching_groups(&bindings, topic);
            routed.push(!groups.is_empty());
            copies.extend(groups.into_iter().map(|g| (g, topic.as_str(), message)));
        }
        self.store(&mut tx, &copies).await?;
        tx.commit().await.map_err(classify)?;
        Ok(routed)
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
        self.store(&mut tx, &[(group, topic, &message)]).await?;
        tx.commit().await.map_err(classify)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dedupes_publish: true,
        }
    }

    /// Claims follow `queue_messages_order (grp, seq)`, stopping after the batch; each key check
    /// is one probe of `queue_messages_keys (grp, msg_key, seq)`.
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
        self.ack_many(&[tag])
            .await
            .pop()
            .unwrap_or(Err(BrokerError::LeaseLost))
    }

    async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        if tags.is_empty() {
            return Vec::new();
        }
        match self.remove(tags).await {
            Ok(removed) => {
                let mut removed: HashSet<(i64, String)> = removed;
                // In order: the first of repeated tags takes the removal, the rest lost it.
                tags.iter()
                    .map(|tag| {
                        if removed.remove(&(tag.seq, tag.lease.to_string())) {
                            Ok(())
                        } else {
                            Err(BrokerError::LeaseLost)
                        }
                    })
                    .collect()
            }
            Err(e) => tags.iter().map(|_| Err(replicate(&e))).collect(),
        }
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

impl PostgresQueue {
    /// Deletes every tagged message still under its lease, in one transaction, and returns the
    /// `(seq, lease)` of those removed.
    async fn remove(&self, tags: &[DeliveryTag]) -> Result<HashSet<(i64, String)>, BrokerError> {
        let seqs: Vec<i64> = tags.iter().map(|t| t.seq).collect();
        let leases: Vec<String> = tags.iter().map(|t| t.lease.to_string()).collect();
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "DELETE FROM queue_messages m USING UNNEST($1::bigint[], $2::text[]) AS t (seq, lease) \
             WHERE m.seq = t.seq AND m.lease = t.lease RETURNING m.seq, m.lease, m.grp",
        )
        .bind(seqs)
        .bind(leases)
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let mut per_group: BTreeMap<&str, i64> = BTreeMap::new();
        for (_, _, group) in &rows {
            *per_group.entry(group.as_str()).or_default() += 1;
        }
        for (group, n) in per_group {
            sqlx::query("UPDATE queue_groups SET depth = depth - $2 WHERE grp = $1")
                .bind(group)
                .bind(n)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(seq, lease, _)| (seq, lease))
            .collect())
    }
}
