//! The `UserRepo` behavioural suite on SQLite, on a file in WAL mode like `keel up` uses.

use std::time::Duration;

use keel_sql_sqlite::{PoolSettings, SqliteStore};

#[tokio::test]
async fn sqlite_store_passes_the_user_repo_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = SqliteStore::connect(&url, &pool).await.unwrap();
    store.migrate().await.unwrap();
    store
        .migrate()
        .await
        .expect("migrating twice must be a no-op");
    keel_test_support::repo_suite::run_all(&store).await;
}

#[tokio::test]
async fn sqlite_store_passes_the_event_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = SqliteStore::connect(&url, &pool).await.unwrap();
    store.migrate().await.unwrap();
    keel_test_support::event_suite::run_all(&store).await;
}
