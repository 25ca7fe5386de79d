//! The SQLite queue's migrations, recorded in their own table (`keel_sql::queue_migrations`),
//! adopting those recorded in the legacy table.

use keel_sql::EmbeddedMigration;
use keel_sql::queue_migrations::{LEGACY_TABLE, TABLE, migrator};
use sqlx::SqlitePool;
use sqlx::migrate::{Migrate, MigrateError};

/// Adopts the queue's migrations recorded in the legacy table, then applies the rest. (SQLite
/// takes no migration lock: its writers are serialized by the database itself.)
pub(crate) async fn run(
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
