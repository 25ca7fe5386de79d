//! What the SQL queues share (DESIGN.md C5's embedded default): their limits, the decoding of a
//! claimed row, depth, the classification of driver errors, the checks of a publish. Each engine
//! crate holds its queue (`keel_sql_sqlite::SqliteQueue`, `keel_sql_postgres::PostgresQueue`):
//! a claim is one `UPDATE … RETURNING` statement that leases the oldest ready messages of a group
//! whose key has no older message still stored, so ordering per key holds across retries and
//! crashes: a key's next message waits until the one before it is acknowledged or discarded.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_domain::{BrokerError, Delivery, DeliveryTag, MessageId, QueueDepth};
use uuid::Uuid;

/// Limits of a queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Messages a group may hold; a publish beyond it fails with [`BrokerError::Full`], so a flood
    /// with stopped workers pushes back on producers instead of filling the disk.
    pub max_depth: u64,
    /// Largest body accepted (bytes). Larger bodies belong in the file store, the message
    /// carrying a reference.
    pub max_body_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_depth: 1_000_000,
            max_body_bytes: 256 * 1024,
        }
    }
}

/// A claimed message as both engines return it from the claim's `RETURNING seq, id, topic,
/// msg_key, headers, body, published_at, expires_at, attempts` (the id as text).
pub type DeliveryRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    Vec<u8>,
    i64,
    Option<i64>,
    i64,
);

pub fn delivery(row: DeliveryRow, group: &str, lease: Uuid) -> Result<Delivery, BrokerError> {
    let (seq, id, topic, key, headers, body, published_at, expires_at, attempts) = row;
    Ok(Delivery {
        tag: DeliveryTag { seq, lease },
        id: MessageId(Uuid::parse_str(&id).map_err(|e| BrokerError::Internal(Box::new(e)))?),
        group: group.to_owned(),
        topic,
        key,
        headers: decode_headers(&headers)?,
        body,
        published_at: crate::from_micros(published_at),
        expires_at: expires_at.map(crate::from_micros),
        attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
    })
}

/// A claim's rows as deliveries under its lease, in publish order.
pub fn deliveries(
    rows: Vec<DeliveryRow>,
    group: &str,
    lease: Uuid,
) -> Result<Vec<Delivery>, BrokerError> {
    let mut deliveries = rows
        .into_iter()
        .map(|row| delivery(row, group, lease))
        .collect::<Result<Vec<_>, _>>()?;
    deliveries.sort_by_key(|d| d.tag.seq);
    Ok(deliveries)
}

/// A group's depth from its row count, leased count and oldest publish time.
pub fn depth(now: i64, total: i64, in_flight: Option<i64>, oldest: Option<i64>) -> QueueDepth {
    let in_flight = in_flight.unwrap_or(0);
    QueueDepth {
        ready: u64::try_from(total - in_flight).unwrap_or(0),
        in_flight: u64::try_from(in_flight).unwrap_or(0),
        oldest: oldest.map(|us| Duration::from_micros(u64::try_from(now - us).unwrap_or(0))),
    }
}

pub fn decode_headers(raw: &str) -> Result<BTreeMap<String, String>, BrokerError> {
    serde_json::from_str(raw).map_err(|e| BrokerError::Internal(Box::new(e)))
}

pub fn classify(e: sqlx::Error) -> BrokerError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            BrokerError::Unavailable(Box::new(e))
        }
        other => BrokerError::Internal(Box::new(other)),
    }
}

/// The error every write of a failed group commit receives (the one `sqlx::Error` cannot be
/// handed to each of them), classified as [`classify`] would.
pub fn group_fault(e: &sqlx::Error) -> BrokerError {
    let source = e.to_string().into();
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            BrokerError::Unavailable(source)
        }
        _ => BrokerError::Internal(source),
    }
}

/// A copy of `e` for each of several callers (a batch's results), same variant, its source as
/// text.
pub fn replicate(e: &BrokerError) -> BrokerError {
    let text = |source: &(dyn std::error::Error + Send + Sync)| -> Box<dyn std::error::Error + Send + Sync> {
        source.to_string().into()
    };
    match e {
        BrokerError::LeaseLost => BrokerError::LeaseLost,
        BrokerError::Full => BrokerError::Full,
        BrokerError::Invalid { what, why } => BrokerError::Invalid {
            what,
            why: why.clone(),
        },
        BrokerError::Unavailable(source) => BrokerError::Unavailable(text(source.as_ref())),
        BrokerError::Internal(source) => BrokerError::Internal(text(source.as_ref())),
    }
}

/// The domain's publish checks (topic name, body size) under this queue's limits.
pub fn check_publish(topic: &str, body: &[u8], limits: &QueueLimits) -> Result<(), BrokerError> {
    keel_domain::messaging::queue::check_publish(topic, body, limits.max_body_bytes)
}
