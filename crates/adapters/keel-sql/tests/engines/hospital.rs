//! The `Hospital` behavioural suite on SQLite, and on the real PostgreSQL and MariaDB servers,
//! one test per behaviour per engine; and the audit log's append-only guard on each.

use std::sync::Arc;

use keel_domain::Hospital;
use keel_sql::PoolSettings;
use keel_sql_postgres::PostgresQueue;
use keel_sql_sqlite::{QueueLimits, SqliteQueue};
use keel_test_support::hospital_suite::{SUITE_MAX_PATIENTS, Subject, cases};
use sqlx::Connection;

async fn sqlite_queue(dir: &tempfile::TempDir) -> (String, SqliteQueue) {
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queue = SqliteQueue::open(&url, QueueLimits::default())
        .await
        .unwrap();
    (url, queue)
}

/// Tries to change, then delete, an audit row through `conn`: both must be refused.
async fn audit_rows_cannot_change<C>(conn: &mut C)
where
    for<'c> &'c mut C: sqlx::Executor<'c>,
{
    let changed = sqlx::raw_sql("UPDATE hospital_audit SET actor = 'mallory'")
        .execute(&mut *conn)
        .await;
    assert!(changed.is_err(), "an audit row was changed");
    let deleted = sqlx::raw_sql("DELETE FROM hospital_audit")
        .execute(&mut *conn)
        .await;
    assert!(deleted.is_err(), "an audit row was deleted");
}

/// The suite on the engine `open` (an async fn returning `((guard, url), subject)`), and the
/// audit log's guard on that engine, checked through a `$conn` to `url`.
macro_rules! on_engine {
    ($open:path, $conn:ty) => {
        keel_test_support::hospital_suite!($open);

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn audit_rows_cannot_change() {
            let ((_guard, url), subject) = $open().await;
            cases::the_audit_log_records_every_action(&subject).await;
            crate::hospital::audit_rows_cannot_change(&mut <$conn>::connect(&url).await.unwrap())
                .await;
        }
    };
}

mod sqlite {
    use super::*;

    pub(super) async fn open() -> ((tempfile::TempDir, String), Subject) {
        let dir = tempfile::tempdir().unwrap();
        let (url, queue) = sqlite_queue(&dir).await;
        let queue = Arc::new(queue);
        let hospital = Arc::new(queue.hospital(SUITE_MAX_PATIENTS));
        let subject = Subject {
            broker: queue,
            hospital,
        };
        ((dir, url), subject)
    }

    on_engine!(crate::hospital::sqlite::open, sqlx::SqliteConnection);
}

mod postgres {
    use super::*;

    pub(super) async fn open() -> (((), String), Subject) {
        let url = keel_test_support::services::create_postgres_database().await;
        let queue = Arc::new(
            PostgresQueue::open(&url, QueueLimits::default())
                .await
                .unwrap(),
        );
        let hospital = Arc::new(queue.hospital(SUITE_MAX_PATIENTS));
        let subject = Subject {
            broker: queue,
            hospital,
        };
        (((), url), subject)
    }

    on_engine!(crate::hospital::postgres::open, sqlx::PgConnection);
}

/// MariaDB has no queue here: an SQLite queue makes the deliveries, the hospital is MariaDB's.
mod mariadb {
    use super::*;

    pub(super) async fn open() -> ((tempfile::TempDir, String), Subject) {
        let url = keel_test_support::services::create_mariadb_database().await;
        let dir = tempfile::tempdir().unwrap();
        let (_, queue) = sqlite_queue(&dir).await;
        let pool = PoolSettings {
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(5),
        };
        let hospital =
            Arc::new(keel_sql_mariadb::connect_hospital(&url, &pool, SUITE_MAX_PATIENTS).unwrap());
        let subject = Subject {
            broker: Arc::new(queue),
            hospital,
        };
        ((dir, url), subject)
    }

    on_engine!(crate::hospital::mariadb::open, sqlx::MySqlConnection);
}

/// A hospital opened on a database whose patients were admitted before the care tables existed
/// (the queue's 0002 schema) keeps them, with their attempts, as waiting patients with a cause.
#[tokio::test]
async fn patients_admitted_before_the_care_migration_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (url, queue) = sqlite_queue(&dir).await;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO hospital_patients (grp, message_id, topic, msg_key, headers, body, published_at, admitted_at, reason, trace_id) \
         VALUES ('g', '0190b4d3-7c2e-7a3f-8e1d-9f00a1b2c3d4', 't', NULL, '{}', x'6869', 1, 2, 'permanent', NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO hospital_attempts (grp, message_id, attempt, error, at) \
         VALUES ('g', '0190b4d3-7c2e-7a3f-8e1d-9f00a1b2c3d4', 1, 'row 12 gone', 3)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let hospital = queue.hospital(10);
    let patients = hospital.list(10).await.unwrap();
    assert_eq!(patients.len(), 1);
    let p = &patients[0];
    assert_eq!(p.state, keel_domain::PatientState::Waiting);
    assert_eq!(p.body, b"hi");
    assert_eq!(p.last_error(), Some("row 12 gone"));
    assert_eq!(p.cause, "row <n> gone");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM hospital_attempts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the admitted patient's attempts moved to it");
}
