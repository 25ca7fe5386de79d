//! The SQL hospital's statements (written with `?` placeholders; PostgreSQL's are numbered by
//! `crate::numbered`), filter builder, row decoding and audit details, shared by every engine;
//! `hospital` runs them in its transactions, each engine's dialect file says what differs.

use std::time::Duration;

use chrono::Utc;
use keel_domain::hospital::{AuditEntry, Edit, Settlement};
use keel_domain::{
    AdmissionReason, AttemptRecord, CauseCount, HospitalError, MessageId, Patient, PatientFilter,
    PatientState,
};
use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};
use uuid::Uuid;

use crate::from_micros;
use crate::queue::decode_headers;

/// The name of the table in which the hospital's own migrations are recorded. The hospital keeps
/// its own record (not sqlx's default `_sqlx_migrations`) so that its schema evolves apart from
/// the queue's and can live in a database shared with the stores (MariaDB).
pub(crate) const MIGRATIONS_TABLE: &str = "_keel_hospital_migrations";

/// Longest page a caller may ask for; larger requests are cut to it.
pub(crate) const MAX_PAGE: u32 = 1000;

/// Longest list of causes returned.
pub(crate) const MAX_CAUSES: u32 = 500;

pub fn fault(e: sqlx::Error) -> HospitalError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            HospitalError::Unavailable(Box::new(e))
        }
        other => HospitalError::Internal(Box::new(other)),
    }
}

pub(crate) fn internal(e: impl std::error::Error + Send + Sync + 'static) -> HospitalError {
    HospitalError::Internal(Box::new(e))
}

pub(crate) fn corrupt(what: String) -> HospitalError {
    HospitalError::Internal(format!("corrupt hospital row: {what}").into())
}

pub(crate) fn migrator(migrations: &[crate::EmbeddedMigration]) -> sqlx::migrate::Migrator {
    let mut migrator = crate::migrator(migrations);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

pub(crate) fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

pub(crate) fn lease_end(now: i64, lease: Duration) -> i64 {
    now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

/// A bound value of a dynamically built statement.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

pub(crate) fn bind_args<'a, DB: Database>(
    mut query: sqlx::query::Query<'a, DB, DB::Arguments>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'a, DB, DB::Arguments>
where
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
        };
    }
    query
}

/// The patient columns every read selects, in the order [`decode_patient`] reads them.
pub(crate) const PATIENT_COLUMNS: &str = "p.id, p.grp, p.message_id, p.topic, p.msg_key, p.headers, p.body, \
     p.published_at, p.admitted_at, p.reason, p.trace_id, p.state, COALESCE(p.cause, ''), \
     p.settled_by, p.settled_at, p.settled_note, p.edited_by, p.edited_at, p.original_body, \
     p.claimed_by, p.claim_until";

/// The `WHERE` clause of a filter (always starting with `1 = 1`), and its values in order.
pub(crate) fn filter_clause(filter: &PatientFilter) -> (String, Vec<Arg>) {
    let mut sql = String::from("1 = 1");
    let mut args = Vec::new();
    let mut text = |sql: &mut String, clause: &str, value: &Option<String>| {
        if let Some(value) = value {
            sql.push_str(clause);
            args.push(Arg::Text(value.clone()));
        }
    };
    text(&mut sql, " AND p.grp = ?", &filter.group);
    text(&mut sql, " AND p.topic = ?", &filter.topic);
    text(
        &mut sql,
        " AND p.reason = ?",
        &filter.reason.map(|r| r.as_str().to_owned()),
    );
    text(
        &mut sql,
        " AND p.state = ?",
        &filter.state.map(|s| s.as_str().to_owned()),
    );
    // Both sides through the engine's own lower(), so that the match is the same on each side.
    text(
        &mut sql,
        " AND lower(COALESCE(p.last_error, '')) LIKE lower(?) ESCAPE '!'",
        &filter
            .error_contains
            .as_ref()
            .map(|s| format!("%{}%", like_escape(s))),
    );
    text(&mut sql, " AND COALESCE(p.cause, '') = ?", &filter.cause);
    let mut int = |sql: &mut String, clause: &str, value: Option<i64>| {
        if let Some(value) = value {
            sql.push_str(clause);
            args.push(Arg::Int(value));
        }
    };
    int(
        &mut sql,
        " AND p.admitted_at >= ?",
        filter.admitted_from.map(|t| t.timestamp_micros()),
    );
    int(
        &mut sql,
        " AND p.admitted_at < ?",
        filter.admitted_until.map(|t| t.timestamp_micros()),
    );
    int(&mut sql, " AND p.id > ?", filter.after_id);
    int(&mut sql, " AND p.id <= ?", filter.through_id);
    (sql, args)
}

