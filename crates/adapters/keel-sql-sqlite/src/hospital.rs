//! The hospital's dialect on SQLite, beside the embedded queue.

use keel_sql::hospital::{HospitalDialect, SqlHospital};

use crate::SqliteDialect;

/// The hospital in the embedded queue's SQLite database.
pub type SqliteHospital = SqlHospital<SqliteDialect>;

impl HospitalDialect for SqliteDialect {
    /// Its first tables came with the queue's 0002.
    const HOSPITAL_MIGRATIONS: &'static [keel_sql::EmbeddedMigration] = &[(
        3,
        "hospital care",
        include_str!("../migrations/hospital/0003_hospital_care.sql"),
    )];
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    const FOR_UPDATE: &'static str = "";
    const ON_ATTEMPT_CONFLICT: &'static str =
        "ON CONFLICT DO UPDATE SET error = excluded.error, at = excluded.at";
    const ON_NOTICE_CONFLICT: &'static str = "ON CONFLICT DO NOTHING";
}

impl crate::SqliteQueue {
    /// The error hospital in this queue's database, holding at most `max_patients` waiting
    /// patients. Its own migrations run on first use.
    pub fn hospital(&self, max_patients: u64) -> SqliteHospital {
        SqliteHospital::with_pool(self.pool().clone(), max_patients)
    }
}
