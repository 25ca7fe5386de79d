//! The hospital on SQLite, beside the embedded queue.

use async_trait::async_trait;
use chrono::Utc;
use keel_domain::hospital::trace_id;
use keel_domain::{
    AdmissionReason, AttemptRecord, Delivery, Hospital, HospitalError, MessageId, Patient,
};
use sqlx::SqlitePool;
use uuid::Uuid;

use crate::{decode_headers, encode_headers, from_micros, micros};

/// The hospital in the embedded queue's SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteHospital {
    pool: SqlitePool,
    max_patients: u64,
}

impl SqliteHospital {
    /// A hospital in the same database as `queue`, admitting at most `max_patients`.
    pub fn beside(queue: &crate::SqliteQueue, max_patients: u64) -> Self {
        Self {
            pool: queue.pool().clone(),
            max_patients,
        }
    }
}

pub(crate) fn fault(e: sqlx::Error) -> HospitalError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            HospitalError::Unavailable(Box::new(e))
        }
        other => HospitalError::Internal(Box::new(other)),
    }
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> HospitalError {
    HospitalError::Internal(Box::new(e))
}

#[async_trait]
impl Hospital for SqliteHospital {
    async fn record_attempt(&self, delivery: &Delivery, error: &str) -> Result<(), HospitalError> {
        sqlx::query(
            "INSERT INTO hospital_attempts (grp, message_id, attempt, error, at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT DO UPDATE SET error = excluded.error, at = excluded.at",
        )
        .bind(&delivery.group)
        .bind(delivery.id.to_string())
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(fault)?;
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT id FROM hospital_patients WHERE grp = ? AND message_id = ?")
                .bind(&delivery.group)
                .bind(delivery.id.to_string())
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&delivery.group)
        .bind(delivery.id.to_string())
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
            "SELECT p.id, p.grp, p.message_id, p.topic, p.msg_key, p.headers, p.body, p.published_at, p.admitted_at, \
             p.reason, p.trace_id, a.attempt, a.error, a.at \
             FROM (SELECT * FROM hospital_patients WHERE id = ?) p \
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
            "SELECT p.id, p.grp, p.message_id, p.topic, p.msg_key, p.headers, p.body, p.published_at, p.admitted_at, \
             p.reason, p.trace_id, a.attempt, a.error, a.at \
             FROM (SELECT * FROM hospital_patients ORDER BY id DESC LIMIT ?) p \
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

/// One row of the patients-with-attempts join, the same on both engines: the patient's columns
/// (message id as text), then one recorded attempt's, absent when none was recorded.
pub(crate) type PatientAttemptRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    Vec<u8>,
    i64,
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// Patients from join rows ordered by patient, then attempt: one query reads patients and their
/// attempts, rather than one query per patient.
pub(crate) fn patients(rows: Vec<PatientAttemptRow>) -> Result<Vec<Patient>, HospitalError> {
    let mut out: Vec<Patient> = Vec::new();
    for row in rows {
        let (
            id,
            group,
            message_id,
            topic,
            key,
            headers,
            body,
            published_at,
            admitted_at,
            reason,
            trace_id,
            attempt,
            error,
            at,
        ) = row;
        if out.last().is_none_or(|p| p.id != id) {
            out.push(Patient {
                id,
                group,
                topic,
                message_id: MessageId(Uuid::parse_str(&message_id).map_err(internal)?),
                key,
                headers: decode_headers(&headers).map_err(internal)?,
                body,
                published_at: from_micros(published_at),
                admitted_at: from_micros(admitted_at),
                reason: AdmissionReason::parse(&reason).ok_or_else(|| {
                    HospitalError::Internal(format!("unknown reason {reason:?}").into())
                })?,
                trace_id,
                attempts: Vec::new(),
            });
        }
        if let (Some(attempt), Some(error), Some(at)) = (attempt, error, at) {
            let patient = out.last_mut().expect("pushed above");
            patient.attempts.push(AttemptRecord {
                attempt: u32::try_from(attempt).unwrap_or(0),
                error,
                at: from_micros(at),
            });
        }
    }
    Ok(out)
}