/// A `LIKE` pattern matching `s` literally, with `!` as the escape character (the same on every
/// engine, unlike the backslash).
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// `(?, ?, …)` for `n` values (at least one, so that `IN ()` never appears).
pub(crate) fn placeholders(n: usize) -> String {
    let mut out = String::from("(?");
    for _ in 1..n.max(1) {
        out.push_str(", ?");
    }
    out.push(')');
    out
}

/// Reads column `i`, naming the column in the error.
fn col<'r, R, T>(row: &'r R, i: usize) -> Result<T, HospitalError>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(i).map_err(fault)
}

/// A patient (without its attempts) from a row of [`PATIENT_COLUMNS`].
pub(crate) fn decode_patient<R>(row: &R) -> Result<Patient, HospitalError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let message_id: String = col(row, 2)?;
    let headers: String = col(row, 5)?;
    let reason: String = col(row, 9)?;
    let state: String = col(row, 11)?;
    let settled_by: Option<String> = col(row, 13)?;
    let settled_at: Option<i64> = col(row, 14)?;
    let edited_by: Option<String> = col(row, 16)?;
    let edited_at: Option<i64> = col(row, 17)?;
    let original_body: Option<Vec<u8>> = col(row, 18)?;
    let claimed_by: Option<String> = col(row, 19)?;
    let claim_until: Option<i64> = col(row, 20)?;
    Ok(Patient {
        id: col(row, 0)?,
        group: col(row, 1)?,
        message_id: MessageId(
            Uuid::parse_str(&message_id)
                .map_err(|_| corrupt(format!("message id {message_id:?}")))?,
        ),
        topic: col(row, 3)?,
        key: col(row, 4)?,
        headers: decode_headers(&headers).map_err(|_| corrupt("headers".into()))?,
        body: col(row, 6)?,
        published_at: from_micros(col(row, 7)?),
        admitted_at: from_micros(col(row, 8)?),
        reason: AdmissionReason::parse(&reason)
            .ok_or_else(|| corrupt(format!("reason {reason:?}")))?,
        trace_id: col(row, 10)?,
        attempts: Vec::new(),
        state: PatientState::parse(&state).ok_or_else(|| corrupt(format!("state {state:?}")))?,
        cause: col(row, 12)?,
        settled: match (settled_by, settled_at) {
            (Some(by), Some(at)) => Some(Settlement {
                by,
                at: from_micros(at),
                note: col(row, 15)?,
            }),
            _ => None,
        },
        edited: match (edited_by, edited_at, original_body) {
            (Some(by), Some(at), Some(original_body)) => Some(Edit {
                by,
                at: from_micros(at),
                original_body,
            }),
            _ => None,
        },
        replay_claim: claimed_by.zip(claim_until.map(from_micros)),
    })
}

/// Attaches attempt rows (`patient_id, attempt, error, at`, any order) to their patients.
pub(crate) fn attach_attempts<R>(patients: &mut [Patient], rows: &[R]) -> Result<(), HospitalError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    for row in rows {
        let patient_id: i64 = col(row, 0)?;
        let attempt: i64 = col(row, 1)?;
        if let Some(patient) = patients.iter_mut().find(|p| p.id == patient_id) {
            patient.attempts.push(AttemptRecord {
                attempt: u32::try_from(attempt).unwrap_or(0),
                error: col(row, 2)?,
                at: from_micros(col(row, 3)?),
            });
        }
    }
    for patient in patients {
        patient.attempts.sort_by_key(|a| a.attempt);
    }
    Ok(())
}

