//! The MariaDB / MySQL backend.
//!
//! [`MariaDbStore`] implements [`keel_domain::UserRepo`] and [`keel_domain::EventStore`] (every
//! user write enqueues its event in the outbox in the same transaction); [`MariaDbStore::migrate`] applies the
//! migrations under `migrations/` (sqlx takes a named lock, so concurrent instances are safe).

use std::str::FromStr;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use keel_domain::{Page, PageRequest, StoreError, User, UserEmail, UserId, UserName, UserRepo};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{MySqlPool, Row};

mod events;

pub use keel_store_sql::PoolSettings;

/// This backend's migrations, oldest first (see `migrations/`).
const MIGRATIONS: &[keel_store_sql::EmbeddedMigration] = &[
    (1, "users", include_str!("../migrations/0001_users.sql")),
    (2, "events", include_str!("../migrations/0002_events.sql")),
];

/// Users on MariaDB or MySQL.
#[derive(Debug, Clone)]
pub struct MariaDbStore {
    pool: MySqlPool,
}

impl MariaDbStore {
    /// Connects lazily: the pool opens connections on first use, so `keel` starts even while the
    /// database is still coming up, and `/readyz` reports it until it is reachable.
    pub fn connect_lazy(url: &str, pool: &PoolSettings) -> Result<Self, StoreError> {
        let options = MySqlConnectOptions::from_str(url).map_err(keel_store_sql::internal)?;
        let pool = MySqlPoolOptions::new()
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

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    // MariaDB names the key only in the message: "Duplicate entry .. for key 'users_email_key'".
    keel_store_sql::classify(e, |db| db.message().contains("users_email_key"))
}

fn row_to_user(row: &MySqlRow) -> Result<User, StoreError> {
    let id: String = row.try_get("id").map_err(map_err)?;
    let name: String = row.try_get("name").map_err(map_err)?;
    let email: String = row.try_get("email").map_err(map_err)?;
    let created_at: NaiveDateTime = row.try_get("created_at").map_err(map_err)?;
    let updated_at: NaiveDateTime = row.try_get("updated_at").map_err(map_err)?;
    Ok(User {
        id: id.parse().map_err(|_| keel_store_sql::corrupt("id"))?,
        name: UserName::parse(&name).map_err(|_| keel_store_sql::corrupt("name"))?,
        email: UserEmail::parse(&email).map_err(|_| keel_store_sql::corrupt("email"))?,
        created_at: created_at.and_utc(),
        updated_at: updated_at.and_utc(),
        version: row.try_get("version").map_err(map_err)?,
    })
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

/// Inserts `user`, or replaces the stored row if it is older. MariaDB's `ON DUPLICATE KEY UPDATE`
/// would fire on the email key too and overwrite *another* user's row, so this is an update
/// guarded by version, then an insert only when no row has this id.
/// Returns whether a row changed, and if so whether it was created.
async fn upsert(
    conn: &mut sqlx::MySqlConnection,
    user: &User,
) -> Result<Option<bool>, sqlx::Error> {
    if update_row(&mut *conn, user).await? == 1 {
        return Ok(Some(false));
    }
    let present = sqlx::query("SELECT 1 FROM users WHERE id = ?")
        .bind(user.id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if present.is_some() {
        return Ok(None);
    }
    insert_row(&mut *conn, user).await?;
    Ok(Some(true))
}

/// Deletes a user and, if it existed, enqueues its `user.deleted` event, in `tx`.
async fn delete(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    id: UserId,
) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM users WHERE id = ?")
        .bind(id.to_string())
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

async fn insert_row<'c, E: sqlx::MySqlExecutor<'c>>(
    exec: E,
    user: &User,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(user.id.to_string())
    .bind(user.name.as_str())
    .bind(user.email.as_str())
    .bind(user.created_at.naive_utc())
    .bind(user.updated_at.naive_utc())
    .bind(user.version)
    .execute(exec)
    .await
    .map(drop)
}

/// Rows changed by a version-guarded update: 1 if applied, 0 if stale or missing.
async fn update_row<'c, E: sqlx::MySqlExecutor<'c>>(
    exec: E,
    user: &User,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "UPDATE users SET name = ?, email = ?, updated_at = ?, version = ? WHERE id = ? AND version < ?",
    )
    .bind(user.name.as_str())
    .bind(user.email.as_str())
    .bind(user.updated_at.naive_utc())
    .bind(user.version)
    .bind(user.id.to_string())
    .bind(user.version)
    .execute(exec)
    .await
    .map(|res| res.rows_affected())
}

#[async_trait]
impl UserRepo for MariaDbStore {
    async fn insert(&self, user: &User) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        insert_row(&mut *tx, user).await.map_err(map_err)?;
        let (topic, event) = keel_domain::events::user_written(user, true);
        events::enqueue(&mut *tx, topic, &event).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(select!(" WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(row_to_user).transpose()
    }

    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(select!(" WHERE email = ?"))
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(row_to_user).transpose()
    }

    async fn update(&self, user: &User) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        if update_row(&mut *tx, user).await.map_err(map_err)? == 1 {
            let (topic, event) = keel_domain::events::user_written(user, false);
            events::enqueue(&mut *tx, topic, &event).await?;
            tx.commit().await.map_err(map_err)?;
            return Ok(true);
        }
        let present = sqlx::query("SELECT 1 FROM users WHERE id = ?")
            .bind(user.id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if present.is_some() {
            Err(StoreError::StaleVersion)
        } else {
            Ok(false)
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
        // The nil UUID sorts before every generated id, so it stands for "from the start".
        let after = page
            .after
            .map(|id| id.to_string())
            .unwrap_or_else(|| uuid::Uuid::nil().to_string());
        let rows = sqlx::query(select!(" WHERE id > ? ORDER BY id LIMIT ?"))
            .bind(after)
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
            // A replayed journal entry changes nothing and so announces nothing.
            if let Some(created) = upsert(&mut tx, user).await.map_err(map_err)? {
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
