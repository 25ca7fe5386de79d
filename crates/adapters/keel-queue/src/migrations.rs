//! Where the SQL queues record their migrations: a table of their own, `_keel_queue_migrations`,
//! not sqlx's default `_sqlx_migrations`. The stores record theirs in the default table under the
//! same version numbers (1, 2, …), so a queue sharing keel's database with them (the PostgreSQL
//! queue at keel's own URL, or the hospital a RabbitMQ or NATS deployment keeps in keel's
//! database) failed at start: "migration 1 was previously applied but has been modified".
//!
//! A queue database migrated before this table existed has its migrations in `_sqlx_migrations`.
//! They are adopted first: copied when both version and checksum are the queue's, so a store's
//! migration of the same version is never mistaken for the queue's.

use keel_sql::EmbeddedMigration;
use sqlx::migrate::{Migrate, MigrateError};
use sqlx::{PgPool, SqlitePool};

/// The table in which the queue's migrations are recorded.
pub(crate) const TABLE: &str = "_keel_queue_migrations";

/// The table in which the queue recorded its migrations before it had its own.
const LEGACY_TABLE: &str = "_sqlx_migrations";

fn migrator(migrations: &[EmbeddedMigration]) -> sqlx::migrate::Migrator {
    let mut migrator = keel_sql::migrator(migrations);
    migrator.dangerous_set_table_name(TABLE);
    migrator
}

/// Adopts the queue's migrations recorded in the legacy table, then applies the rest.
pub(crate) async fn run_postgres(
    pool: &PgPool,
    migrations: &[EmbeddedMigration],
) -> Result<(), MigrateError> {
    let migrator = migrator(migrations);
    {
        let mut conn = pool.acquire().await?;
        // sqlx's migration lock (a session advisory lock per database): two processes starting
        // together must not both create the table (`IF NOT EXISTS` races in PostgreSQL).
        conn.lock().await?;
        let adopted = adopt_postgres(&mut conn, &migrator).await;
        conn.unlock().await?;
        adopted?;
    }
    migrator.run(pool).await
}

async fn adopt_postgres(
    conn: &mut sqlx::PgConnection,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), MigrateError> {
    conn.ensure_migrations_table(TABLE).await?;
    let legacy: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(LEGACY_TABLE)
        .fetch_one(&mut *conn)
        .await?;
    if !legacy {
        return Ok(());
    }
    for migration in migrator.iter() {
        // Both table names are constants above, never input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {TABLE} \
             (version, description, installed_on, success, checksum, execution_time) \
             SELECT version, description, installed_on, success, checksum, execution_time \
             FROM {LEGACY_TABLE} WHERE version = $1 AND checksum = $2 \
             ON CONFLICT (version) DO NOTHING"
        )))
        .bind(migration.version)
        .bind(&*migration.checksum)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Adopts the queue's migrations recorded in the legacy table, then applies the rest. (SQLite
/// takes no migration lock: its writers are serialized by the database itself.)
pub(crate) async fn run_sqlite(
    pool: &SqlitePool,
    migrations: &[EmbeddedMigration],
) -> Result<(), MigrateError> {
    let migrator = migrator(migrations);
    {
        let mut conn = pool.acquire().await?;
        conn.ensure_migrations_table(TABLE).await?;
        let legacy: bool = sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?",
        )
        .bind(LEGACY_TABLE)
        .fetch_one(&mut *conn)
        .await?;
        if legacy {
            for migration in migrator.iter() {
                // Both table names are constants above, never input.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT OR IGNORE INTO {TABLE} \
                     (version, description, installed_on, success, checksum, execution_time) \
                     SELECT version, description, installed_on, success, checksum, \
                     execution_time FROM {LEGACY_TABLE} WHERE version = ? AND checksum = ?"
                )))
                .bind(migration.version)
                .bind(&*migration.checksum)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    migrator.run(pool).await
}
