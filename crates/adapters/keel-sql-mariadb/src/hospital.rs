//! The hospital's dialect on MariaDB / MySQL: for a keel whose database is MariaDB, which has no
//! queue of its own here (the broker is RabbitMQ, NATS or another database), the hospital still
//! lives in keel's database, beside the stores' tables.

use std::str::FromStr;

use keel_domain::HospitalError;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlQueryResult};

use keel_sql::hospital::{HospitalDialect, SqlHospital};

use crate::MariaDbDialect;
use keel_sql::hospital::fault;

/// The hospital in a MariaDB or MySQL database.
pub type MariaDbHospital = SqlHospital<MariaDbDialect>;

impl HospitalDialect for MariaDbDialect {
    /// The whole schema: there is no queue migration here.
    const HOSPITAL_MIGRATIONS: &'static [keel_sql::EmbeddedMigration] = &[(
        1,
        "hospital",
        include_str!("../migrations/hospital/0001_hospital.sql"),
    )];
    /// InnoDB locks the one row of `hospital_admission_lock` until the admission commits.
    const LOCK_ADMISSIONS: Option<&'static str> =
        Some("SELECT id FROM hospital_admission_lock WHERE id = 1 FOR UPDATE");
    const RETURNING: bool = false;
    const ON_ATTEMPT_CONFLICT: &'static str =
        "ON DUPLICATE KEY UPDATE error = VALUES(error), at = VALUES(at)";
    const ON_PATIENT_ATTEMPT_CONFLICT: &'static str =
        "ON DUPLICATE KEY UPDATE error = VALUES(error), at = VALUES(at)";
    /// A no-op update: `INSERT IGNORE` would also swallow errors other than the duplicate.
    const ON_NOTICE_CONFLICT: &'static str = "ON DUPLICATE KEY UPDATE pos = pos";

    fn last_insert_id(res: &MySqlQueryResult) -> Option<u64> {
        Some(res.last_insert_id())
    }
}

/// A hospital in the database at `url` (`mysql://…`), holding at most `max_patients` waiting
/// patients. Connects lazily (on first use, when its migrations also run), so that keel
/// starts while the database is still coming up.
pub fn connect_hospital(
    url: &str,
    pool: &keel_sql::PoolSettings,
    max_patients: u64,
) -> Result<MariaDbHospital, HospitalError> {
    let options = MySqlConnectOptions::from_str(url).map_err(fault)?;
    let pool = MySqlPoolOptions::new()
        .max_connections(pool.max_connections.max(1))
        .acquire_timeout(pool.acquire_timeout)
        .connect_lazy_with(options);
    Ok(MariaDbHospital::with_pool(pool, max_patients))
}
