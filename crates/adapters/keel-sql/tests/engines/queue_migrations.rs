//! The SQL queues' migrations on SQLite and the real PostgreSQL server: a queue opens in a
//! database whose stores recorded their own migrations under the same version numbers (keel's
//! database), and a queue database migrated when the queue still recorded its migrations in
//! sqlx's default table is adopted, not migrated a second time.

use std::time::Duration;

use keel_domain::{Broker, Outgoing};
use keel_sql::EmbeddedMigration;
use keel_sql_postgres::PostgresQueue;
use keel_sql_sqlite::{QueueLimits, SqliteQueue};

/// Another component's migrations under the queue's version numbers, with other contents: what
/// keel's stores record in `_sqlx_migrations`.
const STORE_LIKE: &[EmbeddedMigration] = &[
    (1, "users", "CREATE TABLE store_users (id BIGINT);"),
    (2, "events", "CREATE TABLE store_outbox (id BIGINT);"),
    (4, "more", "CREATE TABLE store_more (id BIGINT);"),
];

/// The queue's migrations as they were recorded before the queue had a table of its own.
const POSTGRES_QUEUE: &[EmbeddedMigration] = &[
    (
        1,
        "queue",
        include_str!("../../../keel-sql-postgres/migrations/queue/0001_queue.sql"),
    ),
    (
        2,
        "hospital",
        include_str!("../../../keel-sql-postgres/migrations/queue/0002_hospital.sql"),
    ),
    (
        4,
        "queue claim order",
        include_str!("../../../keel-sql-postgres/migrations/queue/0004_queue_claim_order.sql"),
    ),
];

const SQLITE_QUEUE: &[EmbeddedMigration] = &[
    (
        1,
        "queue",
        include_str!("../../../keel-sql-sqlite/migrations/queue/0001_queue.sql"),
    ),
    (
        2,
        "hospital",
        include_str!("../../../keel-sql-sqlite/migrations/queue/0002_hospital.sql"),
    ),
    (
        4,
        "queue claim order",
        include_str!("../../../keel-sql-sqlite/migrations/queue/0004_queue_claim_order.sql"),
    ),
];

/// A message published on `queue` comes back from it.
async fn works(queue: &dyn Broker) {
    queue.bind("g", "t.#").await.unwrap();
    let sent = Outgoing::new(b"hello".to_vec());
    assert!(queue.publish("t.x", sent.clone()).await.unwrap());
    let got = queue.fetch("g", 10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, sent.id);
}

async fn sqlite_pool(dir: &tempfile::TempDir) -> (String, sqlx::SqlitePool) {
    let url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
        .unwrap()
        .create_if_missing(true);
    (url, sqlx::SqlitePool::connect_with(options).await.unwrap())
}

#[tokio::test]
async fn a_sqlite_queue_opens_in_a_database_whose_stores_recorded_the_same_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pool) = sqlite_pool(&dir).await;
    keel_sql::migrator(STORE_LIKE).run(&pool).await.unwrap();
    let queue = SqliteQueue::open(&url, QueueLimits::default())
        .await
        .expect("the queue opens beside the stores");
    works(&queue).await;
    // Both open again, as every restart does.
    keel_sql::migrator(STORE_LIKE).run(&pool).await.unwrap();
    SqliteQueue::open(&url, QueueLimits::default())
        .await
        .expect("the queue opens again");
}

#[tokio::test]
async fn a_postgres_queue_opens_in_a_database_whose_stores_recorded_the_same_versions() {
    let url = keel_test_support::services::create_postgres_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    keel_sql::migrator(STORE_LIKE).run(&pool).await.unwrap();
    let queue = PostgresQueue::open(&url, QueueLimits::default())
        .await
        .expect("the queue opens beside the stores");
    works(&queue).await;
    keel_sql::migrator(STORE_LIKE).run(&pool).await.unwrap();
    PostgresQueue::open(&url, QueueLimits::default())
        .await
        .expect("the queue opens again");
}

#[tokio::test]
async fn a_sqlite_queue_migrated_in_the_default_table_is_adopted_not_migrated_again() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pool) = sqlite_pool(&dir).await;
    keel_sql::migrator(SQLITE_QUEUE).run(&pool).await.unwrap();
    // Running 0001 again would fail: its tables exist.
    let queue = SqliteQueue::open(&url, QueueLimits::default())
        .await
        .expect("the queue adopts its recorded migrations");
    works(&queue).await;
    let adopted: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _keel_queue_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(adopted, [1, 2, 4]);
}

#[tokio::test]
async fn a_postgres_queue_migrated_in_the_default_table_is_adopted_not_migrated_again() {
    let url = keel_test_support::services::create_postgres_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    keel_sql::migrator(POSTGRES_QUEUE).run(&pool).await.unwrap();
    let queue = PostgresQueue::open(&url, QueueLimits::default())
        .await
        .expect("the queue adopts its recorded migrations");
    works(&queue).await;
    let adopted: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _keel_queue_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    // 1, 2 and 4 adopted; 5 (ack counters), 6 (vacuum settings) and 7 (floors) applied after.
    assert_eq!(adopted, [1, 2, 4, 5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queues_opening_together_on_a_fresh_database_all_succeed() {
    let url = keel_test_support::services::create_postgres_database().await;
    let opened = open_together(&url).await;
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
}

/// Four queues opened at once, as four processes starting together.
async fn open_together(url: &str) -> Vec<Result<(), String>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.to_owned();
        tasks.spawn(async move {
            PostgresQueue::open(&url, QueueLimits::default())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn the_postgres_queue_table_vacuums_early() {
    let url = keel_test_support::services::create_postgres_database().await;
    PostgresQueue::open(&url, QueueLimits::default())
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE relname = 'queue_messages'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for option in [
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_threshold=5000",
        "autovacuum_vacuum_cost_delay=0",
    ] {
        assert!(
            options.iter().any(|o| o == option),
            "{option} in {options:?}"
        );
    }
}
