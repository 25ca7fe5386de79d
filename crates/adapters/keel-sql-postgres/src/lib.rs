//! keel on PostgreSQL. Every statement keel runs on PostgreSQL is here or in keel-sql's shared
//! code, through one [`PostgresDialect`]:
//!
//! - [`PostgresStore`]: `UserRepo`, `EventStore` and `IdentityStore` (every user write enqueues
//!   its event in the outbox in the same transaction), migrations under `migrations/store`
//!   (sqlx takes an advisory lock, so concurrent instances are safe);
//! - [`PostgresQueue`]: the message queue, competing workers claiming rows with
//!   `FOR UPDATE SKIP LOCKED`, migrations under `migrations/queue`;
//! - [`PostgresHospital`]: the error hospital beside the queue, migrations under
//!   `migrations/hospital`.

mod hospital;
mod queue;
mod queue_migrations;

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keel_domain::{StoreError, User, UserId};
use keel_sql::store::{self, SqlStore, Statement, StoreDialect, Updated};
use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgQueryResult, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row};

pub use hospital::PostgresHospital;
pub use keel_sql::PoolSettings;
pub use keel_sql::queue::QueueLimits;
pub use queue::PostgresQueue;

/// Users, outbox, jobs and effects on PostgreSQL. Open it with [`PostgresStore::connect_lazy`].
pub type PostgresStore = SqlStore<PostgresDialect>;

/// PostgreSQL's [`StoreDialect`]: numbered placeholders, ids as `uuid`, times as `timestamptz`,
/// and statements that tell in one round trip what the other engines ask in two.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresDialect;

fn map_err(e: sqlx::Error) -> StoreError {
    store::map_err::<PostgresDialect>(e)
}

impl keel_sql::Dialect for PostgresDialect {
    type Db = Postgres;

    fn sql(sql: &str) -> String {
        keel_sql::numbered(sql)
    }

    fn rows_affected(res: &PgQueryResult) -> u64 {
        res.rows_affected()
    }
}

#[async_trait]
impl StoreDialect for PostgresDialect {
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

    fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
        Ok(PgConnectOptions::from_str(url)
            .map_err(keel_sql::internal)?
            .application_name("keel"))
    }

    /// PostgreSQL reports the constraint by name.
    fn is_email_key(db: &dyn DatabaseError) -> bool {
        db.constraint() == Some("users_email_key")
    }

    fn bind_id(query: Statement<Postgres>, id: UserId) -> Statement<Postgres> {
        query.bind(*id.as_uuid())
    }

    fn bind_time(query: Statement<Postgres>, time: &DateTime<Utc>) -> Statement<Postgres> {
        query.bind(*time)
    }

    fn user_from_row(row: &PgRow) -> Result<User, StoreError> {
        store::user(
            UserId::from_uuid(row.try_get("id").map_err(map_err)?),
            row.try_get("name").map_err(map_err)?,
            row.try_get("email").map_err(map_err)?,
            (
                row.try_get("created_at").map_err(map_err)?,
                row.try_get("updated_at").map_err(map_err)?,
            ),
            row.try_get("version").map_err(map_err)?,
        )
    }

    /// One statement tells all three outcomes: updated, stale (row exists), or missing.
    async fn update_user(conn: &mut PgConnection, user: &User) -> Result<Updated, StoreError> {
        let row = sqlx::query(
            "WITH upd AS (UPDATE users SET name = $1, email = $2, updated_at = $3, version = $4 \
             WHERE id = $5 AND version < $4 RETURNING 1) \
             SELECT (SELECT count(*) FROM upd) AS updated, EXISTS (SELECT 1 FROM users WHERE id = $5) AS present",
        )
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(user.updated_at)
        .bind(user.version)
        .bind(user.id.as_uuid())
        .fetch_one(conn)
        .await
        .map_err(map_err)?;
        let updated: i64 = row.try_get("updated").map_err(map_err)?;
        let present: bool = row.try_get("present").map_err(map_err)?;
        Ok(match (updated, present) {
            (1, _) => Updated::Applied,
            (_, true) => Updated::Stale,
            _ => Updated::Missing,
        })
    }

    /// `xmax = 0` only on a freshly inserted row; no row back when the stored version was not
    /// older (a replayed journal entry), which then announces nothing.
    async fn upsert_user(conn: &mut PgConnection, user: &User) -> Result<Option<bool>, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email, \
             updated_at = excluded.updated_at, version = excluded.version \
             WHERE users.version < excluded.version RETURNING (xmax = 0)",
        )
        .bind(user.id.as_uuid())
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(user.created_at)
        .bind(user.updated_at)
        .bind(user.version)
        .fetch_optional(conn)
        .await
        .map_err(map_err)
    }

    async fn list_users(
        pool: &PgPool,
        after: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, email, created_at, updated_at, version FROM users \
             WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
        )
        .bind(after.map(|id| *id.as_uuid()))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(Self::user_from_row).collect()
    }
}
