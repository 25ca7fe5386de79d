//! The error hospital on SQL: one implementation of the `Hospital` port, [`SqlHospital`], over
//! any sqlx database, and the [`HospitalDialect`] each engine implements for what truly differs
//! (placeholders, `RETURNING` or not, conflict clauses, how admissions serialize). The engines'
//! dialects live in each engine crate's `hospital` module; the statements, filters and row
//! decoding they all use live in `statements`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel_domain::hospital::{AuditEntry, check_actor, check_reason, trace_id};
use keel_domain::{
    AdmissionReason, CauseCount, Delivery, Hospital, HospitalError, NoticeClaim, Patient,
    PatientFilter, PatientPage, PatientQuery, ReplayClaim, Transition,
};
use sqlx::migrate::Migrate;
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Encode, Executor, IntoArguments, Pool, Row, Transaction,
    Type,
};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::{Column, Dialect};

mod statements;

pub use statements::fault;

use crate::{from_micros, headers_json, micros};
use statements::{self as shared, Arg, PATIENT_COLUMNS, bind_args, lease_end, now_micros};

/// What differs between the engines the hospital runs on. Everything else (every transaction's
/// steps, every check, the audit) is [`SqlHospital`]'s, once for all of them. The defaults are
/// standard SQL as PostgreSQL speaks it; each engine overrides where it differs.
pub trait HospitalDialect: Dialect {
    /// The hospital's own migrations on this engine.
    const HOSPITAL_MIGRATIONS: &'static [crate::EmbeddedMigration];

    /// The statement that opens a write transaction, where the engine's plain `BEGIN` would let
    /// what a transaction read change before it writes (SQLite: `BEGIN IMMEDIATE` takes the
    /// write lock at once, which also serializes admissions). `None`: the plain `BEGIN`.
    const BEGIN_WRITE: Option<&'static str> = None;

    /// The statement an admission runs first in its transaction so that admissions run one at a
    /// time: the capacity check and the same-admission check cannot be raced past, and patient
    /// ids are committed in order (the notice cursor relies on it). `None` where
    /// [`Self::BEGIN_WRITE`] already serializes them.
    const LOCK_ADMISSIONS: Option<&'static str> = None;

    /// Appended to the read of a row the transaction then updates: engines that lock rows lock
    /// it; SQLite's write transaction already holds the database lock and has no such clause.
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// Whether `INSERT` and `UPDATE` take `RETURNING` (MariaDB's do not: the inserted id comes
    /// from [`Self::last_insert_id`], a claimed row is read back by its token).
    const RETURNING: bool = true;

    /// The conflict clause of an upsert into `hospital_attempts`: the newest error of an attempt
    /// replaces the one recorded before.
    const ON_ATTEMPT_CONFLICT: &'static str = "ON CONFLICT (grp, message_id, attempt) DO UPDATE SET error = excluded.error, at = excluded.at";

    /// The same for `hospital_patient_attempts`, when a redelivered admission moves its attempts
    /// again.
    const ON_PATIENT_ATTEMPT_CONFLICT: &'static str =
        "ON CONFLICT (patient_id, attempt) DO UPDATE SET error = excluded.error, at = excluded.at";

    /// The conflict clause that leaves an existing `hospital_notices` row as it is.
    const ON_NOTICE_CONFLICT: &'static str = "ON CONFLICT (channel) DO NOTHING";

    /// The id an `INSERT` generated, asked only where [`Self::RETURNING`] is false.
    fn last_insert_id(_res: &<Self::Db as Database>::QueryResult) -> Option<u64> {
        None
    }
}

/// The error hospital in an SQL database; `SqliteHospital`, `PostgresHospital` and
/// `MariaDbHospital` name it on each engine.
#[derive(Debug)]
pub struct SqlHospital<D: HospitalDialect> {
    pool: Pool<D::Db>,
    max_patients: u64,
    /// Set once the hospital's migrations ran in this process: every call waits for it, so that
    /// the synchronous constructors need no separate migration step.
    ready: Arc<OnceCell<()>>,
}

// By hand: a derived `Clone` would ask the driver type (`D::Db`) to be `Clone`, which it is not
// and need not be (the pool is a handle, the readiness cell is shared).
impl<D: HospitalDialect> Clone for SqlHospital<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            max_patients: self.max_patients,
            ready: Arc::clone(&self.ready),
        }
    }
}

type Db<D> = <D as Dialect>::Db;

