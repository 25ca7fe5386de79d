//! The PostgreSQL queue's migrations, recorded in their own table
//! (`keel_sql::queue_migrations`), adopting those recorded in the legacy table.

use keel_sql::EmbeddedMigration;
use keel_sql::queue_migrations::{LEGACY_TABLE, TABLE, migrator};
use sqlx::PgPool;
use sqlx::migrate::{Migrate, MigrateError};

/// Adopts the queue's migrations recorded in the legacy table, then applies the rest.
pub(crate) async fn run(
    pool: &PgPool,
    migrations: &[EmbeddedMigration],
) -> Result<(), MigrateError> {
    let migrator = migrator(migrations);
    {
        let mut conn = pool.acquire().await?;
        // sqlx's migration lock (a session advisory lock per database): two processes starting
        // together must not both create the table (`IF NOT EXISTS` races in PostgreSQL).
        conn.lock().await?;
        let adopted = adopt(&mut conn, &migrator).await;
        conn.unlock().await?;
        adopted?;
    }
    migrator.run(pool).await
}

async fn adopt(
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
