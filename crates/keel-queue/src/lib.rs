//! keel's embedded message queue: a durable queue in an SQL table (DESIGN.md C5's default).
//!
//! - [`SqliteQueue`]: the default, a table in an SQLite file (WAL): no server to run.
//! - [`PostgresQueue`]: the same model on PostgreSQL, where competing workers claim rows with
//!   `FOR UPDATE SKIP LOCKED`.
//!
//! - [`SqliteHospital`], [`PostgresHospital`]: the error hospital beside each SQL queue.
//! - [`worker`]: the worker runtime: fetch, handle, ack; retries with backoff; admission.
//!
//! Both queues implement [`keel_domain::Broker`]. A claim is one `UPDATE … RETURNING` statement that
//! leases the oldest ready messages of a group whose key has no older message still stored, so
//! ordering per key holds across retries and crashes: a key's next message waits until the one
//! before it is acknowledged or discarded.

mod hospital;
mod hospital_pg;
mod postgres;
mod sqlite;
pub mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_domain::BrokerError;

pub use hospital::SqliteHospital;
pub use hospital_pg::PostgresHospital;
pub use postgres::PostgresQueue;
pub use sqlite::SqliteQueue;

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

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn encode_headers(headers: &BTreeMap<String, String>) -> String {
    serde_json::to_string(headers).expect("string maps serialize")
}

fn decode_headers(raw: &str) -> Result<BTreeMap<String, String>, BrokerError> {
    serde_json::from_str(raw).map_err(|e| BrokerError::Internal(Box::new(e)))
}

fn classify(e: sqlx::Error) -> BrokerError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            BrokerError::Unavailable(Box::new(e))
        }
        other => BrokerError::Internal(Box::new(other)),
    }
}

fn check_publish(topic: &str, body: &[u8], limits: &QueueLimits) -> Result<(), BrokerError> {
    keel_domain::queue::check_name("topic", topic, false)?;
    if body.len() > limits.max_body_bytes {
        return Err(BrokerError::Invalid {
            what: "body",
            why: format!(
                "{} bytes is over the {} byte limit",
                body.len(),
                limits.max_body_bytes
            ),
        });
    }
    Ok(())
}
