//! The SQLite backend: keel's embedded default database, a single file in WAL mode.
//!
//! [`SqliteStore`] implements [`keel_domain::UserRepo`] and [`keel_domain::EventStore`] (every user
//! write enqueues its event in the outbox in the same transaction); [`SqliteStore::migrate`] applies the
//! migrations under `migrations/`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use keel_domain::{Page, PageRequest, StoreError, User, UserEmail, UserId, UserName, UserRepo};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

mod events;

pub use keel_store_sql::PoolSettings;

/// This backend's migrations, oldest first (see `migrations/`).
const MIGRATIONS: &[keel_store_sql::EmbeddedMigration] = &[
    (1, "users", include_str!("../migrations/0001_users.sql")),
    (2, "events", include_str!("../migrations/0002_events.sql")),
];

/// Users on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or `sqlite::memory:`).
    ///
    /// WAL lets readers run beside the one writer; `synchronous = NORMAL` is WAL's recommended
    /// setting: a committed transaction survives a process crash (kill -9), and only an OS crash or
    /// power loss can roll back the last commits.
    pub async fn connect(url: &str, pool: &PoolSettings) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(keel_store_sql::internal)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(pool.max_connections.max(1))
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(Self { pool })
    }

    /// Applies every pending migration; safe to run concurrently and repeatedly.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        keel_store_sql::migrator(MIGRATIONS)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Internal(Box::new(e)))
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    // SQLite names the columns in the message: "UNIQUE constraint failed: users.email".
    keel_store_sql::classify(e, |db| db.message().contains("email"))
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn row_to_user(row: &sqlx::sqlite::SqliteRow) -> Result<User, StoreError> {
    let id: String = row.try_get("id").map_err(map_err)?;
    let name: String = row.try_get("name").map_err(map_err)?;
    let email: String = row.try_get("email").map_err(map_err)?;
    let created_at: String = row.try_get("created_at").map_err(map_err)?;
    let updated_at: String = row.try_get("updated_at").map_err(map_err)?;
    let parse_ts = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| keel_store_sql::corrupt("timestamp"))
    };
    Ok(User {
        id: id.parse().map_err(|_| keel_store_sql::corrupt("id"))?,
        name: UserName::parse(&name).map_err(|_| keel_store_sql::corrupt("name"))?,
        email: UserEmail::parse(&email).map_err(|_| keel_store_sql::corrupt("email"))?,
        created_at: parse_ts(&created_at)?,
        updated_at: parse_ts(&updated_at)?,
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

/// Deletes a user and, if it existed, enqueues its `user.deleted` event, in `tx`.
async fn delete(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
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

/// Inserts or replaces over an older version; whether a row changed.
async fn upsert<'c, E: sqlx::SqliteExecutor<'c>>(
    exec: E,
    user: &User,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
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
    .execute(exec)
    .await
    .map(|res| res.rows_affected() == 1)
}

#[async_trait]
impl UserRepo for SqliteStore {
    async fn insert(&self, user: &User) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id.to_string())
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(ts(&user.created_at))
        .bind(ts(&user.updated_at))
        .bind(user.version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
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
        let res = sqlx::query(
            "UPDATE users SET name = ?, email = ?, updated_at = ?, version = ? WHERE id = ? AND version < ?",
        )
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(ts(&user.updated_at))
        .bind(user.version)
        .bind(user.id.to_string())
        .bind(user.version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if res.rows_affected() == 1 {
            let (topic, event) = keel_domain::events::user_written(user, false);
            events::enqueue(&mut *tx, topic, &event).await?;
            tx.commit().await.map_err(map_err)?;
            return Ok(true);
        }
        let exists = sqlx::query("SELECT 1 FROM users WHERE id = ?")
            .bind(user.id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists.is_some() {
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
        // Fetch one more than asked to learn whether another page follows.
        let limit = i64::from(page.limit) + 1;
        let rows = match page.after {
            Some(after) => {
                sqlx::query(select!(" WHERE id > ? ORDER BY id LIMIT ?"))
                    .bind(after.to_string())
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query(select!(" ORDER BY id LIMIT ?"))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
        }
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
            // Only a row that changed announces itself: replaying a flushed journal entry
            // (idempotent) publishes no second event.
            let existed = sqlx::query("SELECT 1 FROM users WHERE id = ?")
                .bind(user.id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?
                .is_some();
            if upsert(&mut *tx, user).await.map_err(map_err)? {
                let (topic, event) = keel_domain::events::user_written(user, !existed);
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
