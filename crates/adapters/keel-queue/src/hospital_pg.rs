//! The hospital's dialect on PostgreSQL, beside the queue there.

use sqlx::Postgres;
use sqlx::postgres::PgQueryResult;

use crate::hospital::{HospitalDialect, SqlHospital};
use keel_sql::numbered;

/// The hospital in the PostgreSQL database of the queue.
pub type PostgresHospital = SqlHospital<PostgresDialect>;

/// PostgreSQL's [`HospitalDialect`]: the standard SQL of the defaults, with numbered
/// placeholders and admissions serialized by a table lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresDialect;

impl HospitalDialect for PostgresDialect {
    type Db = Postgres;

    /// Its first tables came with the queue's 0002.
    const MIGRATIONS: &'static [keel_sql::EmbeddedMigration] = &[(
        3,
        "hospital care",
        include_str!("../migrations/postgres/0003_hospital_care.sql"),
    )];
    /// `SHARE ROW EXCLUSIVE` conflicts with itself and with every write, but not with reads.
    const LOCK_ADMISSIONS: Option<&'static str> =
        Some("LOCK TABLE hospital_patients IN SHARE ROW EXCLUSIVE MODE");

    fn sql(sql: &str) -> String {
        numbered(sql)
    }

    fn rows_affected(res: &PgQueryResult) -> u64 {
        res.rows_affected()
    }
}

impl PostgresHospital {
    /// A hospital in the same database as `queue`, holding at most `max_patients` waiting
    /// patients. Its own migrations run on first use.
    pub fn beside(queue: &crate::PostgresQueue, max_patients: u64) -> Self {
        Self::with_pool(queue.pool().clone(), max_patients)
    }
}