/// A row of `grp, reason, cause, count, min(admitted_at), max(admitted_at), max(id)`.
pub(crate) fn decode_cause<R>(row: &R) -> Result<CauseCount, HospitalError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let reason: String = col(row, 1)?;
    Ok(CauseCount {
        group: col(row, 0)?,
        reason: AdmissionReason::parse(&reason)
            .ok_or_else(|| corrupt(format!("reason {reason:?}")))?,
        cause: col(row, 2)?,
        count: u64::try_from(col::<_, i64>(row, 3)?).unwrap_or(0),
        first_admitted: from_micros(col(row, 4)?),
        last_admitted: from_micros(col(row, 5)?),
        latest_id: col(row, 6)?,
    })
}

/// The audit columns every read selects, in the order [`decode_audit`] reads them.
pub(crate) const AUDIT_COLUMNS: &str = "a.id, a.at, a.actor, a.action, a.patient_ids, a.detail";

pub(crate) fn decode_audit<R>(row: &R) -> Result<AuditEntry, HospitalError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let ids: String = col(row, 4)?;
    Ok(AuditEntry {
        id: col(row, 0)?,
        at: from_micros(col(row, 1)?),
        actor: col(row, 2)?,
        action: col(row, 3)?,
        patient_ids: serde_json::from_str(&ids)
            .map_err(|_| corrupt(format!("audit patient ids {ids:?}")))?,
        detail: col(row, 5)?,
    })
}

/// The audit listing: entries before `cursor`, optionally about one patient, newest first.
pub(crate) fn audit_query(
    patient: Option<i64>,
    cursor: Option<i64>,
    limit: u32,
) -> (String, Vec<Arg>) {
    let mut args = Vec::new();
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM hospital_audit a");
    if let Some(patient) = patient {
        sql.push_str(
            " JOIN hospital_audit_patients ap ON ap.audit_id = a.id AND ap.patient_id = ?",
        );
        args.push(Arg::Int(patient));
    }
    sql.push_str(" WHERE 1 = 1");
    if let Some(cursor) = cursor {
        sql.push_str(" AND a.id < ?");
        args.push(Arg::Int(cursor));
    }
    sql.push_str(" ORDER BY a.id DESC LIMIT ?");
    args.push(Arg::Int(i64::from(limit.min(MAX_PAGE))));
    (sql, args)
}

/// The patients page statement for a query (one more row than the limit, to know whether more
/// follow).
pub(crate) fn find_query(query: &keel_domain::PatientQuery) -> (String, Vec<Arg>) {
    let (mut clause, mut args) = filter_clause(&query.filter);
    if let Some(cursor) = query.cursor {
        clause.push_str(if query.oldest_first {
            " AND p.id > ?"
        } else {
            " AND p.id < ?"
        });
        args.push(Arg::Int(cursor));
    }
    let order = if query.oldest_first { "ASC" } else { "DESC" };
    args.push(Arg::Int(i64::from(query.limit.min(MAX_PAGE)) + 1));
    (
        format!(
            "SELECT {PATIENT_COLUMNS} FROM hospital_patients p WHERE {clause} ORDER BY p.id {order} LIMIT ?"
        ),
        args,
    )
}

/// Cuts the extra row of a page and names the cursor that continues after it.
pub(crate) fn page(mut patients: Vec<Patient>, limit: u32) -> keel_domain::PatientPage {
    let limit = usize::try_from(limit.min(MAX_PAGE)).unwrap_or(usize::MAX);
    let more = patients.len() > limit;
    patients.truncate(limit);
    keel_domain::PatientPage {
        next_cursor: if more {
            patients.last().map(|p| p.id)
        } else {
            None
        },
        patients,
    }
}

