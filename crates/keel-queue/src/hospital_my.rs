//! The hospital on MariaDB / MySQL: for a keel whose database is MariaDB, which has no queue of
//! its own here (the broker is RabbitMQ, NATS or another database), the hospital still lives in
//! keel's database, beside the stores' tables.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel_domain::hospital::{AuditEntry, check_actor, check_reason, trace_id};
use keel_domain::{
    AdmissionReason, CauseCount, Delivery, Hospital, HospitalError, NoticeClaim, Patient,
    PatientFilter, PatientPage, PatientQuery, ReplayClaim, Transition,
};
use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, MySql, MySqlPool, Transaction};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::hospital_sql::{
    self as shared, Arg, PATIENT_COLUMNS, bind_args, fault, lease_end, now_micros,
};
use crate::{encode_headers, from_micros, micros};

/// The hospital's migrations on MariaDB (the whole schema: there is no queue migration here).
const MIGRATIONS: &[keel_store_sql::EmbeddedMigration] = &[(
    1,
    "hospital",
    include_str!("../migrations/mariadb/0001_hospital.sql"),
)];

/// The hospital in a MariaDB or MySQL database.
#[derive(Debug, Clone)]
pub struct MariaDbHospital {
    pool: MySqlPool,
    max_patients: u64,
    /// Set once the hospital's migrations ran in this process: every call waits for it, so that
    /// the synchronous [`MariaDbHospital::connect_lazy`] needs no separate migration step.
    ready: Arc<OnceCell<()>>,
}

impl MariaDbHospital {
    /// A hospital in the database at `url` (`mysql://…`), holding at most `max_patients` waiting
    /// patients. Connects lazily (on first use, when its migrations also run), so that keel
    /// starts while the database is still coming up.
    pub fn connect_lazy(
        url: &str,
        pool: &keel_store_sql::PoolSettings,
        max_patients: u64,
    ) -> Result<Self, HospitalError> {
        let options = MySqlConnectOptions::from_str(url).map_err(fault)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(pool.max_connections.max(1))
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            max_patients,
            ready: Arc::new(OnceCell::new()),
        })
    }

    /// Applies the hospital's migrations now (otherwise the first call does).
    pub async fn migrate(&self) -> Result<(), HospitalError> {
        self.ready().await
    }

    async fn ready(&self) -> Result<(), HospitalError> {
        self.ready
            .get_or_try_init(|| async {
                shared::migrator(MIGRATIONS)
                    .run(&self.pool)
                    .await
                    .map_err(shared::internal)?;
                self.backfill_causes().await
            })
            .await
            .map(drop)
    }

    /// Computes the cause of patients admitted before causes were stored.
    async fn backfill_causes(&self) -> Result<(), HospitalError> {
        let rows: Vec<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, last_error FROM hospital_patients WHERE cause IS NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(fault)?;
        for (id, last_error) in rows {
            let (_, cause) = shared::cause_and_error(last_error);
            sqlx::query("UPDATE hospital_patients SET cause = ? WHERE id = ?")
                .bind(cause)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(fault)?;
        }
        Ok(())
    }

    /// A write transaction. Its conditional updates are race-safe by themselves (InnoDB locks
    /// the row it checks); what must not change between a read and a write is locked by the
    /// statements (`FOR UPDATE`, the admission lock row).
    async fn write(&self) -> Result<Transaction<'static, MySql>, HospitalError> {
        self.ready().await?;
        self.pool.begin().await.map_err(fault)
    }

    async fn insert_audit(
        tx: &mut Transaction<'static, MySql>,
        actor: &str,
        action: &str,
        ids: &[i64],
        detail: &str,
    ) -> Result<(), HospitalError> {
        let audit_id = sqlx::query(
            "INSERT INTO hospital_audit (at, actor, action, patient_ids, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(now_micros())
        .bind(actor)
        .bind(action)
        .bind(shared::ids_json(ids))
        .bind(detail)
        .execute(&mut **tx)
        .await
        .map_err(fault)?
        .last_insert_id();
        for id in ids {
            sqlx::query("INSERT INTO hospital_audit_patients (patient_id, audit_id) VALUES (?, ?)")
                .bind(id)
                .bind(audit_id)
                .execute(&mut **tx)
                .await
                .map_err(fault)?;
        }
        Ok(())
    }

    async fn with_attempts(
        &self,
        mut patients: Vec<Patient>,
    ) -> Result<Vec<Patient>, HospitalError> {
        if patients.is_empty() {
            return Ok(patients);
        }
        let ids: Vec<i64> = patients.iter().map(|p| p.id).collect();
        let (sql, args) = shared::attempts_query(&ids);
        let rows = bind_args(sqlx::query(AssertSqlSafe(sql)), args)
            .fetch_all(&self.pool)
            .await
            .map_err(fault)?;
        shared::attach_attempts(&mut patients, &rows)?;
        Ok(patients)
    }

    async fn select(&self, sql: String, args: Vec<Arg>) -> Result<Vec<Patient>, HospitalError> {
        let rows = bind_args(sqlx::query(AssertSqlSafe(sql)), args)
            .fetch_all(&self.pool)
            .await
            .map_err(fault)?;
        let patients = rows
            .iter()
            .map(shared::decode_patient)
            .collect::<Result<Vec<_>, _>>()?;
        self.with_attempts(patients).await
    }
}

