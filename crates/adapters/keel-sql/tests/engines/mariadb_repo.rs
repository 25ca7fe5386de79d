//! The `UserRepo` behavioural suite on the real MariaDB server, in a fresh database.

use std::time::Duration;

use keel_sql_mariadb::{MariaDbStore, PoolSettings};

#[tokio::test]
async fn mariadb_store_passes_the_user_repo_suite() {
    let url = keel_test_support::services::create_mariadb_database().await;
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = MariaDbStore::connect_lazy(&url, &pool).unwrap();
    store.migrate().await.unwrap();
    store
        .migrate()
        .await
        .expect("migrating twice must be a no-op");
    keel_test_support::repo_suite::run_all(&store).await;
}

#[tokio::test]
async fn mariadb_store_passes_the_event_store_suite() {
    let url = keel_test_support::services::create_mariadb_database().await;
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = MariaDbStore::connect_lazy(&url, &pool).unwrap();
    store.migrate().await.unwrap();
    keel_test_support::event_suite::run_all(&store).await;
}
