//! The PostgreSQL backend.
//!
//! [`PostgresStore`] implements [`keel_domain::UserRepo`] and [`keel_domain::EventStore`] (every
//! user write enqueues its event in the outbox in the same transaction); [`PostgresStore::migrate`] applies the
//! migrations under `migrations/` (sqlx takes an advisory lock, so concurrent instances are safe).

use std::str::FromStr;

use async_trait::async_trait;
use keel_domain::{Page, PageRequest, StoreError, User, UserEmail, UserId, UserName, UserRepo};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

mod events;

pub use keel_store_sql::PoolSettings;

/// This backend's migrations, oldest first (see `migrations/`).
const MIGRATIONS: &[keel_store_sql::EmbeddedMigration] = &[
    (1, "users", include_str!("../migrations/0001_users.sql")),
    (2, "events", include_str!("../migrations/0002_events.sql")),
];

/// Users on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects lazily: the pool opens connections on first use, so `keel` starts even while the
    /// database is still coming up, and `/readyz` reports it until it is reachable.
    pub fn connect_lazy(url: &str, pool: &PoolSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(keel_store_sql::internal)?
            .application_name("keel");
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections.max(1))
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        keel_store_sql::migrator(MIGRATIONS)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Internal(Box::new(e)))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    // PostgreSQL reports the constraint by name.
    keel_store_sql::classify(e, |db| db.constraint() == Some("users_email_key"))
}

fn row_to_user(row: &PgRow) -> Result<User, StoreError> {
    let name: String = row.try_get("name").map_err(map_err)?;
    let email: String = row.try_get("email").map_err(map_err)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id").map_err(map_err)?),
        name: UserName::parse(&name).map_err(|_| keel_store_sql::corrupt("name"))?,
        email: UserEmail::parse(&email).map_err(|_| keel_store_sql::corrupt("email"))?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        updated_at: row.try_get("updated_at").map_err(map_err)?,
        version: row.try_get("version").map_err(map_err)?,
    })
}

/// Deletes a user and, if it existed, enqueues its `user.deleted` event, in `tx`.
async fn delete(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: UserId,
) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    if res.rows_affected() == 0 {
        return Ok(false);
    }
    let (topic, event) = keel_domain::events::user_deleted(id);
    events::enqueue(&mut **tx, topic, &event).await?;
    Ok(true)
}

/// A `SELECT` of every users column followed by `$tail`, as one static string.
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, email, created_at, updated_at, version FROM users",
            $tail
        )
    };
}

#[async_trait]
impl UserRepo for PostgresStore {
    async fn insert(&self, user: &User) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user.id.as_uuid())
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(user.created_at)
        .bind(user.updated_at)
        .bind(user.version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let (topic, event) = keel_domain::events::user_written(user, true);
        events::enqueue(&mut *tx, topic, &event).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(select!(" WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(row_to_user).transpose()
    }

    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(select!(" WHERE email = $1"))
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(row_to_user).transpose()
    }

    async fn update(&self, user: &User) -> Result<bool, StoreError> {
        // One statement tells all three outcomes: updated, stale (row exists), or missing.
        let mut tx = self.pool.begin().await.map_err(map_err)?;
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
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let updated: i64 = row.try_get("updated").map_err(map_err)?;
        let present: bool = row.try_get("present").map_err(map_err)?;
        match (updated, present) {
            (1, _) => {
                let (topic, event) = keel_domain::events::user_written(user, false);
                events::enqueue(&mut *tx, topic, &event).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(true)
            }
            (_, true) => Err(StoreError::StaleVersion),
            _ => Ok(false),
        }
    }

    async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let deleted = delete(&mut tx, id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(deleted)
    }

    async fn list(&self, page: PageRequest) -> Result<Page<User>, StoreError> {
        let limit = i64::from(page.limit) + 1;
        let rows = sqlx::query(select!(
            " WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
        ))
        .bind(page.after.map(|id| *id.as_uuid()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let items = rows
            .iter()
            .map(row_to_user)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, page.limit))
    }

    async fn apply_batch(&self, upserts: &[User], deletes: &[UserId]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for id in deletes {
            delete(&mut tx, *id).await?;
        }
        for user in upserts {
            // `xmax = 0` only on a freshly inserted row; no row back when the stored version was
            // not older (a replayed journal entry), which then announces nothing.
            let changed: Option<bool> = sqlx::query_scalar(
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
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if let Some(created) = changed {
                let (topic, event) = keel_domain::events::user_written(user, created);
                events::enqueue(&mut *tx, topic, &event).await?;
            }
        }
        tx.commit().await.map_err(map_err)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)
            .map(drop)
    }
}
