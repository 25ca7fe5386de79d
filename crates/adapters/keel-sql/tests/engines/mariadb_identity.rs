//! The `IdentityStore` behavioural suite on the real MariaDB server, and the audit log's
//! append-only guard.

use std::time::Duration;

use keel_sql_mariadb::{MariaDbStore, PoolSettings};

async fn store() -> MariaDbStore {
    let url = keel_test_support::services::create_mariadb_database().await;
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = MariaDbStore::connect_lazy(&url, &pool).unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn mariadb_store_passes_the_identity_store_suite() {
    keel_test_support::identity_suite::run_all(&store().await).await;
}

#[tokio::test]
async fn mariadb_identity_audit_rows_cannot_change() {
    let store = store().await;
    keel_test_support::identity_suite::the_audit_log_reads_newest_first_with_filters(&store).await;
    for sql in [
        "UPDATE identity_audit SET actor = 'mallory'",
        "DELETE FROM identity_audit",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn mariadb_makes_an_account_whole_or_not_at_all() {
    let store = store().await;
    keel_test_support::identity_suite::an_account_is_made_whole_or_not_at_all(&store).await;
}
