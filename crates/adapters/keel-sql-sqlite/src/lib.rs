//! keel on SQLite: the embedded default database, a single file in WAL mode. Every statement keel
//! runs on SQLite is here or in keel-sql's shared code, through one [`SqliteDialect`]:
//!
//! - [`SqliteStore`]: `UserRepo`, `EventStore` and `IdentityStore` (every user write enqueues its
//!   event in the outbox in the same transaction), migrations under `migrations/store`;
//! - [`SqliteQueue`]: the embedded message queue (DESIGN.md C5's default), a table in its own
//!   SQLite file, migrations under `migrations/queue`;
//! - [`SqliteHospital`]: the error hospital beside the queue, migrations under
//!   `migrations/hospital`.

mod hospital;
mod queue;
mod queue_migrations;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use keel_domain::{StoreError, User, UserId};
use keel_sql::store::{self, SqlStore, Statement, StoreDialect, Updated};
use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteQueryResult, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};

pub use hospital::SqliteHospital;
pub use keel_sql::PoolSettings;
pub use keel_sql::queue::QueueLimits;
pub use queue::{SqliteQueue, SqliteSync};

/// Users, outbox, jobs and effects on SQLite. Open it with [`SqliteStore::connect`], which
/// creates the file if missing.
pub type SqliteStore = SqlStore<SqliteDialect>;

/// SQLite's [`StoreDialect`]: ids and times as text (RFC 3339 with microseconds, so that text
/// order is time order), the standard `ON CONFLICT` upsert.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteDialect;

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn map_err(e: sqlx::Error) -> StoreError {
    store::map_err::<SqliteDialect>(e)
}

impl keel_sql::Dialect for SqliteDialect {
    type Db = Sqlite;

    fn rows_affected(res: &SqliteQueryResult) -> u64 {
        res.rows_affected()
    }
}

#[async_trait]
impl StoreDialect for SqliteDialect {
    const MIGRATIONS: &'static [keel_sql::EmbeddedMigration] = &[
        (
            1,
            "users",
            include_str!("../migrations/store/0001_users.sql"),
        ),
        (
            2,
            "events",
            include_str!("../migrations/store/0002_events.sql"),
        ),
        (
            3,
            "identity",
            include_str!("../migrations/store/0003_identity.sql"),
        ),
        (4, "oidc", include_str!("../migrations/store/0004_oidc.sql")),
        (
            5,
            "federation",
            include_str!("../migrations/store/0005_federation.sql"),
        ),
        (
            6,
            "token generation",
            include_str!("../migrations/store/0006_token_generation.sql"),
        ),
        (
            7,
            "oidc consent",
            include_str!("../migrations/store/0007_oidc_consent.sql"),
        ),
    ];

    /// `url` is `sqlite://path` or `sqlite::memory:`; a missing file is created.
    ///
    /// WAL lets readers run beside the one writer; `synchronous = NORMAL` is WAL's recommended
    /// setting: a committed transaction survives a process crash (kill -9), and only an OS crash
    /// or power loss can roll back the last commits.
    fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
        Ok(SqliteConnectOptions::from_str(url)
            .map_err(keel_sql::internal)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true))
    }

    /// SQLite names the columns in the message: "UNIQUE constraint failed: users.email".
    fn is_email_key(db: &dyn DatabaseError) -> bool {
        db.message().contains("email")
    }

    fn bind_id(query: Statement<Sqlite>, id: UserId) -> Statement<Sqlite> {
        query.bind(id.to_string())
    }

    fn bind_time(query: Statement<Sqlite>, time: &DateTime<Utc>) -> Statement<Sqlite> {
        query.bind(ts(time))
    }

    fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
        let id: String = row.try_get("id").map_err(map_err)?;
        let created_at: String = row.try_get("created_at").map_err(map_err)?;
        let updated_at: String = row.try_get("updated_at").map_err(map_err)?;
        let parse_ts = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| keel_sql::corrupt("timestamp"))
        };
        store::user(
            id.parse().map_err(|_| keel_sql::corrupt("id"))?,
            row.try_get("name").map_err(map_err)?,
            row.try_get("email").map_err(map_err)?,
            (parse_ts(&created_at)?, parse_ts(&updated_at)?),
            row.try_get("version").map_err(map_err)?,
        )
    }

    async fn update_user(conn: &mut SqliteConnection, user: &User) -> Result<Updated, StoreError> {
        SqliteStore::update_then_look(conn, user).await
    }

    async fn upsert_user(
        conn: &mut SqliteConnection,
        user: &User,
    ) -> Result<Option<bool>, StoreError> {
        let existed = SqliteStore::user_exists(&mut *conn, user.id).await?;
        let res = sqlx::query(
            "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email, \
             updated_at = excluded.updated_at, version = excluded.version \
             WHERE users.version < excluded.version",
        )
        .bind(user.id.to_string())
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(ts(&user.created_at))
        .bind(ts(&user.updated_at))
        .bind(user.version)
        .execute(conn)
        .await
        .map_err(map_err)?;
        Ok((res.rows_affected() == 1).then_some(!existed))
    }

    async fn list_users(
        pool: &SqlitePool,
        after: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError> {
        let select = "SELECT id, name, email, created_at, updated_at, version FROM users";
        let rows = match after {
            Some(after) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{select} WHERE id > ? ORDER BY id LIMIT ?"
                )))
                .bind(after.to_string())
                .bind(limit)
                .fetch_all(pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{select} ORDER BY id LIMIT ?")))
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(map_err)?;
        rows.iter().map(Self::user_from_row).collect()
    }
}
