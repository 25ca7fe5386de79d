//! The hospital's dialect on PostgreSQL, beside the queue there.

use keel_sql::hospital::{HospitalDialect, SqlHospital};

use crate::PostgresDialect;

/// The hospital in the PostgreSQL database of the queue.
pub type PostgresHospital = SqlHospital<PostgresDialect>;

impl HospitalDialect for PostgresDialect {
    /// Its first tables came with the queue's 0002.
    const HOSPITAL_MIGRATIONS: &'static [keel_sql::EmbeddedMigration] = &[(
        3,
        "hospital care",
        include_str!("../migrations/hospital/0003_hospital_care.sql"),
    )];
    /// `SHARE ROW EXCLUSIVE` conflicts with itself and with every write, but not with reads.
    const LOCK_ADMISSIONS: Option<&'static str> =
        Some("LOCK TABLE hospital_patients IN SHARE ROW EXCLUSIVE MODE");
}

impl crate::PostgresQueue {
    /// The error hospital in this queue's database, holding at most `max_patients` waiting
    /// patients. Its own migrations run on first use.
    pub fn hospital(&self, max_patients: u64) -> PostgresHospital {
        PostgresHospital::with_pool(self.pool().clone(), max_patients)
    }
}
