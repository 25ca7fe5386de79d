//! The `Broker` behavioural suite on the embedded queue: SQLite, and the real PostgreSQL server.

use std::sync::Arc;

use keel_queue::{PostgresQueue, QueueLimits, SqliteQueue};
use keel_test_support::broker_suite::{self, SUITE_MAX_BODY, SUITE_MAX_DEPTH};

fn limits() -> QueueLimits {
    QueueLimits {
        max_depth: SUITE_MAX_DEPTH,
        max_body_bytes: SUITE_MAX_BODY,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_passes_the_broker_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queue = SqliteQueue::open(&url, limits()).await.unwrap();
    broker_suite::run_all(Arc::new(queue)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_passes_the_broker_suite() {
    let url = keel_test_support::services::create_postgres_database().await;
    let queue = PostgresQueue::open(&url, limits()).await.unwrap();
    broker_suite::run_all(Arc::new(queue)).await;
}