/// The count-by-cause statement for a filter.
pub(crate) fn causes_query(filter: &PatientFilter) -> (String, Vec<Arg>) {
    let (clause, mut args) = filter_clause(filter);
    args.push(Arg::Int(i64::from(MAX_CAUSES)));
    (
        format!(
            "SELECT p.grp, p.reason, COALESCE(p.cause, ''), count(*), min(p.admitted_at), \
             max(p.admitted_at), max(p.id) FROM hospital_patients p WHERE {clause} \
             GROUP BY p.grp, p.reason, COALESCE(p.cause, '') ORDER BY count(*) DESC, max(p.id) DESC LIMIT ?"
        ),
        args,
    )
}

/// The attempts of a set of patients.
pub(crate) fn attempts_query(ids: &[i64]) -> (String, Vec<Arg>) {
    (
        format!(
            "SELECT patient_id, attempt, error, at FROM hospital_patient_attempts WHERE patient_id IN {}",
            placeholders(ids.len())
        ),
        ids.iter().map(|&id| Arg::Int(id)).collect(),
    )
}

/// Text of a body for the audit log: as is when it is UTF-8, else lossily with a flag.
fn body_json(body: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::json!({ "text": text, "bytes": body.len() }),
        Err(_) => serde_json::json!({
            "text": String::from_utf8_lossy(body),
            "bytes": body.len(),
            "lossy": true,
        }),
    }
}

pub(crate) fn edit_detail(before: &[u8], after: &[u8]) -> String {
    serde_json::json!({ "before": body_json(before), "after": body_json(after) }).to_string()
}

pub(crate) fn discard_detail(reason: &str) -> String {
    serde_json::json!({ "reason": reason }).to_string()
}

pub(crate) fn ids_json(ids: &[i64]) -> String {
    serde_json::to_string(ids).expect("integers serialize")
}

/// The cause and last error of a patient from its newest attempt's error, if any.
pub(crate) fn cause_and_error(last_error: Option<String>) -> (Option<String>, String) {
    let cause = last_error
        .as_deref()
        .map(keel_domain::hospital::cause_of)
        .unwrap_or_default();
    (last_error, cause)
}

/// Whether an admission of a message whose latest patient is in `state` (with a replay claim
/// until `claim_until`) is that same patient again: a redelivery after a crash between admission
/// and ack. A message that comes back after its patient was replayed (or while a replay holds
/// it) failed again: that is a new patient.
pub(crate) fn is_same_admission(state: &str, claim_until: Option<i64>, now: i64) -> bool {
    match PatientState::parse(state) {
        Some(PatientState::Discarded) => true,
        Some(PatientState::Waiting) => claim_until.is_none_or(|until| until <= now),
        _ => false,
    }
}

/// What a refused transition found: not there, settled, or held by a replay.
pub(crate) fn refused(
    patient: Option<Patient>,
    id: i64,
) -> Result<keel_domain::Transition, HospitalError> {
    let patient = patient.ok_or(HospitalError::NotFound(id))?;
    Ok(if patient.state == PatientState::Waiting {
        keel_domain::Transition::Busy(patient)
    } else {
        keel_domain::Transition::Settled(patient)
    })
}

/// The same for a refused replay claim.
pub(crate) fn refused_claim(
    patient: Option<Patient>,
    id: i64,
) -> Result<keel_domain::ReplayClaim, HospitalError> {
    Ok(match refused(patient, id)? {
        keel_domain::Transition::Busy(p) => keel_domain::ReplayClaim::Busy(p),
        keel_domain::Transition::Settled(p) | keel_domain::Transition::Done(p) => {
            keel_domain::ReplayClaim::Settled(p)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_their_text_literally() {
        assert_eq!(like_escape("50%_off!"), "50!%!_off!!");
    }

    #[test]
    fn a_filter_binds_one_value_per_condition_in_order() {
        let filter = PatientFilter {
            group: Some("g".into()),
            error_contains: Some("Time%out".into()),
            through_id: Some(9),
            ..PatientFilter::default()
        };
        let (sql, args) = filter_clause(&filter);
        assert_eq!(sql.matches('?').count(), args.len());
        assert!(matches!(&args[1], Arg::Text(t) if t == "%Time!%out%"));
        assert!(matches!(args[2], Arg::Int(9)));
    }
}
