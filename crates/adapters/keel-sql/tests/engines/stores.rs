//! The store suites (`UserRepo`, `EventStore`, `IdentityStore`) on SQLite (a file in WAL mode,
//! as `keel up` uses) and on the real PostgreSQL and MariaDB servers, one test per behaviour per
//! engine, each in a fresh database; and each engine's append-only guard on the identity audit.

use std::time::Duration;

use keel_sql::PoolSettings;

fn pool() -> PoolSettings {
    PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    }
}

/// The identity audit log refuses changes at the engine, whatever statement a bug or a hand
/// edit runs.
async fn audit_rows_cannot_change<S, DB>(store: &S, pool: &sqlx::Pool<DB>)
where
    S: keel_domain::UserRepo + keel_domain::IdentityStore,
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    keel_test_support::identity_suite::the_audit_log_reads_newest_first_with_filters(store).await;
    for sql in [
        "UPDATE identity_audit SET actor = 'mallory'",
        "DELETE FROM identity_audit",
    ] {
        let Err(err) = sqlx::query(sql).execute(pool).await else {
            panic!("{sql} changed the audit log");
        };
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

/// Every store suite on the engine `open` (an async fn returning `(guard, store)` on a fresh,
/// migrated database), and its audit guard.
macro_rules! on_engine {
    ($open:path) => {
        mod repo {
            keel_test_support::repo_suite!($open);
        }
        mod events {
            keel_test_support::event_suite!($open);
        }
        mod identity {
            keel_test_support::identity_suite!($open);
        }

        #[tokio::test]
        async fn identity_audit_rows_cannot_change() {
            let (_guard, store) = $open().await;
            super::audit_rows_cannot_change(&store, store.pool()).await;
        }
    };
}

/// A fresh store migrated twice (the second run must change nothing).
async fn migrated<S>(
    store: S,
    migrate: impl AsyncFn(&S) -> Result<(), keel_domain::StoreError>,
) -> S {
    migrate(&store).await.unwrap();
    migrate(&store)
        .await
        .expect("migrating twice must be a no-op");
    store
}

mod sqlite {
    use keel_sql_sqlite::SqliteStore;

    pub(super) async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("keel.db").display());
        let store = SqliteStore::connect(&url, &super::pool()).await.unwrap();
        (dir, super::migrated(store, SqliteStore::migrate).await)
    }

    on_engine!(crate::stores::sqlite::open);
}

mod postgres {
    use keel_sql_postgres::PostgresStore;

    pub(super) async fn open() -> ((), PostgresStore) {
        let url = keel_test_support::services::create_postgres_database().await;
        let store = PostgresStore::connect_lazy(&url, &super::pool()).unwrap();
        ((), super::migrated(store, PostgresStore::migrate).await)
    }

    on_engine!(crate::stores::postgres::open);
}

mod mariadb {
    use keel_sql_mariadb::MariaDbStore;

    pub(super) async fn open() -> ((), MariaDbStore) {
        let url = keel_test_support::services::create_mariadb_database().await;
        let store = MariaDbStore::connect_lazy(&url, &super::pool()).unwrap();
        ((), super::migrated(store, MariaDbStore::migrate).await)
    }

    on_engine!(crate::stores::mariadb::open);
}
