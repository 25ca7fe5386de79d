//! The hospital's dialect on SQLite, beside the embedded queue.

use sqlx::Sqlite;
use sqlx::sqlite::SqliteQueryResult;

use crate::hospital::{HospitalDialect, SqlHospital};

/// The hospital in the embedded queue's SQLite database.
pub type SqliteHospital = SqlHospital<SqliteDialect>;

/// SQLite's [`HospitalDialect`]: one writer at a time, so a write transaction that takes the
/// write lock at once serializes everything, admissions included, and no row lock is needed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteDialect;

impl HospitalDialect for SqliteDialect {
    type Db = Sqlite;

    /// Its first tables came with the queue's 0002.
    const MIGRATIONS: &'static [keel_sql::EmbeddedMigration] = &[(
        3,
        "hospital care",
        include_str!("../migrations/sqlite/0003_hospital_care.sql"),
    )];
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    const FOR_UPDATE: &'static str = "";
    const ON_ATTEMPT_CONFLICT: &'static str =
        "ON CONFLICT DO UPDATE SET error = excluded.error, at = excluded.at";
    const ON_NOTICE_CONFLICT: &'static str = "ON CONFLICT DO NOTHING";

    fn rows_affected(res: &SqliteQueryResult) -> u64 {
        res.rows_affected()
    }
}

impl SqliteHospital {
    /// A hospital in the same database as `queue`, holding at most `max_patients` waiting
    /// patients. Its own migrations run on first use.
    pub fn beside(queue: &crate::SqliteQueue, max_patients: u64) -> Self {
        Self::with_pool(queue.pool().clone(), max_patients)
    }
}
