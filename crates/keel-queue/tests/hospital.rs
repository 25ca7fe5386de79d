//! The `Hospital` behavioural suite on SQLite and on the real PostgreSQL server.

use std::sync::Arc;

use keel_queue::{PostgresHospital, PostgresQueue, QueueLimits, SqliteHospital, SqliteQueue};
use keel_test_support::hospital_suite::{self, SUITE_MAX_PATIENTS};

#[tokio::test]
async fn sqlite_hospital_passes_the_hospital_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queue = Arc::new(
        SqliteQueue::open(&url, QueueLimits::default())
            .await
            .unwrap(),
    );
    let hospital = Arc::new(SqliteHospital::beside(&queue, SUITE_MAX_PATIENTS));
    hospital_suite::run_all(queue, hospital).await;
}

#[tokio::test]
async fn postgres_hospital_passes_the_hospital_suite() {
    let url = keel_test_support::services::create_postgres_database().await;
    let queue = Arc::new(
        PostgresQueue::open(&url, QueueLimits::default())
            .await
            .unwrap(),
    );
    let hospital = Arc::new(PostgresHospital::beside(&queue, SUITE_MAX_PATIENTS));
    hospital_suite::run_all(queue, hospital).await;
}
