//! The `UserRepo` behavioural suite on the real PostgreSQL server, in a fresh database.

use std::time::Duration;

use keel_store_postgres::{PoolSettings, PostgresStore};
use keel_test_support::services::{fresh_database_name, postgres_server_url};
use sqlx::Connection;

#[tokio::test]
async fn postgres_store_passes_the_user_repo_suite() {
    let name = fresh_database_name();
    let server = postgres_server_url();
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();

    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = PostgresStore::connect_lazy(&format!("{server}/{name}"), &pool).unwrap();
    store.migrate().await.unwrap();
    store
        .migrate()
        .await
        .expect("migrating twice must be a no-op");
    keel_test_support::repo_suite::run_all(&store).await;

    store.pool().close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
}
