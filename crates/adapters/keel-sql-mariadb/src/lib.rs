//! keel on MariaDB / MySQL. Every statement keel runs there is here or in keel-sql's shared code,
//! through one [`MariaDbDialect`]:
//!
//! - [`MariaDbStore`]: `UserRepo`, `EventStore` and `IdentityStore` (every user write enqueues
//!   its event in the outbox in the same transaction), migrations under `migrations/store`
//!   (sqlx takes a named lock, so concurrent instances are safe);
//! - [`MariaDbHospital`]: the error hospital in keel's database (MariaDB has no queue here: the
//!   broker is RabbitMQ, NATS or another database), migrations under `migrations/hospital`.

mod hospital;

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use keel_domain::{StoreError, User, UserId};
use keel_sql::store::{self, SqlStore, Statement, StoreDialect, Updated};
use sqlx::error::DatabaseError;
use sqlx::mysql::{MySqlConnectOptions, MySqlQueryResult, MySqlRow};
use sqlx::{MySql, MySqlConnection, MySqlPool, Row};

pub use hospital::{MariaDbHospital, connect_hospital};
pub use keel_sql::PoolSettings;

/// Users, outbox, jobs and effects on MariaDB or MySQL. Open it with
/// [`MariaDbStore::connect_lazy`].
pub type MariaDbStore = SqlStore<MariaDbDialect>;

/// MariaDB's [`StoreDialect`]: ids as text, times as `DATETIME(6)` in UTC, no `ON CONFLICT`
/// (`INSERT IGNORE`, and an upsert built from a guarded update and an insert).
#[derive(Debug, Clone, Copy, Default)]
pub struct MariaDbDialect;

fn map_err(e: sqlx::Error) -> StoreError {
    store::map_err::<MariaDbDialect>(e)
}

impl keel_sql::Dialect for MariaDbDialect {
    type Db = MySql;

    fn rows_affected(res: &MySqlQueryResult) -> u64 {
        res.rows_affected()
    }
}

#[async_trait]
impl StoreDialect for MariaDbDialect {
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
            "sealed names",
            include_str!("../migrations/store/0006_sealed_names.sql"),
        ),
        (
            7,
            "token generation",
            include_str!("../migrations/store/0007_token_generation.sql"),
        ),
        (
            8,
            "oidc consent",
            include_str!("../migrations/store/0008_oidc_consent.sql"),
        ),
    ];

    fn connect_options(url: &str) -> Result<MySqlConnectOptions, StoreError> {
        MySqlConnectOptions::from_str(url).map_err(keel_sql::internal)
    }

    /// MariaDB names the key only in the message: "Duplicate entry .. for key 'users_email_key'".
    fn is_email_key(db: &dyn DatabaseError) -> bool {
        db.message().contains("users_email_key")
    }

    fn insert_once(rest: &str) -> String {
        format!("INSERT IGNORE INTO {rest}")
    }

    fn bind_id(query: Statement<MySql>, id: UserId) -> Statement<MySql> {
        query.bind(id.to_string())
    }

    fn bind_time(query: Statement<MySql>, time: &DateTime<Utc>) -> Statement<MySql> {
        query.bind(time.naive_utc())
    }

    fn user_from_row(row: &MySqlRow) -> Result<User, StoreError> {
        let id: String = row.try_get("id").map_err(map_err)?;
        let created_at: NaiveDateTime = row.try_get("created_at").map_err(map_err)?;
        let updated_at: NaiveDateTime = row.try_get("updated_at").map_err(map_err)?;
        store::user(
            id.parse().map_err(|_| keel_sql::corrupt("id"))?,
            row.try_get("name").map_err(map_err)?,
            row.try_get("email").map_err(map_err)?,
            (created_at.and_utc(), updated_at.and_utc()),
            row.try_get("version").map_err(map_err)?,
        )
    }

    async fn update_user(conn: &mut MySqlConnection, user: &User) -> Result<Updated, StoreError> {
        MariaDbStore::update_then_look(conn, user).await
    }

    /// MariaDB's `ON DUPLICATE KEY UPDATE` would fire on the email key too and overwrite
    /// *another* user's row, so this is an update guarded by version, then an insert only when
    /// no row has this id.
    async fn upsert_user(
        conn: &mut MySqlConnection,
        user: &User,
    ) -> Result<Option<bool>, StoreError> {
        if MariaDbStore::update_row(&mut *conn, user).await? == 1 {
            return Ok(Some(false));
        }
        if MariaDbStore::user_exists(&mut *conn, user.id).await? {
            return Ok(None);
        }
        MariaDbStore::insert_user(conn, user).await?;
        Ok(Some(true))
    }

    async fn list_users(
        pool: &MySqlPool,
        after: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError> {
        // The nil UUID sorts before every generated id, so it stands for "from the start".
        let after = after
            .map(|id| id.to_string())
            .unwrap_or_else(|| uuid::Uuid::nil().to_string());
        let rows = sqlx::query(
            "SELECT id, name, email, created_at, updated_at, version FROM users \
             WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(Self::user_from_row).collect()
    }
}
