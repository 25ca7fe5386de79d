//! The hospital on PostgreSQL, beside the queue there.

use async_trait::async_trait;
use chrono::Utc;
use keel_domain::hospital::trace_id;
use keel_domain::{
    AdmissionReason, AttemptRecord, Delivery, Hospital, HospitalError, MessageId, Patient,
};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::{decode_headers, encode_headers, from_micros, micros};

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

fn fault(e: sqlx::Error) -> HospitalError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            HospitalError::Unavailable(Box::new(e))
        }
        other => HospitalError::Internal(Box::new(other)),
    }
}

impl PostgresHospital {
    async fn patient(&self, row: &PgRow) -> Result<Patient, HospitalError> {
        let group: String = row.try_get("grp").map_err(fault)?;
        let message_id: Uuid = row.try_get("message_id").map_err(fault)?;
        let headers: String = row.try_get("headers").map_err(fault)?;
        let reason: String = row.try_get("reason").map_err(fault)?;
        let attempts: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT attempt, error, at FROM hospital_attempts WHERE grp = $1 AND message_id = $2 ORDER BY attempt",
        )
        .bind(&group)
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .map_err(fault)?;
        Ok(Patient {
            id: row.try_get("id").map_err(fault)?,
            group,
            topic: row.try_get("topic").map_err(fault)?,
            message_id: MessageId(message_id),
            key: row.try_get("msg_key").map_err(fault)?,
            headers: decode_headers(&headers).map_err(|e| HospitalError::Internal(Box::new(e)))?,
            body: row.try_get("body").map_err(fault)?,
            published_at: from_micros(row.try_get("published_at").map_err(fault)?),
            admitted_at: from_micros(row.try_get("admitted_at").map_err(fault)?),
            reason: AdmissionReason::parse(&reason).ok_or_else(|| {
                HospitalError::Internal(format!("unknown reason {reason:?}").into())
            })?,
            trace_id: row.try_get("trace_id").map_err(fault)?,
            attempts: attempts
                .into_iter()
                .map(|(attempt, error, at)| AttemptRecord {
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    error,
                    at: from_micros(at),
                })
                .collect(),
        })
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
        let row = sqlx::query("SELECT * FROM hospital_patients WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(fault)?;
        match row {
            Some(row) => Ok(Some(self.patient(&row).await?)),
            None => Ok(None),
        }
    }

    async fn list(&self, limit: u32) -> Result<Vec<Patient>, HospitalError> {
        let rows = sqlx::query("SELECT * FROM hospital_patients ORDER BY id DESC LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(fault)?;
        let mut patients = Vec::with_capacity(rows.len());
        for row in &rows {
            patients.push(self.patient(row).await?);
        }
        Ok(patients)
    }
}