#[async_trait]
impl Hospital for MariaDbHospital {
    async fn record_attempt(&self, delivery: &Delivery, error: &str) -> Result<(), HospitalError> {
        self.ready().await?;
        sqlx::query(
            "INSERT INTO hospital_attempts (grp, message_id, attempt, error, at) VALUES (?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE error = VALUES(error), at = VALUES(at)",
        )
        .bind(&delivery.group)
        .bind(delivery.id.to_string())
        .bind(i64::from(delivery.attempt))
        .bind(error)
        .bind(now_micros())
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
        let mut tx = self.write().await?;
        // One admission at a time: the capacity check and the same-admission check cannot be
        // raced past, and ids are committed in order (the notice cursor relies on it).
        sqlx::query("SELECT id FROM hospital_admission_lock WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await
            .map_err(fault)?;
        let now = now_micros();
        let message_id = delivery.id.to_string();
        let latest: Option<(i64, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, state, claim_until FROM hospital_patients WHERE grp = ? AND message_id = ? \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(&delivery.group)
        .bind(&message_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fault)?;
        let id = match latest {
            Some((id, state, claim_until))
                if shared::is_same_admission(&state, claim_until, now) =>
            {
                id
            }
            _ => {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM hospital_patients WHERE state = 'waiting'",
                )
                .fetch_one(&mut *tx)
                .await
                .map_err(fault)?;
                if u64::try_from(waiting).unwrap_or(0) >= self.max_patients {
                    return Err(HospitalError::Full);
                }
                let inserted = sqlx::query(
                    "INSERT INTO hospital_patients (grp, message_id, topic, msg_key, headers, body, published_at, \
                     admitted_at, reason, trace_id, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                )
                .bind(&delivery.group)
                .bind(&message_id)
                .bind(&delivery.topic)
                .bind(&delivery.key)
                .bind(encode_headers(&delivery.headers))
                .bind(&delivery.body)
                .bind(micros(delivery.published_at))
                .bind(now)
                .bind(reason.as_str())
                .bind(trace_id(&delivery.headers))
                .execute(&mut *tx)
                .await
                .map_err(fault)?;
                i64::try_from(inserted.last_insert_id()).map_err(shared::internal)?
            }
        };
        // The attempts recorded so far become the patient's.
        sqlx::query(
            "INSERT INTO hospital_patient_attempts (patient_id, attempt, error, at) \
             SELECT ?, attempt, error, at FROM hospital_attempts WHERE grp = ? AND message_id = ? \
             ON DUPLICATE KEY UPDATE error = VALUES(error), at = VALUES(at)",
        )
        .bind(id)
        .bind(&delivery.group)
        .bind(&message_id)
        .execute(&mut *tx)
        .await
        .map_err(fault)?;
        sqlx::query("DELETE FROM hospital_attempts WHERE grp = ? AND message_id = ?")
            .bind(&delivery.group)
            .bind(&message_id)
            .execute(&mut *tx)
            .await
            .map_err(fault)?;
        let last_error: Option<String> = sqlx::query_scalar(
            "SELECT error FROM hospital_patient_attempts WHERE patient_id = ? ORDER BY attempt DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fault)?;
        let (last_error, cause) = shared::cause_and_error(last_error);
        sqlx::query("UPDATE hospital_patients SET last_error = ?, cause = ? WHERE id = ?")
            .bind(last_error)
            .bind(cause)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(fault)?;
        tx.commit().await.map_err(fault)?;
        Ok(id)
    }

    async fn get(&self, id: i64) -> Result<Option<Patient>, HospitalError> {
        self.ready().await?;
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM hospital_patients p WHERE p.id = ?");
        Ok(self.select(sql, vec![Arg::Int(id)]).await?.pop())
    }

    async fn find(&self, query: &PatientQuery) -> Result<PatientPage, HospitalError> {
        self.ready().await?;
        let (sql, args) = shared::find_query(query);
        Ok(shared::page(self.select(sql, args).await?, query.limit))
    }

    async fn causes(&self, filter: &PatientFilter) -> Result<Vec<CauseCount>, HospitalError> {
        self.ready().await?;
        let (sql, args) = shared::causes_query(filter);
        let rows = bind_args(sqlx::query(AssertSqlSafe(sql)), args)
            .fetch_all(&self.pool)
            .await
            .map_err(fault)?;
        rows.iter().map(shared::decode_cause).collect()
    }

    async fn edit_body(
        &self,
        id: i64,
        body: &[u8],
        actor: &str,
    ) -> Result<Transition, HospitalError> {
        check_actor(actor)?;
        let mut tx = self.write().await?;
        let now = now_micros();
        let before: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM hospital_patients WHERE id = ? FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(fault)?;
        let edited = sqlx::query(
            "UPDATE hospital_patients SET original_body = COALESCE(original_body, body), body = ?, \
             edited_by = ?, edited_at = ? \
             WHERE id = ? AND state = 'waiting' AND (claim_until IS NULL OR claim_until <= ?)",
        )
        .bind(body)
        .bind(actor)
        .bind(now)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(fault)?;
        if edited.rows_affected() == 0 {
            drop(tx);
            return shared::refused(self.get(id).await?, id);
        }
        let detail = shared::edit_detail(&before.unwrap_or_default(), body);
        Self::insert_audit(&mut tx, actor, "edit", &[id], &detail).await?;
        tx.commit().await.map_err(fault)?;
        let patient = self.get(id).await?.ok_or(HospitalError::NotFound(id))?;
        Ok(Transition::Done(patient))
    }

    async fn claim_replay(
        &self,
        id: i64,
        actor: &str,
        lease: Duration,
    ) -> Result<ReplayClaim, HospitalError> {
        check_actor(actor)?;
        self.ready().await?;
        let now = now_micros();
        let token = Uuid::new_v4();
        let claimed = sqlx::query(
            "UPDATE hospital_patients SET claim_token = ?, claimed_by = ?, claim_until = ? \
             WHERE id = ? AND state = 'waiting' AND (claim_until IS NULL OR claim_until <= ?)",
        )
        .bind(token.to_string())
        .bind(actor)
        .bind(lease_end(now, lease))
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(fault)?;
        let patient = self.get(id).await?;
        if claimed.rows_affected() == 0 {
            return shared::refused_claim(patient, id);
        }
        let patient = patient.ok_or(HospitalError::NotFound(id))?;
        Ok(ReplayClaim::Claimed { patient, token })
    }

    async fn mark_replayed(
        &self,
        id: i64,
        token: Uuid,
        actor: &str,
        detail: &str,
    ) -> Result<Transition, HospitalError> {
        check_actor(actor)?;
        let mut tx = self.write().await?;
        let marked = sqlx::query(
            "UPDATE hospital_patients SET state = 'replayed', settled_by = ?, settled_at = ?, \
             claim_token = NULL, claimed_by = NULL, claim_until = NULL \
             WHERE id = ? AND state = 'waiting' AND claim_token = ?",
        )
        .bind(actor)
        .bind(now_micros())
        .bind(id)
        .bind(token.to_string())
        .execute(&mut *tx)
        .await
        .map_err(fault)?;
        if marked.rows_affected() == 0 {
            drop(tx);
            return shared::refused(self.get(id).await?, id);
        }
        Self::insert_audit(&mut tx, actor, "replay", &[id], detail).await?;
        tx.commit().await.map_err(fault)?;
        let patient = self.get(id).await?.ok_or(HospitalError::NotFound(id))?;
        Ok(Transition::Done(patient))
    }

    async fn release_replay(&self, id: i64, token: Uuid) -> Result<(), HospitalError> {
        self.ready().await?;
        sqlx::query(
            "UPDATE hospital_patients SET claim_token = NULL, claimed_by = NULL, claim_until = NULL \
             WHERE id = ? AND claim_token = ?",
        )
        .bind(id)
        .bind(token.to_string())
        .execute(&self.pool)
        .await
        .map_err(fault)
        .map(drop)
    }

    async fn discard(
        &self,
        id: i64,
        reason: &str,
        actor: &str,
    ) -> Result<Transition, HospitalError> {
        check_actor(actor)?;
        check_reason(reason)?;
        let mut tx = self.write().await?;
        let now = now_micros();
        let discarded = sqlx::query(
            "UPDATE hospital_patients SET state = 'discarded', settled_by = ?, settled_at = ?, settled_note = ? \
             WHERE id = ? AND state = 'waiting' AND (claim_until IS NULL OR claim_until <= ?)",
        )
        .bind(actor)
        .bind(now)
        .bind(reason)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(fault)?;
        if discarded.rows_affected() == 0 {
            drop(tx);
            return shared::refused(self.get(id).await?, id);
        }
        Self::insert_audit(
            &mut tx,
            actor,
            "discard",
            &[id],
            &shared::discard_detail(reason),
        )
        .await?;
        tx.commit().await.map_err(fault)?;
        let patient = self.get(id).await?.ok_or(HospitalError::NotFound(id))?;
        Ok(Transition::Done(patient))
    }

    async fn audit_log(
        &self,
        patient: Option<i64>,
        cursor: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, HospitalError> {
        self.ready().await?;
        let (sql, args) = shared::audit_query(patient, cursor, limit);
        let rows = bind_args(sqlx::query(AssertSqlSafe(sql)), args)
            .fetch_all(&self.pool)
            .await
            .map_err(fault)?;
        rows.iter().map(shared::decode_audit).collect()
    }

    async fn claim_notices(
        &self,
        channel: &str,
        lease: Duration,
    ) -> Result<Option<NoticeClaim>, HospitalError> {
        self.ready().await?;
        let now = now_micros();
        sqlx::query(
            "INSERT INTO hospital_notices (channel, pos, updated_at) VALUES (?, 0, ?) \
             ON DUPLICATE KEY UPDATE pos = pos",
        )
        .bind(channel)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(fault)?;
        let token = Uuid::new_v4();
        let taken = sqlx::query(
            "UPDATE hospital_notices SET lease_token = ?, lease_until = ? \
             WHERE channel = ? AND (lease_until IS NULL OR lease_until <= ?)",
        )
        .bind(token.to_string())
        .bind(lease_end(now, lease))
        .bind(channel)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(fault)?;
        if taken.rows_affected() == 0 {
            return Ok(None);
        }
        let claimed: Option<(i64, i64)> = sqlx::query_as(
            "SELECT pos, updated_at FROM hospital_notices WHERE channel = ? AND lease_token = ?",
        )
        .bind(channel)
        .bind(token.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(fault)?;
        Ok(claimed.map(|(position, updated_at)| NoticeClaim {
            token,
            position,
            updated_at: from_micros(updated_at),
        }))
    }

    async fn advance_notices(
        &self,
        channel: &str,
        token: Uuid,
        position: i64,
    ) -> Result<bool, HospitalError> {
        self.ready().await?;
        let moved = sqlx::query(
            "UPDATE hospital_notices SET pos = ?, updated_at = ? WHERE channel = ? AND lease_token = ?",
        )
        .bind(position)
        .bind(now_micros())
        .bind(channel)
        .bind(token.to_string())
        .execute(&self.pool)
        .await
        .map_err(fault)?;
        Ok(moved.rows_affected() == 1)
    }

    async fn release_notices(&self, channel: &str, token: Uuid) -> Result<(), HospitalError> {
        self.ready().await?;
        sqlx::query(
            "UPDATE hospital_notices SET lease_token = NULL, lease_until = NULL WHERE channel = ? AND lease_token = ?",
        )
        .bind(channel)
        .bind(token.to_string())
        .execute(&self.pool)
        .await
        .map_err(fault)
        .map(drop)
    }
}