/// A statement written with `?` placeholders, in `D`'s placeholders.
fn q<D: HospitalDialect>(sql: &str) -> Query<'static, Db<D>, <Db<D> as Database>::Arguments> {
    sqlx::query(AssertSqlSafe(D::sql(sql)))
}

impl<D: HospitalDialect> SqlHospital<D>
where
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
    <Db<D> as Database>::Connection: Migrate,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    usize: ColumnIndex<<Db<D> as Database>::Row>,
    i64: Column<Db<D>>,
    String: Column<Db<D>>,
    Vec<u8>: Column<Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
{
    /// A hospital over `pool`, holding at most `max_patients` waiting patients. Its migrations
    /// run on first use.
    pub fn with_pool(pool: Pool<D::Db>, max_patients: u64) -> Self {
        Self {
            pool,
            max_patients,
            ready: Arc::new(OnceCell::new()),
        }
    }

    /// Applies the hospital's migrations now (otherwise the first call does).
    pub async fn migrate(&self) -> Result<(), HospitalError> {
        self.ready().await
    }

    async fn ready(&self) -> Result<(), HospitalError> {
        self.ready
            .get_or_try_init(|| async {
                shared::migrator(D::HOSPITAL_MIGRATIONS)
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
        let rows: Vec<(i64, Option<String>)> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT id, last_error FROM hospital_patients WHERE cause IS NULL",
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(fault)?;
        for (id, last_error) in rows {
            let (_, cause) = shared::cause_and_error(last_error);
            q::<D>("UPDATE hospital_patients SET cause = ? WHERE id = ?")
                .bind(cause)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(fault)?;
        }
        Ok(())
    }

    /// A write transaction. Its conditional updates are race-safe by themselves (each engine
    /// re-checks the condition on the row it writes); what must not change between a read and
    /// a write is locked as the dialect says ([`HospitalDialect::BEGIN_WRITE`],
    /// [`HospitalDialect::FOR_UPDATE`], [`HospitalDialect::LOCK_ADMISSIONS`]).
    async fn write(&self) -> Result<Transaction<'static, D::Db>, HospitalError> {
        self.ready().await?;
        match D::BEGIN_WRITE {
            Some(begin) => self.pool.begin_with(begin).await,
            None => self.pool.begin().await,
        }
        .map_err(fault)
    }

    /// Runs an `INSERT` (written without `RETURNING`) and returns the id it generated.
    async fn insert_id(
        conn: &mut <Db<D> as Database>::Connection,
        sql: &str,
        bind: impl FnOnce(
            Query<'static, Db<D>, <Db<D> as Database>::Arguments>,
        ) -> Query<'static, Db<D>, <Db<D> as Database>::Arguments>,
    ) -> Result<i64, HospitalError> {
        if D::RETURNING {
            let row = bind(q::<D>(&format!("{sql} RETURNING id")))
                .fetch_one(conn)
                .await
                .map_err(fault)?;
            return row.try_get(0).map_err(fault);
        }
        let res = bind(q::<D>(sql)).execute(conn).await.map_err(fault)?;
        let id = D::last_insert_id(&res)
            .ok_or_else(|| HospitalError::Internal("the engine named no inserted id".into()))?;
        i64::try_from(id).map_err(shared::internal)
    }

    async fn insert_audit(
        tx: &mut Transaction<'static, D::Db>,
        actor: &str,
        action: &str,
        ids: &[i64],
        detail: &str,
    ) -> Result<(), HospitalError> {
        let audit_id = Self::insert_id(
            &mut **tx,
            "INSERT INTO hospital_audit (at, actor, action, patient_ids, detail) VALUES (?, ?, ?, ?, ?)",
            |query| {
                query
                    .bind(now_micros())
                    .bind(actor)
                    .bind(action)
                    .bind(shared::ids_json(ids))
                    .bind(detail)
            },
        )
        .await?;
        for id in ids {
            q::<D>("INSERT INTO hospital_audit_patients (patient_id, audit_id) VALUES (?, ?)")
                .bind(*id)
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
        let rows = bind_args(q::<D>(&sql), args)
            .fetch_all(&self.pool)
            .await
            .map_err(fault)?;
        shared::attach_attempts(&mut patients, &rows)?;
        Ok(patients)
    }

    async fn select(&self, sql: String, args: Vec<Arg>) -> Result<Vec<Patient>, HospitalError> {
        let rows = bind_args(q::<D>(&sql), args)
            .fetch_all(&self.pool)
            .await
            .map_err(fault)?;
        let patients = rows
            .iter()
            .map(shared::decode_patient)
            .collect::<Result<Vec<_>, _>>()?;
        self.with_attempts(patients).await
    }

    async fn patient(&self, id: i64) -> Result<Option<Patient>, HospitalError> {
        self.ready().await?;
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM hospital_patients p WHERE p.id = ?");
        Ok(self.select(sql, vec![Arg::Int(id)]).await?.pop())
    }

    /// What a refused transition found, read after its transaction ended.
    async fn refused(
        &self,
        tx: Transaction<'static, D::Db>,
        id: i64,
    ) -> Result<Transition, HospitalError> {
        drop(tx);
        shared::refused(self.patient(id).await?, id)
    }

    /// Writes the audit row of a transition in its transaction, commits, and returns the patient
    /// as it now is.
    async fn settle(
        &self,
        mut tx: Transaction<'static, D::Db>,
        id: i64,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<Transition, HospitalError> {
        Self::insert_audit(&mut tx, actor, action, &[id], detail).await?;
        tx.commit().await.map_err(fault)?;
        let patient = self.patient(id).await?.ok_or(HospitalError::NotFound(id))?;
        Ok(Transition::Done(patient))
    }
}

#[async_trait]
impl<D: HospitalDialect> Hospital for SqlHospital<D>
where
    <Db<D> as Database>::Connection: Migrate,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
    usize: ColumnIndex<<Db<D> as Database>::Row>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    String: Column<Db<D>>,
    i64: Column<Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    Vec<u8>: Column<Db<D>>,
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    for<'a> &'a [u8]: Encode<'a, Db<D>> + Type<Db<D>>,
{
    async fn record_attempt(&self, delivery: &Delivery, error: &str) -> Result<(), HospitalError> {
        self.ready().await?;
        q::<D>(&format!(
            "INSERT INTO hospital_attempts (grp, message_id, attempt, error, at) VALUES (?, ?, ?, ?, ?) {}",
            D::ON_ATTEMPT_CONFLICT
        ))
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
        if let Some(lock) = D::LOCK_ADMISSIONS {
            q::<D>(lock).execute(&mut *tx).await.map_err(fault)?;
        }
        let now = now_micros();
        let message_id = delivery.id.to_string();
        let latest: Option<(i64, String, Option<i64>)> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT id, state, claim_until FROM hospital_patients WHERE grp = ? AND message_id = ? \
             ORDER BY id DESC LIMIT 1",
        )))
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
                let waiting: i64 = sqlx::query_scalar(AssertSqlSafe(D::sql(
                    "SELECT count(*) FROM hospital_patients WHERE state = 'waiting'",
                )))
                .fetch_one(&mut *tx)
                .await
                .map_err(fault)?;
                if u64::try_from(waiting).unwrap_or(0) >= self.max_patients {
                    return Err(HospitalError::Full);
                }
                Self::insert_id(
                    &mut *tx,
                    "INSERT INTO hospital_patients (grp, message_id, topic, msg_key, headers, body, published_at, \
                     admitted_at, reason, trace_id, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                    |query| {
                        query
                            .bind(&delivery.group)
                            .bind(&message_id)
                            .bind(&delivery.topic)
                            .bind(&delivery.key)
                            .bind(headers_json(&delivery.headers))
                            .bind(&delivery.body)
                            .bind(micros(&delivery.published_at))
                            .bind(now)
                            .bind(reason.as_str())
                            .bind(trace_id(&delivery.headers))
                    },
                )
                .await?
            }
        };
        // The attempts recorded so far become the patient's.
        q::<D>(&format!(
            "INSERT INTO hospital_patient_attempts (patient_id, attempt, error, at) \
             SELECT ?, attempt, error, at FROM hospital_attempts WHERE grp = ? AND message_id = ? {}",
            D::ON_PATIENT_ATTEMPT_CONFLICT
        ))
        .bind(id)
        .bind(&delivery.group)
        .bind(&message_id)
        .execute(&mut *tx)
        .await
        .map_err(fault)?;
        q::<D>("DELETE FROM hospital_attempts WHERE grp = ? AND message_id = ?")
            .bind(&delivery.group)
            .bind(&message_id)
            .execute(&mut *tx)
            .await
            .map_err(fault)?;
        let last_error: Option<String> = sqlx::query_scalar(AssertSqlSafe(D::sql(
            "SELECT error FROM hospital_patient_attempts WHERE patient_id = ? ORDER BY attempt DESC LIMIT 1",
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fault)?;
        let (last_error, cause) = shared::cause_and_error(last_error);
        q::<D>("UPDATE hospital_patients SET last_error = ?, cause = ? WHERE id = ?")
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
        self.patient(id).await
    }

    async fn find(&self, query: &PatientQuery) -> Result<PatientPage, HospitalError> {
        self.ready().await?;
        let (sql, args) = shared::find_query(query);
        Ok(shared::page(self.select(sql, args).await?, query.limit))
    }

    async fn causes(&self, filter: &PatientFilter) -> Result<Vec<CauseCount>, HospitalError> {
        self.ready().await?;
        let (sql, args) = shared::causes_query(filter);
        let rows = bind_args(q::<D>(&sql), args)
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
        let before: Option<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(D::sql(&format!(
            "SELECT body FROM hospital_patients WHERE id = ?{}",
            D::FOR_UPDATE
        ))))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fault)?;
        let edited = q::<D>(
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
        if D::rows_affected(&edited) == 0 {
            return self.refused(tx, id).await;
        }
        let detail = shared::edit_detail(&before.unwrap_or_default(), body);
        self.settle(tx, id, actor, "edit", &detail).await
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
        let claimed = q::<D>(
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
        let patient = self.patient(id).await?;
        if D::rows_affected(&claimed) == 0 {
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
        let marked = q::<D>(
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
        if D::rows_affected(&marked) == 0 {
            return self.refused(tx, id).await;
        }
        self.settle(tx, id, actor, "replay", detail).await
    }

    async fn release_replay(&self, id: i64, token: Uuid) -> Result<(), HospitalError> {
        self.ready().await?;
        q::<D>(
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
        let discarded = q::<D>(
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
        if D::rows_affected(&discarded) == 0 {
            return self.refused(tx, id).await;
        }
        let detail = shared::discard_detail(reason);
        self.settle(tx, id, actor, "discard", &detail).await
    }

    async fn audit_log(
        &self,
        patient: Option<i64>,
        cursor: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, HospitalError> {
        self.ready().await?;
        let (sql, args) = shared::audit_query(patient, cursor, limit);
        let rows = bind_args(q::<D>(&sql), args)
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
        q::<D>(&format!(
            "INSERT INTO hospital_notices (channel, pos, updated_at) VALUES (?, 0, ?) {}",
            D::ON_NOTICE_CONFLICT
        ))
        .bind(channel)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(fault)?;
        let token = Uuid::new_v4();
        let take = "UPDATE hospital_notices SET lease_token = ?, lease_until = ? \
                    WHERE channel = ? AND (lease_until IS NULL OR lease_until <= ?)";
        let bind = |query: Query<'static, Db<D>, <Db<D> as Database>::Arguments>| {
            query
                .bind(token.to_string())
                .bind(lease_end(now, lease))
                .bind(channel)
                .bind(now)
        };
        let claimed: Option<(i64, i64)> = if D::RETURNING {
            bind(q::<D>(&format!("{take} RETURNING pos, updated_at")))
                .fetch_optional(&self.pool)
                .await
                .map_err(fault)?
                .map(|row| {
                    Ok::<_, HospitalError>((
                        row.try_get(0).map_err(fault)?,
                        row.try_get(1).map_err(fault)?,
                    ))
                })
                .transpose()?
        } else {
            let taken = bind(q::<D>(take))
                .execute(&self.pool)
                .await
                .map_err(fault)?;
            if D::rows_affected(&taken) == 0 {
                return Ok(None);
            }
            sqlx::query_as(AssertSqlSafe(D::sql(
                "SELECT pos, updated_at FROM hospital_notices WHERE channel = ? AND lease_token = ?",
            )))
            .bind(channel)
            .bind(token.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(fault)?
        };
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
        let moved = q::<D>(
            "UPDATE hospital_notices SET pos = ?, updated_at = ? WHERE channel = ? AND lease_token = ?",
        )
        .bind(position)
        .bind(now_micros())
        .bind(channel)
        .bind(token.to_string())
        .execute(&self.pool)
        .await
        .map_err(fault)?;
        Ok(D::rows_affected(&moved) == 1)
    }

    async fn release_notices(&self, channel: &str, token: Uuid) -> Result<(), HospitalError> {
        self.ready().await?;
        q::<D>(
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
