//! The `IdentityStore` behavioural suite on SQLite, and the audit log's append-only guard.

use std::time::Duration;

use keel_sql_sqlite::{PoolSettings, SqliteStore};

async fn store(dir: &tempfile::TempDir) -> SqliteStore {
    let url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    let store = SqliteStore::connect(&url, &pool).await.unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn sqlite_store_passes_the_identity_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    keel_test_support::identity_suite::run_all(&store(&dir).await).await;
}

#[tokio::test]
async fn sqlite_identity_audit_rows_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
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
async fn sqlite_makes_an_account_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    keel_test_support::identity_suite::an_account_is_made_whole_or_not_at_all(&store).await;
}
