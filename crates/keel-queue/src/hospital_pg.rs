//! The hospital on PostgreSQL, beside the queue there.

use async_trait::async_trait;
use chrono::Utc;
use keel_domain::hospital::trace_id;
use keel_domain::{AdmissionReason, Delivery, Hospital, HospitalError, Patient};
use sqlx::PgPool;

use crate::hospital::{PatientAttemptRow, fault, patients};
use crate::{encode_headers, micros};

/// The hospital in the PostgreSQL database of the queue.
#[derive(Debug, Clone)]
pub struct PostgresHospital {
    pool: PgPool,
    max_patients: u64,
}

impl PostgresHospital {
    /// A hospital in the same database as `queue`, admitting at most `max_patients`.
    pub fn beside(queue: &crate::PostgresQueue, max_patients: u64) -> Self {
        Self {
            pool: queue.pool().clone(),
            max_patients,
        }
    }
}

#[async_trait]
impl Hospital for PostgresHospital {
    async fn record_attempt(&self, delivery: &Delivery, error: &str) -> Result<(), HospitalError> {
        sqlx::query(
            "INSERT INTO hospital_attempts (grp, message_id, attempt, error, at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (grp, message_id, attempt) DO UPDATE SET error = excluded.error, at = excluded.at",
        )
        .bind(&delivery.group)
        .bind(delivery.id.0)
        .bind(i64::from(delivery.attempt))
        .bind(error)
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await
        .map_err(fault)
        .map(drop)
    }

    async fn admit(
        &self,
        delivery: &Delivery,
        reason: AdmissionReason,
    ) -> Result<i64, HospitalError> {
        let mut tx = self.pool.begin().await.map_err(fault)?;
        // One admission at a time, so that the capacity check cannot be raced past.
        sqlx::query("LOCK TABLE hospital_patients IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(fault)?;
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM hospital_patients WHERE grp = $1 AND message_id = $2",
        )
        .bind(&delivery.group)
        .bind(delivery.id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fault)?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM hospital_patients")
            .fetch_one(&mut *tx)
            .await
            .map_err(fault)?;
        if u64::try_from(count).unwrap_or(0) >= self.max_patients {
            return Err(HospitalError::Full);
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO hospital_patients (grp, message_id, topic, msg_key, headers, body, published_at, admitted_at, reason, trace_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(&delivery.group)
        .bind(delivery.id.0)
        .bind(&delivery.topic)
        .bind(&delivery.key)
        .bind(encode_headers(&delivery.headers))
        .bind(&delivery.body)
        .bind(micros(delivery.published_at))
        .bind(micros(Utc::now()))
        .bind(reason.as_str())
        .bind(trace_id(&delivery.headers))
        .fetch_one(&mut *tx)
        .await
        .map_err(fault)?;
        tx.commit().await.map_err(fault)?;
        Ok(id)
    }

    async fn get(&self, id: i64) -> Result<Option<Patient>, HospitalError> {
        let rows: Vec<PatientAttemptRow> = sqlx::query_as(
            "SELECT p.id, p.grp, p.message_id::text, p.topic, p.msg_key, p.headers, p.body, p.published_at, p.admitted_at, \
             p.reason, p.trace_id, a.attempt, a.error, a.at \
             FROM (SELECT * FROM hospital_patients WHERE id = $1) p \
             LEFT JOIN hospital_attempts a ON a.grp = p.grp AND a.message_id = p.message_id \
             ORDER BY p.id DESC, a.attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(fault)?;
        Ok(patients(rows)?.pop())
    }

    async fn list(&self, limit: u32) -> Result<Vec<Patient>, HospitalError> {
        let rows: Vec<PatientAttemptRow> = sqlx::query_as(
            "SELECT p.id, p.grp, p.message_id::text, p.topic, p.msg_key, p.headers, p.body, p.published_at, p.admitted_at, \
             p.reason, p.trace_id, a.attempt, a.error, a.at \
             FROM (SELECT * FROM hospital_patients ORDER BY id DESC LIMIT $1) p \
             LEFT JOIN hospital_attempts a ON a.grp = p.grp AND a.message_id = p.message_id \
             ORDER BY p.id DESC, a.attempt",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(fault)?;
        patients(rows)
    }
}
