//! Where the SQL queues record their migrations: a table of their own, `_keel_queue_migrations`,
//! not sqlx's default `_sqlx_migrations`. The stores record theirs in the default table under the
//! same version numbers (1, 2, …), so a queue sharing keel's database with them (the PostgreSQL
//! queue at keel's own URL, or the hospital a RabbitMQ or NATS deployment keeps in keel's
//! database) failed at start: "migration 1 was previously applied but has been modified".
//!
//! A queue database migrated before this table existed has its migrations in `_sqlx_migrations`.
//! They are adopted first: copied when both version and checksum are the queue's, so a store's
//! migration of the same version is never mistaken for the queue's. The adoption is each
//! engine's (`run` in keel-sql-sqlite's and keel-sql-postgres's `queue::migrations`).

use crate::EmbeddedMigration;

/// The table in which the queue's migrations are recorded.
pub const TABLE: &str = "_keel_queue_migrations";

/// The table in which the queue recorded its migrations before it had its own.
pub const LEGACY_TABLE: &str = "_sqlx_migrations";

pub fn migrator(migrations: &[EmbeddedMigration]) -> sqlx::migrate::Migrator {
    let mut migrator = crate::migrator(migrations);
    migrator.dangerous_set_table_name(TABLE);
    migrator
}
